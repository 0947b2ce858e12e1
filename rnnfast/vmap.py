"""Batching rules (``torch.func.vmap``) of rnnfast's forward operators.

The rows of a batch are independent, so a ``vmap`` over the input and the initial states
of a padded sequence folds the vmapped dimension into the batch: one operator call on
``(T, V*B, I)`` instead of ``V`` calls on ``(T, B, I)``. Anything else (vmapped weights, as
in model ensembling, or a packed sequence) runs one call per sample, as torch's generic
fallback would, without its performance warning. Autograd records the operator calls
themselves, so backward through a vmapped layer runs the backward operators on the folded
batch too.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from . import _registry

__all__ = ["register"]

#: Per operator: how many states follow the input (hx, cx), where batch_sizes is.
_LAYOUT = {"lstm": (2, 8), "gru": (1, 6), "rnn": (1, 6)}


def _front(t: Tensor, dim: Optional[int], size: int) -> Tensor:
    """``t`` with the vmapped dimension first (expanded when ``t`` is not vmapped)."""
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def _per_sample(op: Any, size: int, in_dims: Sequence[Optional[int]], args: tuple) -> tuple:
    results = [op(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)])
               for i in range(size)]
    outputs = tuple(torch.stack(r) for r in zip(*results))
    return outputs, (0,) * len(outputs)


def _rule(op: Any, kind: str) -> Callable:
    num_states, batch_sizes_at = _LAYOUT[kind]

    def batching_rule(info: Any, in_dims: tuple, *args: Any) -> tuple:
        size = info.batch_size
        if args[batch_sizes_at] is not None or any(
                d is not None for d in in_dims[1 + num_states:]):
            return _per_sample(op, size, in_dims, args)
        x = _front(args[0], in_dims[0], size)  # (V, T, B, I)
        steps, batch = x.shape[1], x.shape[2]
        x = x.movedim(0, 1).reshape(steps, size * batch, x.shape[-1])
        states = [_front(s, d, size).reshape(size * batch, s.shape[-1])
                  for s, d in zip(args[1:1 + num_states], in_dims[1:1 + num_states])]
        result = op(x, *states, *args[1 + num_states:])
        outputs = [result[0].view(steps, size, batch, -1)]
        dims: list = [1]
        for final in result[1:1 + num_states]:
            outputs.append(final.view(size, batch, -1))
            dims.append(0)
        for saved in result[1 + num_states:]:  # what forward saves for backward: rows t*V*B
            if saved.numel() == 0:
                outputs.append(saved)
                dims.append(None)
            else:
                outputs.append(saved.view(steps, size, batch, -1).movedim(1, 0)
                               .reshape(size, steps * batch, -1))
                dims.append(0)
        return tuple(outputs), tuple(dims)

    return batching_rule


def register(ns: str) -> None:
    """Register the batching rules of namespace ``ns``'s forward operators."""
    lib = _registry.library(ns)
    for kind, name, op in _registry.forward_ops(ns):
        torch.library.register_vmap(f"{ns}::{name}", _rule(op, kind), lib=lib)

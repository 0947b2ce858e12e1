"""Initialisation helpers for recurrent layers and cells.

They work on rnnfast's layers and cells and on torch.nn's (``LSTM``, ``GRU``, ``RNN``,
``LSTMCell``, ``GRUCell``, ``RNNCell``), change the parameters in place without recording
autograd history, and return the module so calls can be chained::

    m = rnnfast.LSTM(64, 128, num_layers=2)
    rnnfast.init.forget_bias_(rnnfast.init.orthogonal_recurrent_(m), 1.0)
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["orthogonal_recurrent_", "forget_bias_"]


def _kind(module: nn.Module, caller: str) -> Tuple[str, int]:
    """``(mode, gates)`` of a recurrent layer or cell: mode ``"LSTM"``, ``"GRU"`` or
    ``"RNN"``; TypeError for anything else."""
    if isinstance(module, nn.RNNBase):
        mode = module.mode
    elif isinstance(module, nn.RNNCellBase):
        chunks = module.weight_ih.shape[0] // module.hidden_size
        mode = {4: "LSTM", 3: "GRU", 1: "RNN"}.get(chunks, "")
    else:
        mode = ""
    if mode.startswith("RNN"):
        mode = "RNN"
    if mode not in ("LSTM", "GRU", "RNN"):
        raise TypeError(f"{caller}(): expected an LSTM, GRU or RNN layer or cell (rnnfast or "
                        f"torch.nn), got {type(module).__name__}")
    return mode, {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]


def _suffixes(module: nn.Module) -> List[str]:
    """Parameter-name suffixes of every layer and direction (``"_l0"``,
    ``"_l0_reverse"``...), or ``[""]`` for a cell."""
    if isinstance(module, nn.RNNCellBase):
        return [""]
    directions = ["", "_reverse"] if module.bidirectional else [""]
    return [f"_l{k}{d}" for k in range(module.num_layers) for d in directions]


def _weights(module: nn.Module, name: str) -> Iterator[Tuple[str, Optional[Tensor]]]:
    for sfx in _suffixes(module):
        yield name + sfx, getattr(module, name + sfx, None)


def orthogonal_recurrent_(module: nn.Module, gain: float = 1.0,
                          generator: Optional[torch.Generator] = None) -> nn.Module:
    """Initialise every recurrent weight with orthogonal blocks, one per gate.

    Each ``weight_hh_l{k}{suffix}`` (``weight_hh`` for a cell) of shape ``(G*H, P)`` is
    ``G`` blocks of ``H`` rows (gates i, f, g, o for the LSTM, r, z, n for the GRU, one
    block for the RNN); each block is filled by :func:`torch.nn.init.orthogonal_` (with
    ``gain``), so with ``P == H`` each gate's ``H x H`` matrix is orthogonal, and with a
    projection (``P < H``) its columns are orthonormal. Other parameters are untouched.

    Args:
        module: an LSTM, GRU or RNN layer or cell, rnnfast's or torch.nn's.
        gain: scale of each block (as in :func:`torch.nn.init.orthogonal_`).
        generator: random generator to draw from (default: torch's default generator).

    Returns:
        ``module``.

    Raises:
        TypeError: ``module`` is not an LSTM, GRU or RNN layer or cell.
    """
    _, gates = _kind(module, "orthogonal_recurrent_")
    hidden = module.hidden_size
    kwargs = {} if generator is None else {"generator": generator}
    with torch.no_grad():
        for _name, weight in _weights(module, "weight_hh"):
            blocks = weight.split(hidden, dim=0)
            assert len(blocks) == gates, (weight.shape, gates)
            for block in blocks:  # views of weight: filled in place
                nn.init.orthogonal_(block, gain=gain, **kwargs)
    return module


def forget_bias_(module: nn.Module, value: float = 1.0) -> nn.Module:
    """Set the LSTM's forget-gate bias to ``value``.

    The forget gate's pre-activation gets ``b_ih[H:2H] + b_hh[H:2H]``; this sets
    ``bias_ih[H:2H] = value`` and ``bias_hh[H:2H] = 0`` in every layer and direction
    (``bias_ih_l{k}{suffix}``/``bias_hh_l{k}{suffix}``, or a cell's ``bias_ih``/
    ``bias_hh``), so that their sum is exactly ``value``. The other gates' biases are
    untouched.

    Args:
        module: an LSTM layer or cell, rnnfast's or torch.nn's, with biases.
        value: the forget-gate bias (1.0 is the usual choice: remember by default).

    Returns:
        ``module``.

    Raises:
        TypeError: ``module`` is not an LSTM layer or cell (GRU and RNN have no forget
            gate).
        ValueError: the module was built with ``bias=False``.
    """
    mode, _ = _kind(module, "forget_bias_")
    if mode != "LSTM":
        raise TypeError(f"forget_bias_(): only an LSTM has a forget gate, got "
                        f"{type(module).__name__} ({mode})")
    if not module.bias:
        raise ValueError(f"forget_bias_(): {type(module).__name__} has no biases (built with "
                         "bias=False)")
    hidden = module.hidden_size
    with torch.no_grad():
        for (_, b_ih), (_, b_hh) in zip(_weights(module, "bias_ih"), _weights(module, "bias_hh")):
            b_ih[hidden:2 * hidden].fill_(value)
            b_hh[hidden:2 * hidden].zero_()
    return module

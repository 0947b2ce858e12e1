"""Registrations of Python kernels and rules for rnnfast's operators (autocast kernels,
batching rules, autograd): one helper for the ``torch.library.Library`` handles and the
forward operators every registration module walks."""
from __future__ import annotations

from typing import Any, Iterator

import torch

__all__ = ["library", "forward_ops"]

# A registration lives as long as its Library object: these are kept for the process.
_LIBRARIES: list = []

#: The operator kinds, in the order of ``csrc/core/schemas.h``.
KINDS = ("lstm", "gru", "rnn")


def library(ns: str) -> torch.library.Library:
    """A new ``IMPL`` library of namespace ``ns``, kept alive for the process."""
    lib = torch.library.Library(ns, "IMPL")
    _LIBRARIES.append(lib)
    return lib


def forward_ops(ns: str) -> Iterator[tuple[str, str, Any]]:
    """``(kind, name, overload)`` of each forward operator of namespace ``ns``, e.g.
    ``("lstm", "lstm_forward", torch.ops.rnnfast.lstm_forward.default)``."""
    namespace = getattr(torch.ops, ns)
    for kind in KINDS:
        name = f"{kind}_forward"
        yield kind, name, getattr(namespace, name).default

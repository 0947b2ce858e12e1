"""The choice of algorithm of the CUDA layers' forward and backward passes."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from . import _C

__all__ = ["cuda_algorithm"]

_ALGORITHMS = {"auto": 0, "standard": 1, "persistent": 2}


def _apply(value: int) -> None:
    _C._set_cuda_algorithm(value)
    testing = sys.modules.get("rnnfast.testing")
    emulator = getattr(testing, "_emulator", None) if testing is not None else None
    if emulator is not None:
        emulator._set_cuda_algorithm(value)


def _current() -> int:
    return int(_C._cuda_algorithm())


@contextlib.contextmanager
def cuda_algorithm(name: str) -> Iterator[None]:
    """Choose the algorithm of the CUDA layers' forward and backward passes within the block.

    * ``"auto"`` (the default): the persistent kernels where they fit the device, the batch
      is at most 32 rows and a block's share of a step is small enough to gain from them
      (a bound from a model of H100-class GPUs, docs/design.md section 4.1), else the
      standard algorithm; forward and backward are decided apart;
    * ``"standard"``: per time step one recurrent GEMM (cuBLAS) and one fused pointwise
      kernel, the structure of cuDNN's standard algorithm;
    * ``"persistent"``: one cooperative kernel launch per layer and direction runs every
      time step, each block keeping its slice of the recurrent weights in shared memory
      for the whole sequence (float16/bfloat16 on tensor cores). Where it cannot run (a
      slice larger than a block's shared memory, or a grid that cannot be co-resident) the
      pass raises a ``RuntimeError`` that names the limit and the numbers.

    Both give the same results up to float rounding and save the same buffers for
    backward. The choice is process-wide (not thread-local), applies to every rnnfast layer
    and cell on CUDA tensors and to the emulated CUDA operators
    (:func:`rnnfast.testing.emulate_cuda`), and has no effect on the CPU kernels::

        with rnnfast.cuda_algorithm("standard"):
            out, (h, c) = lstm(x)
    """
    if name not in _ALGORITHMS:
        raise ValueError(f"rnnfast.cuda_algorithm: unknown algorithm {name!r}; expected one "
                         f"of {', '.join(repr(k) for k in _ALGORITHMS)}")
    previous = _current()
    _apply(_ALGORITHMS[name])
    try:
        yield
    finally:
        _apply(previous)

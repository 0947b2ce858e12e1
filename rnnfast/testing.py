"""Testing helpers: run the CUDA kernels on the CPU, in the SIMT emulator.

rnnfast's CUDA kernels (``csrc/kernels``) and their host orchestration
(``csrc/cuda/rnn_host.h``) are also compiled with the host compiler against the
SIMT emulator (``csrc/simt``), which runs every CUDA thread as a fiber with CUDA's
semantics. Inside :func:`emulate_cuda`, the rnnfast operators on CPU tensors run
that code instead of the CPU kernels, so the CUDA path can be checked against
torch.nn on a machine without a GPU::

    with rnnfast.testing.emulate_cuda():
        out, (h, c) = rnnfast.LSTM(7, 33)(x)   # CUDA kernels, emulated

Emulation is slow (use small sizes) and process-wide (not thread-local).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from . import _C, ops

__all__ = ["emulate_cuda", "simt_has_half"]


@contextlib.contextmanager
def emulate_cuda(enabled: bool = True) -> Iterator[None]:
    """Run rnnfast's CUDA kernels in the SIMT emulator for CPU tensors.

    Within the block, float32/float64/float16/bfloat16 CPU inputs of every rnnfast
    layer and cell go through the CUDA operators' code (emulated); float16 and
    bfloat16 need an emulator built with CUDA's headers (:func:`simt_has_half`).
    """
    previous = ops._simt_emulation
    ops._simt_emulation = enabled
    _C._set_simt_emulation(enabled)
    try:
        yield
    finally:
        ops._simt_emulation = previous
        _C._set_simt_emulation(previous)


def simt_has_half() -> bool:
    """Whether the emulator was built with CUDA's ``__half``/``__nv_bfloat16``."""
    return bool(_C.build_info()["simt_half"])

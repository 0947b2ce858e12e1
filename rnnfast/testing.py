"""Testing helpers: run the CUDA kernels on the CPU, in the SIMT emulator.

rnnfast's CUDA kernels (``csrc/kernels``) and their host orchestration
(``csrc/cuda``) are also compiled with the host compiler against the SIMT emulator
(``csrc/simt``), which runs every CUDA thread as a fiber with CUDA's semantics. That
build is a separate, test-only extension, ``rnnfast._simt_emu``: it registers the
emulated operators as ``torch.ops.rnnfast_emu.*`` (same schemas as
``torch.ops.rnnfast.*``), and the production extension ``rnnfast._C`` contains no
emulator at all. Inside :func:`emulate_cuda` the rnnfast layers and cells call the
emulated operators for CPU tensors, so the CUDA path can be checked against torch.nn
on a machine without a GPU::

    with rnnfast.testing.emulate_cuda():
        out, (h, c) = rnnfast.LSTM(7, 33)(x)   # CUDA kernels, emulated

Emulation is slow (use small sizes) and process-wide (not thread-local).
"""
from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Iterator, Optional

from . import ops

__all__ = ["emulate_cuda", "emulator", "simt_has_half"]

_emulator: Optional[ModuleType] = None


def emulator() -> ModuleType:
    """The test-only extension ``rnnfast._simt_emu``, loaded (and its operators' fake
    kernels and autograd registered) on first use."""
    global _emulator
    if _emulator is None:
        try:
            module = importlib.import_module("rnnfast._simt_emu")
        except ImportError as e:
            raise RuntimeError(
                "rnnfast was built without its test-only SIMT emulator (rnnfast._simt_emu); "
                "rebuild without RNNFAST_NO_EMULATOR=1: pip install --no-build-isolation -e ."
            ) from e
        ops._register("rnnfast_emu")
        ops._register_options("rnnfast_emu")
        _emulator = module
    return _emulator


@contextlib.contextmanager
def emulate_cuda(enabled: bool = True) -> Iterator[None]:
    """Run rnnfast's CUDA kernels in the SIMT emulator for CPU tensors.

    Within the block, float32/float64/float16/bfloat16 CPU inputs of every rnnfast
    layer and cell, with or without the options beyond torch.nn (layer normalisation,
    zoneout, dropouts), go through the CUDA operators' code (emulated,
    ``torch.ops.rnnfast_emu.*``); float16 and bfloat16 need an emulator built with
    CUDA's headers (:func:`simt_has_half`), except for the option layers, which run the
    half types on float32 copies.
    """
    if enabled:
        emulator()
    previous = ops._namespace
    ops._namespace = "rnnfast_emu" if enabled else "rnnfast"
    try:
        yield
    finally:
        ops._namespace = previous


def simt_has_half() -> bool:
    """Whether the emulator was built with CUDA's ``__half``/``__nv_bfloat16``."""
    return bool(emulator().has_half())

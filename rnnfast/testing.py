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

The emulator also counts what the kernels do (``emulate_cuda(counters=True)``: per
launch its shape, shared memory, global-memory bytes, grid syncs and barriers; the
GEMMs beside them), and checks launches against a modelled device
(:func:`emulated_device`, default H100-like), which is also what the CUDA layers'
choice of algorithm (:func:`rnnfast.cuda_algorithm`) sees in emulation.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional

from . import _cuda, ops

__all__ = ["emulate_cuda", "emulator", "simt_has_half", "EmulatorCounts", "emulated_device"]

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
        module._set_cuda_algorithm(_cuda._current())
        _emulator = module
    return _emulator


@dataclass
class EmulatorCounts:
    """What the emulated CUDA operators did inside ``emulate_cuda(counters=True)``, filled
    in when the block ends.

    ``launches``: one dict per kernel launch of rnnfast's own kernels, in order, with
    ``name``, ``grid`` and ``block`` (3-tuples), ``cooperative``, ``shared_bytes`` (dynamic
    shared memory per block), ``global_bytes_read`` and ``global_bytes_written`` (what
    its threads read and wrote through ``simt::ld``/``ldg``/``st``; ``None`` for kernels
    whose accesses are not instrumented, the option layers' row kernels), ``grid_syncs``
    (completed grid-wide barriers), ``block_barriers`` (completed ``__syncthreads``,
    summed over blocks) and ``mma_syncs`` (tensor-core tile multiplies, ``wmma::mma_sync``,
    one per warp). ``gemms``: one dict per GEMM the host code ran beside them
    (through ATen; cuBLAS on a GPU), with ``op``, ``M``, ``N``, ``K``.
    """

    launches: List[Dict[str, Any]] = field(default_factory=list)
    gemms: List[Dict[str, Any]] = field(default_factory=list)

    def named(self, name: str) -> List[Dict[str, Any]]:
        """The launches of the kernel ``name``."""
        return [launch for launch in self.launches if launch["name"] == name]


@contextlib.contextmanager
def emulate_cuda(enabled: bool = True, counters: bool = False
                 ) -> Iterator[Optional[EmulatorCounts]]:
    """Run rnnfast's CUDA kernels in the SIMT emulator for CPU tensors.

    Within the block, float32/float64/float16/bfloat16 CPU inputs of every rnnfast
    layer and cell, with or without the options beyond torch.nn (layer normalisation,
    zoneout, dropouts), go through the CUDA operators' code (emulated,
    ``torch.ops.rnnfast_emu.*``); float16 and bfloat16 need an emulator built with
    CUDA's headers (:func:`simt_has_half`), except for the option layers, which run the
    half types on float32 copies.

    With ``counters=True`` it yields an :class:`EmulatorCounts` that holds, once the
    block ends, every launch and GEMM of the emulated operators within it (anything
    recorded before the block is discarded); otherwise it yields ``None``.
    """
    if enabled:
        emulator()
    counts = EmulatorCounts() if counters else None
    if counts is not None:
        if not enabled:
            raise ValueError("emulate_cuda(counters=True) needs enabled=True")
        emulator().take_counts()
        emulator().set_counting(True)
    previous = ops._namespace
    ops._namespace = "rnnfast_emu" if enabled else "rnnfast"
    try:
        yield counts
    finally:
        ops._namespace = previous
        if counts is not None:
            emulator().set_counting(False)
            launches, gemms = emulator().take_counts()
            counts.launches.extend(launches)
            counts.gemms.extend(gemms)


@contextlib.contextmanager
def emulated_device(**fields: int) -> Iterator[Dict[str, int]]:
    """Change the emulator's modelled device within the block (restored after it), and
    yield the model in force.

    Fields (default H100-like): ``sm_count`` (132), ``max_threads_per_sm`` (2048),
    ``max_blocks_per_sm`` (32), ``regs_per_sm`` (65536), ``smem_per_sm`` (228 KiB),
    ``smem_per_block_optin`` (227 KiB, the most dynamic shared memory one block may have).
    Launches are checked against it (shared memory per block, co-residency of cooperative
    grids), and the CUDA algorithm choice reads it as it would read the GPU's properties.
    """
    module = emulator()
    previous = dict(module.device_model())
    module.set_device_model(fields)
    try:
        yield dict(module.device_model())
    finally:
        module.set_device_model(previous)


def simt_has_half() -> bool:
    """Whether the emulator was built with CUDA's ``__half``/``__nv_bfloat16``."""
    return bool(emulator().has_half())

"""Side-by-side benchmark of rnnfast against torch.nn (see PERF.md for the method).

Run it as a module::

    python -m rnnfast.bench                         # every layer rnnfast provides, full grid
    python -m rnnfast.bench --layers lstm --modes train --shapes M,L
    python -m rnnfast.bench --quick                 # scaled-down grid, well under a minute
    python -m rnnfast.bench --json out.json --plot out.png
    python -m rnnfast.bench --device cuda --dtypes float32,float16,bfloat16
    python -m rnnfast.bench --memory                # CPU peak memory of a training step instead
    python -m rnnfast.bench --help

For every (layer, mode, shape, dtype) cell it builds a ``torch.nn`` layer and the rnnfast
layer with identical weights (``load_state_dict``), checks rnnfast's output, final states and
(in train mode) every gradient against torch.nn *before* timing anything, then times both
interleaved (torch, rnnfast, torch, rnnfast, ...) after a warm-up, and reports
``speedup = torch time / rnnfast time``.  A cell whose check fails is reported as FAILED and
not timed; the exit status is then 1.

Timing: on the CPU, ``time.perf_counter`` around each call and the *minimum* over the runs
(the median is recorded too); on CUDA, CUDA events with synchronisation, the *median*, and the
peak memory of one call (``torch.cuda.max_memory_allocated``).  ``infer`` is a forward under
``torch.no_grad()``; ``train`` is forward + ``out.sum().backward()`` with an input that
requires grad; gradients are reset (set to ``None``) before every run, outside the timed region,
identically for both implementations.

GF/s follows PERF.md: one layer's forward is ``2*T*B*G*H*(I+H)`` FLOPs (G = 4 LSTM, 3 GRU,
1 RNN), forward + backward counts three times that.  The table marks every cell of the PERF.md
grid against its CPU speedup target.

The layer list is data (:data:`LAYERS`): a layer is benchmarked as soon as ``rnnfast`` exports
a class of that name with ``torch.nn``'s interface; until then it is skipped with a message.
The helpers here (:func:`make_pair`, :func:`check_correctness`, :func:`make_runner`, ...) are
shared with the pytest-benchmark suite in ``bench/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "LayerSpec",
    "Shape",
    "LAYERS",
    "MODES",
    "GRID_SHAPES",
    "QUICK_SHAPES",
    "SMALL_BATCH_SHAPES",
    "TARGETS",
    "CellResult",
    "available_layers",
    "rnnfast_class",
    "resolve_layers",
    "resolve_shapes",
    "flops",
    "target_for",
    "make_pair",
    "check_correctness",
    "make_runner",
    "set_tf32",
    "time_interleaved",
    "measure_peak_memory",
    "MemoryResult",
    "measure_step_memory",
    "measure_memory",
    "format_memory_table",
    "run_cell",
    "machine_info",
    "format_table",
    "plot_results",
    "main",
]

# --------------------------------------------------------------------------------------------
# What is benchmarked: layers, modes, shapes, targets (all data; PERF.md is the source).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One recurrent layer type.

    ``name`` is the class name both in ``torch.nn`` and in ``rnnfast`` (``"LSTM"``); ``key``
    is its lower-case CLI name; ``gates`` is G in the FLOP formula; ``has_cell_state`` says
    whether the returned state is ``(h_n, c_n)`` rather than ``h_n``.
    """

    key: str
    name: str
    gates: int
    has_cell_state: bool = False

    def torch_class(self) -> type:
        """The ``torch.nn`` baseline class."""
        return getattr(nn, self.name)


#: Every layer rnnfast is meant to provide. Adding one here is all it takes to benchmark it.
LAYERS: Tuple[LayerSpec, ...] = (
    LayerSpec("lstm", "LSTM", gates=4, has_cell_state=True),
    LayerSpec("gru", "GRU", gates=3),
    LayerSpec("rnn", "RNN", gates=1),
)

#: Benchmark modes: ``infer`` = forward under no_grad, ``train`` = forward + backward.
MODES: Tuple[str, ...] = ("infer", "train")


@dataclass(frozen=True)
class Shape:
    """A problem size: T steps, B batch, H hidden (input size I == H), one layer, time-major.

    ``grid`` is the PERF.md grid name this shape is (or was scaled down from); ``quick`` marks
    the scaled-down smoke-test variants, to which no speedup target applies.
    """

    name: str
    T: int
    B: int
    H: int
    grid: Optional[str] = None
    quick: bool = False

    @property
    def I(self) -> int:  # noqa: E743 - the paper's letter
        """Input size; PERF.md fixes I == H."""
        return self.H

    @property
    def dims(self) -> str:
        """``T200 B16 H128``-style description."""
        return f"T{self.T} B{self.B} H{self.H}"


def _shape_table(rows: Iterable[Tuple[str, int, int, int]], quick: bool = False) -> Dict[str, Shape]:
    return {
        n: Shape(("q" + n) if quick else n, t, b, h, grid=n, quick=quick) for n, t, b, h in rows
    }


#: The PERF.md grid.
GRID_SHAPES: Dict[str, Shape] = _shape_table(
    [
        ("S", 200, 16, 128),
        ("M", 100, 64, 256),
        ("L", 100, 64, 512),
        ("XL", 50, 128, 1024),
        ("B1", 100, 1, 256),
        ("B4", 100, 4, 512),
    ]
)

#: Scaled-down variants of the grid for ``--quick`` (smoke tests, CI). Same names, prefixed q.
QUICK_SHAPES: Dict[str, Shape] = _shape_table(
    [
        ("S", 50, 8, 32),
        ("M", 25, 16, 64),
        ("L", 25, 16, 128),
        ("XL", 12, 32, 256),
        ("B1", 25, 1, 64),
        ("B4", 25, 4, 128),
    ],
    quick=True,
)

#: PERF.md's extra GPU grid: batch 1-8, H 64-1024 (T = 100). Named like ``T100B2H128``.
SMALL_BATCH_SHAPES: Dict[str, Shape] = {
    f"T100B{b}H{h}": Shape(f"T100B{b}H{h}", 100, b, h)
    for b in (1, 2, 4, 8)
    for h in (64, 128, 256, 512, 1024)
}

_GRID_ORDER: Tuple[str, ...] = ("S", "M", "L", "XL", "B1", "B4")

#: PERF.md CPU speedup targets: (layer name, mode) -> {grid shape name: minimum speedup}.
TARGETS: Dict[Tuple[str, str], Dict[str, float]] = {
    (layer, mode): dict(zip(_GRID_ORDER, values))
    for layer, mode, values in [
        ("LSTM", "train", (1.3, 1.3, 1.3, 1.3, 1.3, 1.3)),
        ("LSTM", "infer", (1.2, 1.2, 1.0, 1.0, 2.0, 2.0)),
        ("GRU", "train", (2.0, 1.3, 1.3, 1.3, 2.0, 2.0)),
        ("GRU", "infer", (2.0, 1.2, 1.2, 1.2, 2.0, 2.0)),
        ("RNN", "train", (2.0, 1.3, 1.3, 1.3, 2.0, 2.0)),
        ("RNN", "infer", (2.0, 1.2, 1.2, 1.2, 2.0, 2.0)),
    ]
}

#: PERF.md: at L and XL rnnfast should reach >= 70% of the measured float32 GEMM peak.
EFFICIENCY_TARGET: Tuple[Tuple[str, ...], float] = (("L", "XL"), 0.70)

#: Correctness tolerances per dtype: (atol, rtol). atol is scaled by max(1, max|reference|),
#: because gradients of ``out.sum()`` grow with T*B. float32 values are those of the brief.
TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-6),
    torch.float32: (1e-4, 1e-3),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}

_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------------
# Layer lookup.
# --------------------------------------------------------------------------------------------


def _import_rnnfast() -> Any:
    import rnnfast  # noqa: PLC0415 - imported lazily so this module's data is usable alone

    return rnnfast


def rnnfast_class(spec: LayerSpec) -> Optional[type]:
    """rnnfast's class for ``spec`` (e.g. ``rnnfast.LSTM``), or None if it does not exist yet."""
    return getattr(_import_rnnfast(), spec.name, None)


def available_layers() -> List[LayerSpec]:
    """The entries of :data:`LAYERS` that rnnfast currently provides."""
    return [s for s in LAYERS if rnnfast_class(s) is not None]


def get_layer(key: str) -> LayerSpec:
    """Look a layer up by CLI key (``lstm``) or class name (``LSTM``)."""
    for spec in LAYERS:
        if key.lower() in (spec.key, spec.name.lower()):
            return spec
    raise KeyError(f"unknown layer {key!r}; known: {', '.join(s.key for s in LAYERS)}")


def resolve_layers(keys: Optional[Sequence[str]]) -> List[LayerSpec]:
    """Turn CLI layer keys into specs (all of :data:`LAYERS` when ``keys`` is None)."""
    if not keys:
        return list(LAYERS)
    return [get_layer(k) for k in keys]


def resolve_shapes(names: Optional[Sequence[str]], quick: bool = False, device: str = "cpu") -> List[Shape]:
    """Turn CLI shape names into shapes.

    Accepts grid names (``S,M,L,XL,B1,B4``; with ``quick`` they mean the scaled-down
    variants), the aliases ``grid``, ``small-batch`` (PERF.md's GPU grid of batch 1-8 and
    H 64-1024) and ``all``, and explicit sizes written ``T100B8H256``. The default is the grid,
    plus ``small-batch`` on CUDA (not in quick mode).
    """
    grid = QUICK_SHAPES if quick else GRID_SHAPES
    if not names:
        names = ["grid"] + (["small-batch"] if device == "cuda" and not quick else [])
    out: List[Shape] = []
    for raw in names:
        n = raw.strip()
        if not n:
            continue
        key = n.upper()
        if n.lower() == "grid":
            out.extend(grid[g] for g in _GRID_ORDER)
        elif n.lower() in ("small-batch", "smallbatch"):
            out.extend(SMALL_BATCH_SHAPES.values())
        elif n.lower() == "all":
            out.extend(grid[g] for g in _GRID_ORDER)
            out.extend(SMALL_BATCH_SHAPES.values())
        elif key in grid:
            out.append(grid[key])
        elif key.startswith("Q") and key[1:] in QUICK_SHAPES:
            out.append(QUICK_SHAPES[key[1:]])
        else:
            m = re.fullmatch(r"T(\d+)B(\d+)H(\d+)", key)
            if not m:
                raise ValueError(
                    f"unknown shape {raw!r}: use {','.join(_GRID_ORDER)}, grid, small-batch, all "
                    "or T<steps>B<batch>H<hidden>"
                )
            t, b, h = (int(v) for v in m.groups())
            out.append(Shape(f"T{t}B{b}H{h}", t, b, h))
    # keep order, drop duplicates
    seen: set = set()
    return [s for s in out if not (s in seen or seen.add(s))]


def flops(spec: LayerSpec, shape: Shape, mode: str) -> float:
    """PERF.md FLOP count of one call: ``2*T*B*G*H*(I+H)``, times 3 for ``train``."""
    fwd = 2.0 * shape.T * shape.B * spec.gates * shape.H * (shape.I + shape.H)
    return fwd * (3.0 if mode == "train" else 1.0)


def target_for(spec: LayerSpec, mode: str, shape: Shape, device: str, dtype: torch.dtype) -> Optional[float]:
    """The PERF.md speedup target for a cell, or None where none applies.

    Targets exist for the CPU, float32, and the full-size grid shapes only.
    """
    if device != "cpu" or dtype != torch.float32 or shape.quick or shape.grid is None:
        return None
    return TARGETS.get((spec.name, mode), {}).get(shape.grid)


# --------------------------------------------------------------------------------------------
# Building, checking, running.
# --------------------------------------------------------------------------------------------


def make_pair(
    spec: LayerSpec,
    shape: Shape,
    mode: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """Build ``(torch.nn layer, rnnfast layer, input)`` with identical weights.

    The rnnfast layer is constructed with the same arguments and receives the torch layer's
    ``state_dict``. The input is ``randn(T, B, I)`` (time-major); in ``train`` mode it requires
    grad, as the output of an embedding or a lower layer would. Raises LookupError when
    rnnfast has no such layer yet.
    """
    fast_cls = rnnfast_class(spec)
    if fast_cls is None:
        raise LookupError(f"rnnfast has no {spec.name} yet")
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(input_size=shape.I, hidden_size=shape.H, num_layers=1, bias=True,
                  batch_first=False, bidirectional=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = spec.torch_class()(**kwargs)
    fast = fast_cls(**kwargs)
    fast.load_state_dict(ref.state_dict())
    ref = ref.to(device=device, dtype=dtype)
    fast = fast.to(device=device, dtype=dtype)
    x = torch.randn(shape.T, shape.B, shape.I, generator=gen).to(device=device, dtype=dtype)
    if mode == "train":
        x.requires_grad_(True)
    return ref, fast, x


def _named_outputs(spec: LayerSpec, res: Any) -> List[Tuple[str, torch.Tensor]]:
    """``(output, h_n)`` / ``(output, (h_n, c_n))`` -> named list of tensors."""
    out, state = res
    if spec.has_cell_state:
        h, c = state
        return [("output", out), ("h_n", h), ("c_n", c)]
    return [("output", out), ("h_n", state)]


def _assert_close(name: str, actual: Optional[torch.Tensor], expected: torch.Tensor, dtype: torch.dtype) -> None:
    """assert_close with the tolerance of ``dtype``; atol scaled by max(1, max|expected|)."""
    if actual is None:
        raise AssertionError(f"{name}: rnnfast gave None where torch.nn gave a tensor")
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    exp = expected.detach()
    scale = max(1.0, float(exp.abs().max())) if exp.numel() else 1.0
    torch.testing.assert_close(
        actual.detach(), exp, atol=atol * scale, rtol=rtol,
        msg=lambda m: f"{name} (atol {atol:g}*{scale:.3g}, rtol {rtol:g}): {m}",
    )


def check_correctness(spec: LayerSpec, ref: nn.Module, fast: nn.Module, x: torch.Tensor, mode: str) -> None:
    """Check rnnfast against torch.nn for the call that will be timed; raise AssertionError.

    ``infer``: output and final state(s) under ``torch.no_grad()``. ``train``: the same with
    grad enabled, then ``out.sum().backward()`` on both and every gradient (input and each
    named parameter) compared. Leaves gradients behind; :func:`make_runner` resets them.
    """
    dtype = x.dtype
    if mode == "infer":
        with torch.no_grad():
            r, f = ref(x), fast(x)
    else:
        ref.zero_grad(set_to_none=True)
        fast.zero_grad(set_to_none=True)
        xr = x.detach().clone().requires_grad_(True)
        xf = x.detach().clone().requires_grad_(True)
        r, f = ref(xr), fast(xf)
    rn, fn = _named_outputs(spec, r), _named_outputs(spec, f)
    for (name, rt), (_, ft) in zip(rn, fn):
        _assert_close(name, ft, rt, dtype)
    if mode == "train":
        r[0].sum().backward()
        f[0].sum().backward()
        _assert_close("grad input", xf.grad, xr.grad, dtype)
        fast_params = dict(fast.named_parameters())
        for pname, p in ref.named_parameters():
            if pname not in fast_params:
                raise AssertionError(f"rnnfast layer has no parameter {pname!r}")
            _assert_close(f"grad {pname}", fast_params[pname].grad, p.grad, dtype)


def make_runner(layer: nn.Module, x: torch.Tensor, mode: str) -> Tuple[Callable[[], None], Callable[[], None]]:
    """``(prepare, run)`` for one implementation.

    ``run`` is what is timed: ``layer(x)`` under no_grad (``infer``), or ``layer(x)`` then
    ``out.sum().backward()`` (``train``). ``prepare`` (untimed) sets the gradients of the layer
    and the input to None before each run.
    """
    if mode == "infer":
        def prepare() -> None:
            return None

        def run() -> None:
            with torch.no_grad():
                layer(x)
    elif mode == "train":
        def prepare() -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None

        def run() -> None:
            out = layer(x)[0]
            out.sum().backward()
    else:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    return prepare, run


def set_tf32(enabled: bool) -> None:
    """CUDA: allow or forbid TF32 in cuDNN (torch.nn's RNNs) and cuBLAS.

    cuDNN allows TF32 by default, which would compare a float32 rnnfast against a lower-
    precision baseline; the benchmark turns it off unless asked.
    """
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_once(prepare: Callable[[], None], run: Callable[[], None], device: str) -> float:
    """Seconds taken by one ``run()`` (``prepare()`` untimed). CUDA events on CUDA."""
    prepare()
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def time_interleaved(
    runners: Sequence[Tuple[Callable[[], None], Callable[[], None]]],
    device: str = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    min_time: float = 0.0,
    max_repeats: int = 200,
    max_wall: Optional[float] = None,
    warmup_max_wall: float = 5.0,
) -> List[List[float]]:
    """Time several implementations interleaved (A, B, A, B, ...); seconds per run, per impl.

    Warm-up first: at least ``warmup`` untimed interleaved rounds, continued (for up to
    ``warmup_max_wall`` seconds, 20 rounds) while some implementation's latest run is more
    than 1.5x its fastest so far; first calls can be slow for a while (one-time primitive
    creation, allocator and thread-pool warm-up). Then at least ``repeats`` timed rounds, and
    more (up to ``max_repeats`` rounds, and until ``max_wall`` seconds, default
    ``max(5, 10 * min_time)``, have passed) while ``rounds * fastest run`` of some
    implementation is below ``min_time``. Budgeting on the fastest run rather than the sum
    means a run disturbed by other load (the shared machines stall for 100+ ms at times)
    earns more samples instead of ending the measurement early.
    """
    warm: List[List[float]] = [[] for _ in runners]
    w = 0
    t0 = time.perf_counter()
    while w < warmup or (
        0 < warmup
        and w < 20
        and time.perf_counter() - t0 < warmup_max_wall
        and any(s[-1] > 1.5 * min(s) for s in warm)
    ):
        for i, (prepare, run) in enumerate(runners):
            warm[i].append(_time_once(prepare, run, device))
        w += 1
    if max_wall is None:
        max_wall = max(5.0, 10.0 * min_time)
    samples: List[List[float]] = [[] for _ in runners]
    n = 0
    t0 = time.perf_counter()
    while n < max(1, repeats) or (
        n < max_repeats
        and min(n * min(s) for s in samples) < min_time
        and time.perf_counter() - t0 < max_wall
    ):
        for i, (prepare, run) in enumerate(runners):
            samples[i].append(_time_once(prepare, run, device))
        n += 1
    return samples


def measure_peak_memory(prepare: Callable[[], None], run: Callable[[], None], device: str) -> Optional[int]:
    """CUDA only: bytes allocated at the peak of one run above what was live before it."""
    if device != "cuda":
        return None
    prepare()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


# --------------------------------------------------------------------------------------------
# CPU peak memory of one training step (each measurement in a fresh subprocess).
# --------------------------------------------------------------------------------------------
#
# Why a subprocess, and what is measured.  The CPU has no allocator peak counter like
# ``torch.cuda.max_memory_allocated`` (torch's CPU allocator does not cache and keeps no
# statistics by default), so the peak is taken from the kernel: the resident set size (RSS)
# and its high-water mark ``VmHWM`` in ``/proc/self/status``.  Those count the whole process,
# so every (layer, implementation, shape) is measured in its own fresh interpreter
# (``python -m rnnfast.bench --_memory-child ...``), where nothing of another implementation
# or shape is resident:
#
# 1. setup: ``torch.set_num_threads(threads)`` (2, as in the timing runs), build the layer and
#    the input with :func:`make_pair` (float32, weights identical to torch.nn's), the input
#    requiring grad as in ``train`` mode, and a fixed upstream gradient ``ones(T, B, H)``;
#    drop the other implementation's layer, ``gc.collect()``, ``malloc_trim(0)`` (free heap
#    memory goes back to the kernel, so it cannot silently absorb the step's allocations);
# 2. ``rss_before`` = RSS from ``/proc/self/statm``; then the high-water mark is reset to the
#    current RSS by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0; checked at run
#    time: after the write ``VmHWM`` must equal ``VmRSS``);
# 3. exactly one training step: ``out = layer(x)[0]; out.backward(gout)`` (parameter and input
#    gradients are allocated inside the step, identically for both implementations);
# 4. ``peak`` = ``VmHWM``; the step's extra peak memory is ``peak - rss_before``.
#
# The first step of a fresh process (``cold``) also pays one-time costs: code pages of the
# kernels faulted in, oneDNN primitive creation and its caches, thread-pool start.  So the child
# then frees the step's tensors (grads set to None), trims, resets the mark again and measures a
# second, identical step (``warm``): the steady-state cost of a step in a training loop.  Both
# are reported; a warm-up before the first measurement would hide the one-time costs, which is
# why the cold step is measured first and without one.
#
# If clear_refs cannot reset the mark (old kernel, restricted /proc), the child falls back to
# ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, the whole life of the process):
# then the cold figure is ``max(0, ru_maxrss - rss_before)``, which is right only as long as
# nothing during setup (imports, building the layers) peaked above ``rss_before`` plus the step's
# peak, and the warm figure is not available.  ``method`` in the result says which was used.
#
# Allocator settings (set in the child's environment unless already set by the caller):
# ``MALLOC_ARENA_MAX=2`` (one malloc arena per compute thread, as threads=2; bounds arena slack)
# and ``MALLOC_MMAP_THRESHOLD_=131072``: glibc's default threshold is *dynamic* (it rises up to
# 32 MiB after a large block is freed), so depending on what setup happened to free, a large
# buffer of the step would come either from fresh mmap'ed pages (counted) or from already-resident
# heap (not counted).  A fixed threshold sends every block >= 128 KiB to mmap and back to the
# kernel on free, so RSS follows the live large buffers, like CUDA's allocated-bytes counter.
# torch's own settings (oneDNN for nn.LSTM on the CPU, ATen for GRU/RNN) are left at defaults.
#
# Noise: RSS counts touched 4 KiB pages, including file-backed code pages faulted in during the
# step and small-object heap growth, and the kernel's RSS counters are per-CPU approximations
# (~0.2 MiB).  Repeated runs of one cell agree to within ~0.3 MiB (``--memory-repeat 3`` on
# RNN/GRU L: 57.3-57.6 / 227.9-228.0 MiB), which matters only for the smallest shapes (B1).
# With glibc's default (dynamic) mmap threshold the figures move by a few MiB and vary more
# between runs (LSTM M rnnfast: 114.5-115.8 MiB instead of 112.6), torch.nn's barely.

#: Implementations a memory measurement can run: the torch.nn baseline and rnnfast.
MEMORY_IMPLS: Tuple[str, ...] = ("torch", "rnnfast")

_MEMORY_ENV_DEFAULTS: Dict[str, str] = {
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_MMAP_THRESHOLD_": "131072",
}


def _proc_status_kib(field_name: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for ln in f:
                if ln.startswith(field_name + ":"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    """Current RSS from ``/proc/self/statm`` (resident pages × page size)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        resident = int(f.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; True if that worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _proc_status_kib("VmHWM"), _proc_status_kib("VmRSS")
    # The kernel's RSS counters are per-CPU approximations and other threads run: the two reads
    # differ by up to ~200 KiB here. A reset that did not happen leaves the setup's peak, MiBs above.
    return hwm is not None and rss is not None and hwm <= rss + 1024


def _malloc_trim() -> None:
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _settle() -> None:
    import gc  # noqa: PLC0415

    gc.collect()
    _malloc_trim()


def _memory_child(layer: str, impl: str, T: int, B: int, H: int, seed: int = 0, threads: int = 2,
                  extra_bytes: int = 0) -> Dict[str, Any]:
    """Runs in the fresh child: measures one cold and one warm training step (see above).

    ``extra_bytes`` (for the tests) allocates and fills that many more bytes inside each step,
    kept alive until the backward is done, to show that the method sees memory.
    """
    import resource  # noqa: PLC0415

    if threads > 0:
        torch.set_num_threads(threads)
    spec = get_layer(layer)
    if impl not in MEMORY_IMPLS:
        raise ValueError(f"unknown implementation {impl!r}; use {MEMORY_IMPLS}")
    shape = Shape(f"T{T}B{B}H{H}", T, B, H)
    ref, fast, x = make_pair(spec, shape, "train", "cpu", torch.float32, seed)
    mod = ref if impl == "torch" else fast
    del ref, fast
    gout = torch.ones(T, B, H)

    def step() -> None:
        extra = torch.ones(max(0, extra_bytes) // 4) if extra_bytes > 0 else None
        out = mod(x)[0]
        out.backward(gout)
        del out, extra

    def clear() -> None:
        mod.zero_grad(set_to_none=True)
        x.grad = None

    res: Dict[str, Any] = {"layer": spec.name, "impl": impl, "T": T, "B": B, "H": H,
                           "threads": torch.get_num_threads(),
                           "env": {k: os.environ.get(k) for k in _MEMORY_ENV_DEFAULTS}}
    # Bootstrap: one step of the same layer on a tiny input (T=2, B=1), so that what every first
    # call of a process pays whatever the shape (kernel code paged in, the OpenMP pool's thread
    # stacks, autograd's first-use state: ~40 MiB here) is not charged to the measured step.
    # It allocates next to nothing of the measured shape's buffers.
    _settle()
    before0 = _rss_bytes()
    if _reset_peak_rss():
        xb = torch.randn(2, 1, shape.I, requires_grad=True)
        ob = mod(xb)[0]
        ob.backward(torch.ones_like(ob))
        res["bootstrap_bytes"] = _proc_status_kib("VmHWM") * 1024 - before0
        del xb, ob
        mod.zero_grad(set_to_none=True)
    _settle()
    before = _rss_bytes()
    can_reset = _reset_peak_rss()
    step()
    if can_reset:
        res["method"] = "VmHWM after clear_refs"
        res["cold_bytes"] = _proc_status_kib("VmHWM") * 1024 - before
    else:
        res["method"] = "ru_maxrss (clear_refs unavailable)"
        res["cold_bytes"] = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
    res["rss_before_bytes"] = before
    res["warm_bytes"] = None
    clear()
    _settle()
    if can_reset:
        before2 = _rss_bytes()
        if _reset_peak_rss():
            step()
            res["warm_bytes"] = _proc_status_kib("VmHWM") * 1024 - before2
    return res


@dataclass
class MemoryResult:
    """Peak extra memory of one training step, torch.nn vs rnnfast, for one (layer, shape).

    ``*_cold_bytes``: the first step in a fresh process; ``*_warm_bytes``: the second one.
    ``ratio`` = rnnfast / torch (cold); ``ok`` = rnnfast <= torch.nn (cold), strictly, no
    allowance for page-level noise; ``ratio_warm`` / ``ok_warm`` the same for the warm step.
    """

    layer: str
    shape: str
    T: int
    B: int
    H: int
    status: str = "ok"
    message: str = ""
    method: str = ""
    torch_cold_bytes: Optional[int] = None
    fast_cold_bytes: Optional[int] = None
    torch_warm_bytes: Optional[int] = None
    fast_warm_bytes: Optional[int] = None
    ratio: Optional[float] = None
    ratio_warm: Optional[float] = None
    ok: Optional[bool] = None
    ok_warm: Optional[bool] = None

    @property
    def label(self) -> str:
        return f"{self.layer} {self.shape} train-step memory"


def measure_step_memory(spec: LayerSpec, impl: str, shape: Shape, seed: int = 0, threads: int = 2,
                        extra_bytes: int = 0, timeout: float = 600.0,
                        env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run :func:`_memory_child` in a fresh ``sys.executable`` and return its result dict.

    The child's environment is this one's, plus :data:`_MEMORY_ENV_DEFAULTS` where not set,
    plus ``env``. Raises RuntimeError when the child fails.
    """
    import subprocess  # noqa: PLC0415

    child_env = dict(os.environ)
    for k, v in _MEMORY_ENV_DEFAULTS.items():
        child_env.setdefault(k, v)
    if env:
        child_env.update(env)
    cmd = [sys.executable, "-m", "rnnfast.bench", "--_memory-child",
           f"{spec.key},{impl},{shape.T},{shape.B},{shape.H},{seed},{threads},{extra_bytes}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env, check=False)
    marker = "RNNFAST_MEMORY_RESULT "
    for ln in p.stdout.splitlines():
        if ln.startswith(marker):
            return json.loads(ln[len(marker):])
    raise RuntimeError(f"memory child failed (rc {p.returncode}): "
                       f"{_first_lines(p.stderr[-2000:] or p.stdout[-2000:], 4)}")


def measure_memory(specs: Optional[Sequence[LayerSpec]] = None, shapes: Optional[Sequence[Shape]] = None,
                   seed: int = 0, threads: int = 2, log: Optional[Callable[[str], None]] = None
                   ) -> List[MemoryResult]:
    """Peak extra memory of one training step, torch.nn vs rnnfast, per (layer, shape).

    Defaults: every layer rnnfast provides, the full PERF.md grid. Each implementation runs in
    its own fresh subprocess (torch.nn first, then rnnfast). Returns one :class:`MemoryResult`
    per (layer, shape); failures are reported in ``status`` / ``message``, never raised.
    """
    specs = list(specs) if specs is not None else available_layers()
    shapes = list(shapes) if shapes is not None else resolve_shapes(None)
    out: List[MemoryResult] = []
    cells = [(s, sh) for s in specs for sh in shapes]
    t0 = time.perf_counter()
    for i, (spec, shape) in enumerate(cells, 1):
        r = MemoryResult(layer=spec.name, shape=shape.name, T=shape.T, B=shape.B, H=shape.H)
        try:
            t = measure_step_memory(spec, "torch", shape, seed, threads)
            f = measure_step_memory(spec, "rnnfast", shape, seed, threads)
            r.method = t["method"] if t["method"] == f["method"] else f"{t['method']} / {f['method']}"
            r.torch_cold_bytes, r.fast_cold_bytes = t["cold_bytes"], f["cold_bytes"]
            r.torch_warm_bytes, r.fast_warm_bytes = t["warm_bytes"], f["warm_bytes"]
            r.ratio = r.fast_cold_bytes / r.torch_cold_bytes if r.torch_cold_bytes else None
            r.ok = r.fast_cold_bytes <= r.torch_cold_bytes
            if r.torch_warm_bytes is not None and r.fast_warm_bytes is not None:
                r.ratio_warm = r.fast_warm_bytes / r.torch_warm_bytes if r.torch_warm_bytes else None
                r.ok_warm = r.fast_warm_bytes <= r.torch_warm_bytes
        except Exception as e:  # noqa: BLE001 - report, do not crash the whole run
            r.status, r.message = "ERROR", f"{type(e).__name__}: {_first_lines(str(e), 3)}"
        out.append(r)
        if log is not None:
            if r.status == "ok":
                detail = (f"torch {r.torch_cold_bytes / 2**20:.1f} MiB, rnnfast {r.fast_cold_bytes / 2**20:.1f} MiB"
                          f" (x{r.ratio:.2f}{'' if r.ok else ', LARGER'})")
                if r.ratio_warm is not None:
                    detail += (f"; warm step torch {r.torch_warm_bytes / 2**20:.1f}, rnnfast "
                               f"{r.fast_warm_bytes / 2**20:.1f} MiB")
            else:
                detail = f"{r.status}: {r.message}"
            log(f"[{i}/{len(cells)}] {r.label} ... {detail}  [{time.perf_counter() - t0:.1f}s]")
    return out


def format_memory_table(results: Sequence[MemoryResult]) -> str:
    """Markdown table of :func:`measure_memory`'s rows (MiB = 2**20 bytes)."""
    head = ["layer", "shape", "T×B×H", "torch.nn MiB", "rnnfast MiB", "rnnfast/torch", "rnnfast <= torch",
            "torch.nn MiB (warm)", "rnnfast MiB (warm)", "rnnfast/torch (warm)", "<= (warm)"]

    def mib(v: Optional[int]) -> str:
        return _fmt(v / 2**20 if v is not None else None, ".1f")

    def mark(v: Optional[bool]) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    rows = [head]
    for r in results:
        row = [r.layer, r.shape, f"{r.T}×{r.B}×{r.H}"]
        if r.status != "ok":
            rows.append(row + [r.status] + ["-"] * (len(head) - 4))
            continue
        row += [mib(r.torch_cold_bytes), mib(r.fast_cold_bytes), _fmt(r.ratio, ".2f"), mark(r.ok),
                mib(r.torch_warm_bytes), mib(r.fast_warm_bytes), _fmt(r.ratio_warm, ".2f"), mark(r.ok_warm)]
        rows.append(row)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    right = {i for i, h in enumerate(head) if "MiB" in h or "/" in h}

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


@dataclass
class CellResult:
    """The outcome of one (layer, mode, shape, dtype) cell. Times in seconds.

    ``status`` is ``ok``, ``FAILED`` (correctness check failed; not timed) or ``ERROR``
    (an exception while building or running). ``torch_s`` / ``fast_s`` are the primary
    statistic (min on CPU, median on CUDA); both min and median are kept.
    """

    layer: str
    mode: str
    shape: str
    T: int
    B: int
    H: int
    dtype: str
    device: str
    status: str = "ok"
    message: str = ""
    stat: str = "min"
    torch_s: Optional[float] = None
    fast_s: Optional[float] = None
    torch_min_s: Optional[float] = None
    fast_min_s: Optional[float] = None
    torch_median_s: Optional[float] = None
    fast_median_s: Optional[float] = None
    speedup: Optional[float] = None
    speedup_median: Optional[float] = None
    flops: float = 0.0
    torch_gflops: Optional[float] = None
    fast_gflops: Optional[float] = None
    target: Optional[float] = None
    target_met: Optional[bool] = None
    torch_peak_bytes: Optional[int] = None
    fast_peak_bytes: Optional[int] = None
    runs: int = 0
    torch_samples_s: List[float] = field(default_factory=list)
    fast_samples_s: List[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``LSTM M train`` (+ dtype when not float32), for progress lines."""
        d = "" if self.dtype == "float32" else f" {self.dtype}"
        return f"{self.layer} {self.shape} {self.mode}{d}"


def run_cell(
    spec: LayerSpec,
    mode: str,
    shape: Shape,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 5,
    min_time: float = 0.0,
    seed: int = 0,
) -> CellResult:
    """Build, check, then time one cell; never raises for rnnfast's failures."""
    res = CellResult(
        layer=spec.name, mode=mode, shape=shape.name, T=shape.T, B=shape.B, H=shape.H,
        dtype=dtype_name(dtype), device=device, stat="median" if device == "cuda" else "min",
        flops=flops(spec, shape, mode), target=target_for(spec, mode, shape, device, dtype),
    )
    try:
        ref, fast, x = make_pair(spec, shape, mode, device, dtype, seed)
    except Exception as e:  # noqa: BLE001 - report, do not crash the whole run
        res.status, res.message = "ERROR", f"building layers: {type(e).__name__}: {e}"
        return res
    try:
        check_correctness(spec, ref, fast, x, mode)
    except AssertionError as e:
        res.status, res.message = "FAILED", _first_lines(str(e), 4) or "mismatch"
        return res
    except Exception as e:  # noqa: BLE001
        res.status, res.message = "FAILED", f"{type(e).__name__}: {_first_lines(str(e), 3)}"
        return res
    try:
        runners = [make_runner(ref, x, mode), make_runner(fast, x, mode)]
        samples = time_interleaved(runners, device, warmup, repeats, min_time)
        if device == "cuda":
            res.torch_peak_bytes = measure_peak_memory(*runners[0], device)
            res.fast_peak_bytes = measure_peak_memory(*runners[1], device)
    except Exception as e:  # noqa: BLE001
        res.status, res.message = "ERROR", f"timing: {type(e).__name__}: {_first_lines(str(e), 3)}"
        return res
    ts, fs = samples
    res.runs = len(ts)
    res.torch_samples_s, res.fast_samples_s = ts, fs
    res.torch_min_s, res.fast_min_s = min(ts), min(fs)
    res.torch_median_s, res.fast_median_s = statistics.median(ts), statistics.median(fs)
    if res.stat == "median":
        res.torch_s, res.fast_s = res.torch_median_s, res.fast_median_s
    else:
        res.torch_s, res.fast_s = res.torch_min_s, res.fast_min_s
    res.speedup = res.torch_s / res.fast_s if res.fast_s else math.inf
    res.speedup_median = res.torch_median_s / res.fast_median_s if res.fast_median_s else math.inf
    res.torch_gflops = res.flops / res.torch_s / 1e9 if res.torch_s else None
    res.fast_gflops = res.flops / res.fast_s / 1e9 if res.fast_s else None
    if res.target is not None:
        res.target_met = res.speedup >= res.target
    return res


def _first_lines(text: str, n: int) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:n])


# --------------------------------------------------------------------------------------------
# Machine description.
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gemm_peak_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GF/s of an ``n x n`` matmul: the efficiency denominator of PERF.md."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        best = min(best, _time_once(lambda: None, lambda: torch.mm(a, b), device))
    return 2.0 * n**3 / best / 1e9


def machine_info(device: str = "cpu") -> Dict[str, Any]:
    """CPU model, core and thread counts, torch and rnnfast versions and build info, GPU name."""
    info: Dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        rnnfast = _import_rnnfast()
        info["rnnfast"] = getattr(rnnfast, "__version__", "unknown")
        c_ext = getattr(rnnfast, "_C", None)
        if c_ext is not None and hasattr(c_ext, "build_info"):
            info["rnnfast_build"] = c_ext.build_info()
        elif hasattr(rnnfast, "build_info"):
            info["rnnfast_build"] = rnnfast.build_info()
    except Exception as e:  # noqa: BLE001
        info["rnnfast"] = f"not importable: {type(e).__name__}: {e}"
    return info


def load_average() -> Optional[float]:
    """1-minute load average from /proc/loadavg (None where unavailable)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def format_machine(info: Dict[str, Any]) -> str:
    """Human-readable machine block for the report."""
    lines = [
        f"CPU: {info.get('cpu')} ({info.get('cpu_count')} logical CPUs), "
        f"torch threads: {info.get('torch_threads')}",
        f"torch {info.get('torch')} (oneDNN {'on' if info.get('mkldnn') else 'off'}), "
        f"python {info.get('python')}, {info.get('platform')}",
        f"rnnfast {info.get('rnnfast')}",
    ]
    if "rnnfast_build" in info:
        lines.append(f"rnnfast build: {info['rnnfast_build']}")
    if info.get("load_start") is not None:
        lines.append(f"load average (1 min): {info['load_start']:.2f} at start"
                     + (f", {info['load_end']:.2f} at end" if info.get("load_end") is not None else ""))
    if "gpu" in info:
        lines.append(f"GPU: {info['gpu']} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, "
                     f"TF32 {'on' if info.get('tf32') else 'off'})")
    if info.get("gemm_peak_gflops"):
        lines.append(
            f"measured GEMM peak ({info.get('gemm_peak_dtype')}, n={info.get('gemm_peak_n')}): "
            f"{info['gemm_peak_gflops']:.0f} GF/s"
            + (f" (best of start {info['gemm_peak_gflops_start']:.0f}, end {info['gemm_peak_gflops_end']:.0f})"
               if "gemm_peak_gflops_end" in info else "")
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Report: table and plot.
# --------------------------------------------------------------------------------------------


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: Sequence[CellResult], peak_gflops: Optional[float] = None) -> str:
    """Markdown table: one row per cell, with the PERF.md target and whether it was met."""
    show_dtype = any(r.dtype != "float32" for r in results)
    show_mem = any(r.torch_peak_bytes is not None for r in results)
    stat = results[0].stat if results else "min"
    head = ["layer", "mode", "shape", "T×B×H"]
    if show_dtype:
        head.append("dtype")
    head += [f"torch ms ({stat})", f"rnnfast ms ({stat})", "speedup", "speedup (median)",
             "torch GF/s", "rnnfast GF/s"]
    if peak_gflops:
        head.append("rnnfast % peak")
    if show_mem:
        head += ["torch peak MiB", "rnnfast peak MiB"]
    head += ["target", "met"]
    rows = [head]
    for r in results:
        row = [r.layer, r.mode, r.shape, f"{r.T}×{r.B}×{r.H}"]
        if show_dtype:
            row.append(r.dtype)
        if r.status != "ok":
            blank = len(head) - len(row) - 2
            row += [r.status] + ["-"] * (blank - 1)
            row += [_fmt(r.target, ".1f") + ("x" if r.target is not None else ""), r.status]
            rows.append(row)
            continue
        row += [
            _fmt(r.torch_s * 1e3 if r.torch_s is not None else None, ".2f"),
            _fmt(r.fast_s * 1e3 if r.fast_s is not None else None, ".2f"),
            _fmt(r.speedup, ".2f") + "x",
            _fmt(r.speedup_median, ".2f") + "x",
            _fmt(r.torch_gflops, ".1f"),
            _fmt(r.fast_gflops, ".1f"),
        ]
        if peak_gflops:
            row.append(_fmt(100.0 * r.fast_gflops / peak_gflops if r.fast_gflops else None, ".0f") + "%")
        if show_mem:
            row += [_fmt(r.torch_peak_bytes / 2**20 if r.torch_peak_bytes is not None else None, ".1f"),
                    _fmt(r.fast_peak_bytes / 2**20 if r.fast_peak_bytes is not None else None, ".1f")]
        if r.target is None:
            row += ["-", "-"]
        else:
            row += [f"{r.target:.1f}x", "met" if r.target_met else "NOT met"]
        rows.append(row)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    right = {i for i, h in enumerate(head) if any(k in h for k in ("ms", "speedup", "GF/s", "peak", "target"))}

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


def format_summary(results: Sequence[CellResult], peak_gflops: Optional[float] = None) -> str:
    """Counts of targets met, failures, and the L/XL efficiency goal when a peak is known."""
    with_target = [r for r in results if r.target is not None and r.status == "ok"]
    met = sum(1 for r in with_target if r.target_met)
    bad = [r for r in results if r.status != "ok"]
    parts = []
    if with_target:
        parts.append(f"targets met: {met}/{len(with_target)}")
    if bad:
        parts.append(f"FAILED/ERROR cells: {len(bad)}")
    out = ["; ".join(parts)] if parts else []
    if peak_gflops:
        shapes, frac = EFFICIENCY_TARGET
        eff = [r for r in results if r.status == "ok" and r.shape in shapes and r.device == "cpu"
               and r.dtype == "float32" and r.fast_gflops]
        for r in eff:
            e = r.fast_gflops / peak_gflops
            out.append(f"efficiency {r.layer} {r.shape} {r.mode}: {100*e:.0f}% of GEMM peak "
                       f"(goal {100*frac:.0f}%: {'met' if e >= frac else 'NOT met'})"
                       + (" - above 100%: the peak was measured while the machine was busy" if e > 1 else ""))
    for r in bad:
        out.append(f"{r.status} {r.label}: {r.message}")
    return "\n".join(out)


def plot_results(results: Sequence[CellResult], path: str, title: str = "") -> bool:
    """Save grouped speedup bars (one panel per layer × mode; groups = shapes, bars = dtypes).

    The target of each shape is drawn as a red tick, 1.0 as a dashed line. Returns False,
    with a message on stderr, when matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, imported only when plotting

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("note: matplotlib is not installed; no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    panels: List[Tuple[str, str]] = []
    for r in results:
        if (r.layer, r.mode) not in panels:
            panels.append((r.layer, r.mode))
    if not panels:
        return False
    modes = [m for m in MODES if any(p[1] == m for p in panels)] or [panels[0][1]]
    layers = [lay for lay in dict.fromkeys(p[0] for p in panels)]
    nrows, ncols = len(layers), len(modes)
    dtypes = list(dict.fromkeys(r.dtype for r in results))
    shapes_all = list(dict.fromkeys(r.shape for r in results))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(5.0, 0.9 * len(shapes_all) + 2) * ncols, 3.6 * nrows),
                             squeeze=False)
    width = 0.8 / max(1, len(dtypes))
    legend: Dict[str, Any] = {}
    for li, layer in enumerate(layers):
        for mi, mode in enumerate(modes):
            ax = axes[li][mi]
            cells = [r for r in results if r.layer == layer and r.mode == mode]
            if not cells:
                ax.set_visible(False)
                continue
            shapes = list(dict.fromkeys(r.shape for r in cells))
            ymax = 1.2
            for di, dt in enumerate(dtypes):
                for si, sh in enumerate(shapes):
                    r = next((c for c in cells if c.shape == sh and c.dtype == dt), None)
                    if r is None:
                        continue
                    xpos = si - 0.4 + width * (di + 0.5)
                    if r.status != "ok" or r.speedup is None:
                        ax.text(xpos, 0.05, r.status, rotation=90, ha="center", va="bottom",
                                color="red", fontsize=8)
                        continue
                    color = ("tab:green" if r.target_met else "tab:orange") if r.target is not None else "tab:blue"
                    ax.bar(xpos, r.speedup, width * 0.9, color=color, alpha=1.0 - 0.3 * di,
                           label=dt if (si == 0 and len(dtypes) > 1) else None)
                    ax.text(xpos, r.speedup, f"{r.speedup:.2f}", ha="center", va="bottom", fontsize=7)
                    ymax = max(ymax, r.speedup * 1.15)
            first_target = True
            for si, sh in enumerate(shapes):
                tgt = next((c.target for c in cells if c.shape == sh and c.target is not None), None)
                if tgt is not None:
                    ax.hlines(tgt, si - 0.45, si + 0.45, colors="red", linewidth=2,
                              label="PERF.md target" if first_target else None)
                    first_target = False
                    ymax = max(ymax, tgt * 1.15)
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
            ax.set_xlim(-0.5, len(shapes) - 0.5)
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes, rotation=45 if len(shapes) > 8 else 0, fontsize=8)
            ax.set_ylim(0, ymax)
            ax.set_title(f"{layer} {mode}")
            ax.set_ylabel("speedup vs torch.nn")
            handles, labels = ax.get_legend_handles_labels()
            for h, lab in zip(handles, labels):
                legend.setdefault(lab, h)
            if any(c.target is not None and c.status == "ok" for c in cells):
                from matplotlib.patches import Patch  # noqa: PLC0415

                legend.setdefault("target met", Patch(color="tab:green"))
                legend.setdefault("target NOT met", Patch(color="tab:orange"))
    if legend:
        # One legend for the figure, below the panels, so it never hides a bar or a target.
        fig.legend(list(legend.values()), list(legend.keys()), loc="lower center",
                   ncol=len(legend), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 1))
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------


def _csv(s: str) -> List[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m rnnfast.bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m rnnfast.bench",
        description="Benchmark rnnfast's layers against torch.nn side by side (PERF.md method): "
                    "correctness first, then interleaved timing, speedup = torch time / rnnfast time.",
    )
    p.add_argument("--layers", type=_csv, default=None,
                   help="comma list of " + ",".join(s.key for s in LAYERS)
                        + " (default: every layer rnnfast provides; the others are skipped with a message)")
    p.add_argument("--modes", type=_csv, default=list(MODES), help="comma list of infer,train (default: both)")
    p.add_argument("--shapes", type=_csv, default=None,
                   help="comma list of S,M,L,XL,B1,B4 (PERF.md grid), 'grid', 'small-batch' "
                        "(batch 1-8 × H 64-1024), 'all', or T<t>B<b>H<h> (default: grid; on CUDA "
                        "grid,small-batch)")
    p.add_argument("--repeats", type=int, default=None,
                   help="minimum timed runs per implementation (default 5; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up rounds (default 2; 1 with --quick)")
    p.add_argument("--min-time", type=float, default=None,
                   help="keep adding runs (up to 200 rounds) until runs × fastest run reaches this many "
                        "seconds for each implementation (default 1.0; 0.05 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2; 0 leaves torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="scaled-down grid and fewer runs, for smoke tests and CI (no targets judged)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default) or cuda: CUDA events, median, peak memory, against cuDNN")
    p.add_argument("--dtypes", type=_csv, default=None,
                   help="comma list of float32,float16,bfloat16 (default: float32 on the CPU, all three "
                        "on CUDA; targets are for float32 on the CPU)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: allow TF32 in cuDNN and cuBLAS (default off, so float32 is compared as float32)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--json", metavar="PATH", default=None, help="write all results (with samples) as JSON")
    p.add_argument("--plot", metavar="PATH", default=os.path.join("bench_results", "speedup.png"),
                   help="PNG of speedup per shape (default bench_results/speedup.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--gemm-peak", dest="gemm_peak", action="store_true", default=None,
                   help="measure the GEMM peak and report rnnfast's efficiency (default on, off with --quick)")
    p.add_argument("--no-gemm-peak", dest="gemm_peak", action="store_false", help="do not measure the GEMM peak")
    p.add_argument("--strict", action="store_true", help="exit 2 when a PERF.md target is not met")
    p.add_argument("--memory", action="store_true",
                   help="instead of timing: CPU peak memory of one training step (forward + backward, "
                        "float32), torch.nn vs rnnfast, each in a fresh subprocess (see the method in "
                        "rnnfast/bench.py); honours --layers, --shapes, --quick, --threads, --seed, --json; "
                        "with --strict exits 2 where rnnfast uses more than torch.nn")
    p.add_argument("--memory-repeat", type=int, default=1, metavar="N",
                   help="with --memory: measure every cell N times (repeatability check; default 1)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _memory_main(args: argparse.Namespace) -> int:
    """``--memory``: the training-step peak-memory comparison only (no timing, no plot)."""
    try:
        specs = resolve_layers(args.layers)
        shapes = resolve_shapes(args.shapes, quick=args.quick, device="cpu")
        _import_rnnfast()
    except (KeyError, ValueError) as e:
        _log(f"error: {e.args[0] if e.args else e}")
        return 64
    except Exception as e:  # noqa: BLE001
        _log(f"error: cannot import rnnfast: {type(e).__name__}: {e}")
        return 1
    runnable = []
    for spec in specs:
        if rnnfast_class(spec) is None:
            _log(f"skipping {spec.name}: rnnfast.{spec.name} does not exist yet")
        else:
            runnable.append(spec)
    if not runnable:
        _log("nothing to measure: rnnfast provides none of the requested layers")
        return 1
    if args.device != "cpu":
        _log("note: --memory measures the CPU (on CUDA the timing run reports peak memory itself)")
    threads = args.threads if args.threads > 0 else 0
    _log(f"peak memory of one training step, float32, {threads or 'default'} threads, one fresh "
         f"subprocess per (layer, implementation, shape); child env "
         + ", ".join(f"{k}={os.environ.get(k, v)}" for k, v in _MEMORY_ENV_DEFAULTS.items()))
    t0 = time.perf_counter()
    results: List[MemoryResult] = []
    for rep in range(max(1, args.memory_repeat)):
        if args.memory_repeat > 1:
            _log(f"-- repetition {rep + 1}/{args.memory_repeat}")
        results += measure_memory(runnable, shapes, args.seed, threads, log=_log)
    print()
    print(f"Peak extra memory of one training step (forward + backward with a fixed upstream gradient), "
          f"MiB = 2^20 bytes, above the RSS after setup; cold = first step of a fresh process, "
          f"warm = the second step; method: {results[0].method if results else '-'}")
    print()
    print(format_memory_table(results))
    bad = [r for r in results if r.status == "ok" and r.ok is False]
    print()
    print(f"rnnfast <= torch.nn (cold step) in {sum(1 for r in results if r.ok)}/{len(results)} cells"
          + (": larger in " + ", ".join(f"{r.layer} {r.shape} (x{r.ratio:.2f})" for r in bad) if bad else "")
          + f"; {time.perf_counter() - t0:.0f}s")
    if args.json:
        d = os.path.dirname(args.json)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": [dataclasses.asdict(r) for r in results]},
                      f, indent=1, default=str)
        _log(f"wrote {args.json}")
    if any(r.status != "ok" for r in results):
        return 1
    if args.strict and bad:
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; returns the exit status (0 ok, 1 a cell FAILED/ERROR, 2 --strict miss)."""
    args = build_parser().parse_args(argv)
    if args.memory_child is not None:
        layer, impl, t, b, h, seed, threads, extra = args.memory_child.split(",")
        res = _memory_child(layer, impl, int(t), int(b), int(h), int(seed), int(threads), int(extra))
        print("RNNFAST_MEMORY_RESULT " + json.dumps(res), flush=True)
        return 0
    if args.memory:
        return _memory_main(args)
    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (3 if quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    min_time = args.min_time if args.min_time is not None else (0.05 if quick else 1.0)
    do_peak = args.gemm_peak if args.gemm_peak is not None else not quick

    if args.device == "cuda" and not torch.cuda.is_available():
        _log("skipping: --device cuda was asked for, but CUDA is not available "
             f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for m in args.modes:
        if m not in MODES:
            _log(f"error: unknown mode {m!r}; use {','.join(MODES)}")
            return 64
    dtype_names = args.dtypes or (["float32", "float16", "bfloat16"] if args.device == "cuda" else ["float32"])
    bad = [d for d in dtype_names if d not in _DTYPES]
    if bad:
        _log(f"error: unknown dtype {bad[0]!r}; use {','.join(_DTYPES)}")
        return 64
    dtypes = [_DTYPES[d] for d in dtype_names]
    try:
        specs = resolve_layers(args.layers)
        shapes = resolve_shapes(args.shapes, quick=quick, device=args.device)
    except (KeyError, ValueError) as e:
        _log(f"error: {e.args[0] if e.args else e}")
        return 64
    try:
        _import_rnnfast()
    except Exception as e:  # noqa: BLE001
        _log(f"error: cannot import rnnfast: {type(e).__name__}: {e}")
        return 1

    runnable: List[LayerSpec] = []
    for spec in specs:
        if rnnfast_class(spec) is None:
            _log(f"skipping {spec.name}: rnnfast.{spec.name} does not exist yet")
        else:
            runnable.append(spec)
    if not runnable:
        _log("nothing to benchmark: rnnfast provides none of the requested layers")
        return 1

    if args.device == "cuda":
        set_tf32(args.tf32)
    info = machine_info(args.device)
    info["torch_threads"] = torch.get_num_threads()
    info["load_start"] = load_average()
    if info["load_start"] is not None and info["load_start"] > 0.5:
        _log(f"warning: the machine is busy before the benchmark starts (load average "
             f"{info['load_start']:.2f} on {os.cpu_count()} CPUs, over the last minute); absolute "
             "times and even ratios may be noisy")
    if args.device == "cuda":
        info["tf32"] = args.tf32
    peak_n = 4096 if args.device == "cuda" else 2048
    if do_peak:
        info["gemm_peak_dtype"], info["gemm_peak_n"] = "float32", peak_n
        info["gemm_peak_gflops_start"] = gemm_peak_gflops(args.device, torch.float32, peak_n)
        info["gemm_peak_gflops"] = info["gemm_peak_gflops_start"]
    _log(format_machine(info))

    cells = [(spec, mode, shape, dt) for spec in runnable for mode in args.modes
             for shape in shapes for dt in dtypes]
    results: List[CellResult] = []
    t_start = time.perf_counter()
    for i, (spec, mode, shape, dt) in enumerate(cells, 1):
        r = run_cell(spec, mode, shape, args.device, dt, warmup, repeats, min_time, args.seed)
        results.append(r)
        elapsed = time.perf_counter() - t_start
        if r.status == "ok":
            tgt = "" if r.target is None else f", target {r.target:.1f}x {'met' if r.target_met else 'NOT met'}"
            detail = (f"{r.speedup:.2f}x (torch {r.torch_s*1e3:.2f} ms, rnnfast {r.fast_s*1e3:.2f} ms, "
                      f"{r.runs} runs{tgt})")
        else:
            detail = f"{r.status}: {r.message}"
        _log(f"[{i}/{len(cells)}] {r.label} ... {detail}  [{elapsed:.1f}s]")

    if do_peak:
        # Measured again at the end, and the better of the two kept: a peak taken while the
        # shared machine is busy understates it and overstates every efficiency.
        info["gemm_peak_gflops_end"] = gemm_peak_gflops(args.device, torch.float32, peak_n)
        info["gemm_peak_gflops"] = max(info["gemm_peak_gflops_start"], info["gemm_peak_gflops_end"])
    info["load_end"] = load_average()
    cpus = os.cpu_count() or 1
    if args.device == "cpu" and info["load_end"] is not None and info["load_end"] > cpus + 0.5:
        _log(f"warning: load average {info['load_end']:.2f} at the end on {cpus} CPUs, of which this "
             f"run accounts for about {min(cpus, info['torch_threads'])}: other work competed for "
             "the CPUs, treat these timings as noisy")
    peak = info.get("gemm_peak_gflops") if args.device == "cpu" else None
    print()
    print(format_machine(info))
    print()
    print(format_table(results, peak))
    summary = format_summary(results, peak)
    if summary:
        print()
        print(summary)

    if args.json:
        d = os.path.dirname(args.json)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(args).items()},
                       "quick": quick, "repeats": repeats, "warmup": warmup, "min_time": min_time,
                       "results": [dataclasses.asdict(r) for r in results]}, f, indent=1, default=str)
        _log(f"wrote {args.json}")
    if not args.no_plot and args.plot:
        title = (f"rnnfast vs torch.nn — {info.get('gpu') or info.get('cpu')}, "
                 f"{info['torch_threads']} threads, torch {info['torch']}" + (" (quick)" if quick else ""))
        if plot_results(results, args.plot, title):
            _log(f"wrote {args.plot}")

    if any(r.status != "ok" for r in results):
        return 1
    if args.strict and any(r.target_met is False for r in results):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

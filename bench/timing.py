"""Timing: the timed call of each implementation, interleaved timing, one cell end to end
(build, check, time), and the GEMM peak that efficiencies are measured against.

On the CPU, ``time.perf_counter`` around each call and the *minimum* over the runs (the
median is recorded too); on CUDA, CUDA events with synchronisation, the *median*, and the
peak memory of one call (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .check import check_correctness, make_pair
from .grid import MODES, LayerSpec, Shape, dtype_name, flops, target_for
from .util import first_lines

__all__ = [
    "make_runner", "set_tf32", "time_interleaved", "measure_peak_memory", "gemm_peak_gflops",
    "CellResult", "run_cell",
]

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

def gemm_peak_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GF/s of an ``n x n`` matmul: the efficiency denominator of docs/performance.md."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        best = min(best, _time_once(lambda: None, lambda: torch.mm(a, b), device))
    return 2.0 * n**3 / best / 1e9

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
    #: CPU bfloat16 cells: rnnfast in float32 on the same values, timed interleaved with the
    #: other two, and rnnfast's bfloat16 time over it (the bar on CPUs without bfloat16
    #: hardware: docs/performance.md).
    fast_f32_s: Optional[float] = None
    fast_f32_min_s: Optional[float] = None
    fast_f32_median_s: Optional[float] = None
    fast_f32_samples_s: List[float] = field(default_factory=list)
    bf16_over_f32: Optional[float] = None

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
        res.status, res.message = "FAILED", first_lines(str(e), 4) or "mismatch"
        return res
    except Exception as e:  # noqa: BLE001
        res.status, res.message = "FAILED", f"{type(e).__name__}: {first_lines(str(e), 3)}"
        return res
    # A CPU bfloat16 cell also times rnnfast in float32 on the same values (a float32 copy of
    # the layer and input), interleaved with the other two.
    own_f32 = device == "cpu" and dtype == torch.bfloat16
    try:
        runners = [make_runner(ref, x, mode), make_runner(fast, x, mode)]
        if own_f32:
            fast32 = copy.deepcopy(fast).float()
            x32 = x.detach().float().requires_grad_(x.requires_grad)
            runners.append(make_runner(fast32, x32, mode))
        samples = time_interleaved(runners, device, warmup, repeats, min_time)
        if device == "cuda":
            res.torch_peak_bytes = measure_peak_memory(*runners[0], device)
            res.fast_peak_bytes = measure_peak_memory(*runners[1], device)
    except Exception as e:  # noqa: BLE001
        res.status, res.message = "ERROR", f"timing: {type(e).__name__}: {first_lines(str(e), 3)}"
        return res
    ts, fs = samples[0], samples[1]
    if own_f32:
        f32 = samples[2]
        res.fast_f32_samples_s = f32
        res.fast_f32_min_s, res.fast_f32_median_s = min(f32), statistics.median(f32)
        res.fast_f32_s = res.fast_f32_min_s if res.stat == "min" else res.fast_f32_median_s
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
    if res.fast_f32_s:
        res.bf16_over_f32 = res.fast_s / res.fast_f32_s
    return res


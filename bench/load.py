"""``--under-load``: each cell timed alone and beside one busy process, torch.nn and rnnfast.

A step loop split across threads meets them at a barrier every step; when another process
competes for the cores (a DataLoader worker, a second server) one descheduled thread stalls
the others. This run measures what that costs each implementation: for every cell, the
*median* time per call alone, then with one process spinning on the CPU beside it (started
for the cell and killed after it), both implementations interleaved in each phase, and the
slowdown ``beside / alone`` of each. rnnfast's slowdown should be no worse than torch.nn's.
The median, not the minimum, because under load the typical call is what a user waits for.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .check import check_correctness, make_pair
from .grid import LayerSpec, Shape
from .timing import make_runner, time_interleaved
from .util import first_lines, markdown_table

__all__ = ["LoadResult", "BUSY_CODE", "LOAD_SHAPES", "measure_under_load", "format_load_table", "load_summary"]

#: The grid shapes an --under-load run measures unless --shapes says otherwise: the ones whose
#: steps are short against a scheduler time slice.
LOAD_SHAPES = ("S", "M", "B1", "B4")

#: What the busy process runs: one thread spinning in the interpreter.
BUSY_CODE = "while True: pass"


@dataclass
class LoadResult:
    """One cell alone and beside a busy process; times are medians in seconds."""

    layer: str
    mode: str
    shape: str
    T: int
    B: int
    H: int
    status: str = "ok"
    message: str = ""
    torch_alone_s: Optional[float] = None
    fast_alone_s: Optional[float] = None
    torch_loaded_s: Optional[float] = None
    fast_loaded_s: Optional[float] = None
    rnnfast_load: Dict[str, Any] = field(default_factory=dict)

    @property
    def torch_slowdown(self) -> Optional[float]:
        if self.torch_alone_s and self.torch_loaded_s:
            return self.torch_loaded_s / self.torch_alone_s
        return None

    @property
    def fast_slowdown(self) -> Optional[float]:
        if self.fast_alone_s and self.fast_loaded_s:
            return self.fast_loaded_s / self.fast_alone_s
        return None

    @property
    def ok(self) -> Optional[bool]:
        """rnnfast's slowdown no worse than torch.nn's (None when not measured)."""
        if self.torch_slowdown is None or self.fast_slowdown is None:
            return None
        return self.fast_slowdown <= self.torch_slowdown

    @property
    def label(self) -> str:
        return f"{self.layer} {self.shape} {self.mode}"


def _step_loop_load() -> Dict[str, Any]:
    from rnnfast import _C

    return dict(_C._step_loop_load()) if hasattr(_C, "_step_loop_load") else {}


def _reset_step_loop_load() -> None:
    from rnnfast import _C

    if hasattr(_C, "_reset_step_loop_load"):
        _C._reset_step_loop_load()


def _medians(runners, warmup: int, repeats: int, min_time: float) -> List[float]:
    samples = time_interleaved(runners, "cpu", warmup, repeats, min_time, max_wall=3.0 * max(1.0, min_time))
    return [statistics.median(s) for s in samples]


def measure_under_load(
    specs: Sequence[LayerSpec],
    modes: Sequence[str],
    shapes: Sequence[Shape],
    seed: int = 0,
    warmup: int = 2,
    repeats: int = 7,
    min_time: float = 1.0,
    log: Callable[[str], None] = print,
) -> List[LoadResult]:
    """Every (layer, mode, shape) cell, float32, checked against torch.nn, then timed alone
    and beside one busy process (``BUSY_CODE``)."""
    cells = [(spec, mode, shape) for spec in specs for mode in modes for shape in shapes]
    out: List[LoadResult] = []
    t_start = time.perf_counter()
    for i, (spec, mode, shape) in enumerate(cells, 1):
        r = LoadResult(layer=spec.name, mode=mode, shape=shape.name, T=shape.T, B=shape.B, H=shape.H)
        try:
            ref, fast, x = make_pair(spec, shape, mode, "cpu", torch.float32, seed)
            check_correctness(spec, ref, fast, x, mode)
        except AssertionError as e:
            r.status, r.message = "FAILED", first_lines(str(e), 4) or "mismatch"
        except Exception as e:  # noqa: BLE001 - report, do not crash the whole run
            r.status, r.message = "ERROR", f"{type(e).__name__}: {first_lines(str(e), 3)}"
        if r.status == "ok":
            runners = [make_runner(ref, x, mode), make_runner(fast, x, mode)]
            _reset_step_loop_load()
            r.torch_alone_s, r.fast_alone_s = _medians(runners, warmup, repeats, min_time)
            busy = subprocess.Popen([sys.executable, "-c", BUSY_CODE])
            try:
                time.sleep(0.2)  # let it start spinning
                _reset_step_loop_load()
                r.torch_loaded_s, r.fast_loaded_s = _medians(runners, warmup, repeats, min_time)
                r.rnnfast_load = _step_loop_load()
            finally:
                busy.kill()
                busy.wait()
            _reset_step_loop_load()
            detail = (f"alone torch {r.torch_alone_s * 1e3:.2f} ms, rnnfast {r.fast_alone_s * 1e3:.2f} ms; "
                      f"beside a busy process x{r.torch_slowdown:.2f} and x{r.fast_slowdown:.2f}")
        else:
            detail = f"{r.status}: {r.message}"
        out.append(r)
        log(f"[{i}/{len(cells)}] {r.label} ... {detail}  [{time.perf_counter() - t_start:.1f}s]")
    return out


def format_load_table(results: Sequence[LoadResult]) -> str:
    """Markdown table: medians alone and beside a busy process, the slowdowns."""
    head = ["layer", "mode", "shape", "T×B×H", "torch alone ms", "torch loaded ms", "torch slowdown",
            "rnnfast alone ms", "rnnfast loaded ms", "rnnfast slowdown", "rnnfast one-thread loops",
            "no worse"]
    rows = [head]
    for r in results:
        dims = f"{r.T}×{r.B}×{r.H}"
        if r.status != "ok":
            rows.append([r.layer, r.mode, r.shape, dims, r.status, "", "", "", "", "", "", r.message])
            continue
        ld = r.rnnfast_load
        loops = (f"{ld.get('single_loops', 0)} of {ld.get('single_loops', 0) + ld.get('split_loops', 0)}"
                 if ld else "n/a")
        rows.append([r.layer, r.mode, r.shape, dims,
                     f"{r.torch_alone_s * 1e3:.2f}", f"{r.torch_loaded_s * 1e3:.2f}", f"{r.torch_slowdown:.2f}",
                     f"{r.fast_alone_s * 1e3:.2f}", f"{r.fast_loaded_s * 1e3:.2f}", f"{r.fast_slowdown:.2f}",
                     loops, "yes" if r.ok else "NO"])
    return markdown_table(rows, right=range(4, 10))


def load_summary(results: Sequence[LoadResult]) -> str:
    done = [r for r in results if r.ok is not None]
    good = [r for r in done if r.ok]
    return (f"rnnfast's slowdown beside a busy process no worse than torch.nn's in {len(good)} of "
            f"{len(done)} cells" + (f"; {len(results) - len(done)} not measured" if len(done) < len(results) else ""))

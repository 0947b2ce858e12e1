"""The command line: ``python -m bench`` (run from the repository root).

For every (layer, mode, shape, dtype) cell it builds a ``torch.nn`` layer and the rnnfast
layer with identical weights (``load_state_dict``), checks rnnfast's output, final states and
(in train mode) every gradient against torch.nn *before* timing anything, then times both
interleaved (torch, rnnfast, torch, rnnfast, ...) after a warm-up, and reports
``speedup = torch time / rnnfast time``. A cell whose check fails is reported as FAILED and
not timed; the exit status is then 1. ``infer`` is a forward under ``torch.no_grad()``;
``train`` is forward + ``out.sum().backward()`` with an input that requires grad; gradients
are reset (set to ``None``) before every run, outside the timed region, identically for both.

GF/s follows docs/performance.md: one layer's forward is ``2*T*B*G*H*(I+H)`` FLOPs (G = 4 LSTM, 3 GRU,
1 RNN), forward + backward counts three times that. The table marks every cell of the docs/performance.md
grid against its CPU speedup target.

Progress goes to stderr, one line per cell; the report to stdout and into a results directory
(see :mod:`bench.report`): ``docs/results/`` for a full-grid CPU run, ``bench_results/`` (or
``--out DIR``) for any other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import report
from .grid import (DTYPES, LAYERS, MODES, LayerSpec, Shape, dtype_name, import_rnnfast, is_full_grid,
                   resolve_layers, resolve_shapes, rnnfast_class)
from .load import LOAD_SHAPES, format_load_table, load_summary, measure_under_load
from .machine import format_machine, load_average, machine_info
from .memory import _MEMORY_ENV_DEFAULTS, MemoryResult, child_main, measure_memory
from .plot import plot_results
from .timing import CellResult, gemm_peak_gflops, run_cell, set_tf32
from .util import log

__all__ = ["build_parser", "Plan", "plan_run", "main"]

_EPILOG = """\
where results go:
  A full-grid CPU run (the default: every layer, both modes, S,M,L,XL,B1,B4, float32) writes
  docs/results/cpu-<vendor>-<kernelset>.md (header with commit, date, CPU, ISA flags, kernel set, torch,
  threads and this command line; the speedup grid; every cell) and docs/results/cpu-<vendor>-<kernelset>.png;
  the same grid with --dtypes bfloat16 writes docs/results/cpu-<vendor>-<kernelset>-bfloat16.md/.png
  (its cells also time rnnfast in float32 on the same values: the bf16/f32 table);
  with --memory, docs/results/memory-cpu-<vendor>-<kernelset>.md; with --under-load over its default shapes
  (every layer and mode), docs/results/load-cpu-<vendor>-<kernelset>.md; with --onnx (every layer, both
  exporters, default sizes and --min-time), docs/results/onnx-cpu-<vendor>-<kernelset>.md. <vendor> is amd or intel and
  <kernelset> is rnnfast's CPU kernel set
  (rnnfast.build_info()["cpu_kernels"], e.g. avx2, avx512; avx512-amx where the bfloat16 layers run on AMX tiles, avx512-bf16 on AVX512-BF16 dot products). Any other run (a subset of
  --layers/--modes/--shapes/--dtypes, --quick, --device cuda, --memory-repeat > 1, a layer rnnfast
  lacks) writes the same files to bench_results/ instead, so it never overwrites docs/results.
  --out DIR writes them to DIR; --no-docs keeps even a full run out of docs/results.
"""


def _csv(s: str) -> List[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m bench`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark rnnfast's layers against torch.nn side by side (method: docs/performance.md):\n"
                    "correctness first, then interleaved timing, speedup = torch time / rnnfast time.\n"
                    "Progress goes to stderr (one line per cell), the report to stdout and to the\n"
                    "results files (see 'where results go' below).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--layers", type=_csv, default=None,
                   help="comma list of " + ",".join(s.key for s in LAYERS)
                        + " (default: every layer rnnfast provides; the others are skipped with a message)")
    p.add_argument("--modes", type=_csv, default=list(MODES), help="comma list of infer,train (default: both)")
    p.add_argument("--shapes", type=_csv, default=None,
                   help="comma list of S,M,L,XL,B1,B4 (benchmark grid), 'grid', 'small-batch' "
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
                   help="scaled-down grid and fewer runs, for smoke tests and CI (no targets judged; "
                        "results go to bench_results/)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default) or cuda: CUDA events, median, peak memory, against cuDNN "
                        "(results go to bench_results/cuda-<gpu>.md)")
    p.add_argument("--dtypes", type=_csv, default=None,
                   help="comma list of float32,float16,bfloat16 (default: float32 on the CPU, all three "
                        "on CUDA; targets are for float32 on the CPU)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: allow TF32 in cuDNN and cuBLAS (default off, so float32 is compared as float32)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write the results (.md and .png) to DIR (default: docs/results for a full-grid "
                        "CPU run, else bench_results)")
    p.add_argument("--no-docs", action="store_true",
                   help="never write to docs/results: a full-grid run goes to bench_results/ too")
    p.add_argument("--json", metavar="PATH", default=None, help="also write all results (with samples) as JSON")
    p.add_argument("--plot", metavar="PATH", default=None,
                   help="where to write the PNG of speedup per shape (default: <results dir>/<name>.png, "
                        "beside the .md)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--gemm-peak", dest="gemm_peak", action="store_true", default=None,
                   help="measure the GEMM peak and report rnnfast's efficiency (default on, off with --quick)")
    p.add_argument("--no-gemm-peak", dest="gemm_peak", action="store_false", help="do not measure the GEMM peak")
    p.add_argument("--strict", action="store_true", help="exit 2 when a target is not met")
    p.add_argument("--memory", action="store_true",
                   help="instead of timing: CPU peak memory of one training step (forward + backward, "
                        "float32), torch.nn vs rnnfast, each in a fresh subprocess (see the method in "
                        "bench/memory.py); honours --layers, --shapes, --quick, --threads, --seed, --json, "
                        "--out, --no-docs; with --strict exits 2 where rnnfast uses more than torch.nn")
    p.add_argument("--memory-repeat", type=int, default=1, metavar="N",
                   help="with --memory: measure every cell N times (repeatability check; default 1)")
    p.add_argument("--under-load", dest="under_load", action="store_true",
                   help="instead of the timing run: the median time of each cell alone and beside one busy "
                        "process, torch.nn and rnnfast, float32, and each one's slowdown (bench/load.py); "
                        "shapes S,M,B1,B4 unless --shapes; honours --layers, --modes, --threads, --seed, "
                        "--json, --out, --no-docs")
    p.add_argument("--onnx", action="store_true",
                   help="instead of the timing run: a small model (Linear -> 2-layer layer -> Linear; T=50, B=8, "
                        "I=32, H=64) exported to ONNX from torch.nn and from rnnfast, each export checked in ONNX "
                        "Runtime against torch.nn's eager output, then both timed in ONNX Runtime (median, "
                        "intra_op_num_threads = --threads) (bench/onnx_speed.py); honours --layers, --exporters, "
                        "--quick, --min-time, --threads, --seed, --json, --out, --no-docs")
    p.add_argument("--exporters", type=_csv, default=None,
                   help="with --onnx: comma list of legacy (dynamo=False), dynamo (dynamo=True) (default: both)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    return p


class UsageError(ValueError):
    """A bad command-line value (exit status 64)."""


@dataclass
class Plan:
    """What a run measures and where its results go (decided before anything runs)."""

    specs: List[LayerSpec]
    modes: List[str]
    shapes: List[Shape]
    dtypes: List[torch.dtype]
    full_grid: bool
    out_dir: Path
    to_docs: bool


def plan_run(args: argparse.Namespace) -> Plan:
    """Resolve layers, modes, shapes and dtypes, and pick the results directory.

    Layers rnnfast does not provide are dropped with a message. Raises :class:`UsageError` for
    unknown names, and whatever ``import rnnfast`` raises when it cannot be imported.
    """
    memory = bool(args.memory)
    device = "cpu" if memory else args.device
    modes = ["train"] if memory else list(args.modes)
    for m in modes:
        if m not in MODES:
            raise UsageError(f"unknown mode {m!r}; use {','.join(MODES)}")
    if memory:
        dtype_names = args.dtypes or ["float32"]
        if len(dtype_names) != 1 or dtype_names[0] not in ("float32", "bfloat16"):
            raise UsageError("--memory measures one dtype: --dtypes float32 (default) or bfloat16")
    else:
        dtype_names = args.dtypes or (["float32", "float16", "bfloat16"] if device == "cuda" else ["float32"])
    bad = [d for d in dtype_names if d not in DTYPES]
    if bad:
        raise UsageError(f"unknown dtype {bad[0]!r}; use {','.join(DTYPES)}")
    try:
        specs = resolve_layers(args.layers)
        shapes = resolve_shapes(args.shapes, quick=args.quick, device=device)
    except (KeyError, ValueError) as e:
        raise UsageError(e.args[0] if e.args else str(e)) from e
    import_rnnfast()
    runnable: List[LayerSpec] = []
    for spec in specs:
        if rnnfast_class(spec) is None:
            log(f"skipping {spec.name}: rnnfast.{spec.name} does not exist yet")
        else:
            runnable.append(spec)
    dtypes = [DTYPES[d] for d in dtype_names]
    full = is_full_grid(runnable, MODES if memory else modes, shapes, dtypes, device)
    if memory:
        full = full and args.memory_repeat <= 1 and args.device == "cpu"
    out_dir = report.output_dir(args.out, full and not args.no_docs)
    return Plan(runnable, modes, shapes, dtypes, full, out_dir,
                to_docs=out_dir.resolve() == report.DOCS_RESULTS.resolve())


def _where(plan: Plan, args: argparse.Namespace) -> str:
    """One line on where the results go, and why."""
    if args.out:
        why = "--out"
    elif plan.to_docs:
        why = "full-grid CPU run"
    elif plan.full_grid and args.no_docs:
        why = "--no-docs"
    else:
        why = "not a full-grid CPU run, so docs/results is left alone"
    return f"results go to {_show(plan.out_dir)}/ ({why})"


def _show(path: Path) -> str:
    """``path`` relative to the working directory where it is inside it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    except ValueError:
        return str(path)


def _run_kind(plan: Plan, args: argparse.Namespace) -> str:
    if plan.full_grid:
        return "full benchmark grid" + ("" if plan.dtypes == [torch.float32] else ", bfloat16")
    if args.quick:
        return "quick (scaled-down shapes, fewer runs; no targets judged)"
    return (f"partial: layers {','.join(s.key for s in plan.specs)}; modes {','.join(plan.modes)}; "
            f"shapes {','.join(s.name for s in plan.shapes)}")


def _write_json(path: str, payload: Dict[str, Any]) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=str)
    log(f"wrote {path}")


def _plan_or_exit(args: argparse.Namespace, what: str) -> Tuple[Optional[Any], int]:
    """The run's plan, or (None, exit status) after saying why there is nothing to run."""
    try:
        plan = plan_run(args)
    except UsageError as e:
        log(f"error: {e}")
        return None, 64
    except Exception as e:  # noqa: BLE001
        log(f"error: cannot import rnnfast: {type(e).__name__}: {e}")
        return None, 1
    if not plan.specs:
        log(f"nothing to {what}: rnnfast provides none of the requested layers")
        return None, 1
    return plan, 0


def _memory_main(args: argparse.Namespace, command: str) -> int:
    """``--memory``: the training-step peak-memory comparison only (no timing, no plot)."""
    plan, rc = _plan_or_exit(args, "measure")
    if plan is None:
        return rc
    if args.device != "cpu":
        log("note: --memory measures the CPU (on CUDA the timing run reports peak memory itself)")
    threads = args.threads if args.threads > 0 else 0
    dtype = dtype_name(plan.dtypes[0])
    log(f"peak memory of one training step, {dtype}, {threads or 'default'} threads, one fresh "
        f"subprocess per (layer, implementation, shape); child env "
        + ", ".join(f"{k}={os.environ.get(k, v)}" for k, v in _MEMORY_ENV_DEFAULTS.items()))
    log(_where(plan, args))
    info = machine_info("cpu")
    info["torch_threads"] = threads or torch.get_num_threads()
    info["command"] = command
    info["dtypes"] = [dtype]
    info["run"] = _run_kind(plan, args) + (f"; {args.memory_repeat} repetitions" if args.memory_repeat > 1 else "")
    t0 = time.perf_counter()
    results: List[MemoryResult] = []
    for rep in range(max(1, args.memory_repeat)):
        if args.memory_repeat > 1:
            log(f"-- repetition {rep + 1}/{args.memory_repeat}")
        results += measure_memory(plan.specs, plan.shapes, args.seed, threads, log=log, dtype=dtype)
    bad = [r for r in results if r.status == "ok" and r.ok is False]
    print()
    print(report.memory_caption(results))
    print()
    print(report.format_memory_table(results))
    print()
    print(report.memory_summary(results) + f"; {time.perf_counter() - t0:.0f}s")
    md = report.write_text(plan.out_dir / (report.memory_stem(info) + ".md"),
                           report.format_memory_markdown(results, info))
    log(f"wrote {_show(md)}")
    if args.json:
        _write_json(args.json, {"args": vars(args), "machine": info,
                                "results": [dataclasses.asdict(r) for r in results]})
    if any(r.status != "ok" for r in results):
        return 1
    if args.strict and bad:
        return 2
    return 0


def _load_main(args: argparse.Namespace, command: str) -> int:
    """``--under-load``: each cell alone and beside a busy process (no plot)."""
    if args.shapes is None and not args.quick:
        args.shapes = list(LOAD_SHAPES)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    plan, rc = _plan_or_exit(args, "measure")
    if plan is None:
        return rc
    default = (not args.quick and list(args.shapes) == list(LOAD_SHAPES) and set(plan.modes) == set(MODES)
               and {s.key for s in plan.specs} == {s.key for s in LAYERS})
    out_dir = report.output_dir(args.out, default and not args.no_docs)
    info = machine_info("cpu")
    info["torch_threads"] = torch.get_num_threads()
    info["command"] = command
    info["run"] = "under load: " + _run_kind(plan, args)
    info["load_start"] = load_average()
    log(format_machine(info))
    log(f"results go to {_show(out_dir)}/")
    t0 = time.perf_counter()
    results = measure_under_load(plan.specs, plan.modes, plan.shapes, args.seed,
                                 warmup=1 if args.quick else 2, repeats=3 if args.quick else 7,
                                 min_time=0.05 if args.quick else 1.0, log=log)
    info["load_end"] = load_average()
    table, summary = format_load_table(results), load_summary(results)
    print()
    print(table)
    print()
    print(summary + f"; {time.perf_counter() - t0:.0f}s")
    md = report.write_text(out_dir / (report.load_stem(info) + ".md"),
                           report.format_load_markdown(results, info, table, summary))
    log(f"wrote {_show(md)}")
    if args.json:
        _write_json(args.json, {"args": vars(args), "machine": info,
                                "results": [dataclasses.asdict(r) for r in results]})
    if any(r.status != "ok" for r in results):
        return 1
    if args.strict and any(r.ok is False for r in results):
        return 2
    return 0


def _onnx_main(args: argparse.Namespace, command: str) -> int:
    """``--onnx``: torch.nn's and rnnfast's exports of a small model in ONNX Runtime (no plot)."""
    from . import onnx_speed  # noqa: PLC0415 - needs onnx and onnxruntime, which only this mode uses

    exporters = list(args.exporters or onnx_speed.EXPORTERS)
    bad = [e for e in exporters if e not in onnx_speed.EXPORTERS]
    if bad:
        log(f"error: unknown exporter {bad[0]!r}; use {','.join(onnx_speed.EXPORTERS)}")
        return 64
    try:
        import onnx  # noqa: F401,PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as e:
        log(f"skipping --onnx: {e.name or e} is not installed (pip install onnx onnxscript onnxruntime)")
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    plan, rc = _plan_or_exit(args, "measure")
    if plan is None:
        return rc
    sizes = onnx_speed.QUICK_SIZES if args.quick else onnx_speed.DEFAULT_SIZES
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.75)
    default = (not args.quick and args.min_time is None and set(exporters) == set(onnx_speed.EXPORTERS)
               and {s.key for s in plan.specs} == {s.key for s in LAYERS})
    out_dir = report.output_dir(args.out, default and not args.no_docs)
    info = machine_info("cpu")
    info["torch_threads"] = torch.get_num_threads()
    info["onnxruntime"] = ort.__version__
    info["command"] = command
    info["run"] = (f"ONNX Runtime {ort.__version__}, CPU execution provider, intra_op_num_threads "
                   f"{args.threads if args.threads > 0 else 'default'}; layers "
                   f"{','.join(s.key for s in plan.specs)}; exporters {','.join(exporters)}; "
                   f"T={sizes.T}, B={sizes.B}, I={sizes.I}, H={sizes.H}" + ("; quick" if args.quick else ""))
    info["load_start"] = load_average()
    log(format_machine(info))
    log(f"results go to {_show(out_dir)}/")
    t0 = time.perf_counter()
    results = onnx_speed.measure_onnx(plan.specs, exporters, sizes, threads=args.threads, seed=args.seed,
                                      warmup=args.warmup if args.warmup is not None else (2 if args.quick else 5),
                                      repeats=args.repeats if args.repeats is not None else (3 if args.quick else 20),
                                      min_time=min_time, log=log)
    info["load_end"] = load_average()
    caption = onnx_speed.onnx_caption(sizes, args.threads, ort.__version__)
    table, summary = onnx_speed.format_onnx_table(results), onnx_speed.onnx_summary(results)
    print()
    print(table)
    print()
    print(summary + f"; {time.perf_counter() - t0:.0f}s")
    md = report.write_text(out_dir / (report.onnx_stem(info) + ".md"),
                           report.format_onnx_markdown(info, caption, table, summary))
    log(f"wrote {_show(md)}")
    if args.json:
        _write_json(args.json, {"args": vars(args), "machine": info, "sizes": dataclasses.asdict(sizes),
                                "results": [dataclasses.asdict(r) for r in results]})
    return 1 if any(r.status in ("FAILED", "ERROR") for r in results) else 0


def _progress(i: int, n: int, r: CellResult, elapsed: float) -> str:
    if r.status == "ok":
        tgt = "" if r.target is None else f", target {r.target:.1f}x {'met' if r.target_met else 'NOT met'}"
        own = ("" if r.fast_f32_s is None else
               f", rnnfast float32 {r.fast_f32_s*1e3:.2f} ms: bf16/f32 {r.bf16_over_f32:.2f}")
        detail = (f"{r.speedup:.2f}x (torch {r.torch_s*1e3:.2f} ms, rnnfast {r.fast_s*1e3:.2f} ms{own}, "
                  f"{r.runs} runs{tgt})")
    else:
        detail = f"{r.status}: {r.message}"
    return f"[{i}/{n}] {r.label} ... {detail}  [{elapsed:.1f}s]"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; returns the exit status (0 ok, 1 a cell FAILED/ERROR, 2 --strict miss,
    64 a bad argument)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.memory_child is not None:
        return child_main(args.memory_child)
    command = " ".join(["python -m bench"] + ([shlex.join(argv)] if argv else []))
    if args.memory:
        return _memory_main(args, command)
    if args.under_load:
        return _load_main(args, command)
    if args.onnx:
        return _onnx_main(args, command)
    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (3 if quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    min_time = args.min_time if args.min_time is not None else (0.05 if quick else 1.0)
    do_peak = args.gemm_peak if args.gemm_peak is not None else not quick

    if args.device == "cuda" and not torch.cuda.is_available():
        log("skipping: --device cuda was asked for, but CUDA is not available "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    plan, rc = _plan_or_exit(args, "benchmark")
    if plan is None:
        return rc

    if args.device == "cuda":
        set_tf32(args.tf32)
    info = machine_info(args.device)
    info["torch_threads"] = torch.get_num_threads()
    info["command"] = command
    info["run"] = _run_kind(plan, args)
    info["dtypes"] = [dtype_name(d) for d in plan.dtypes]
    info["load_start"] = load_average()
    if info["load_start"] is not None and info["load_start"] > 0.5:
        log(f"warning: the machine is busy before the benchmark starts (load average "
            f"{info['load_start']:.2f} on {os.cpu_count()} CPUs, over the last minute); absolute "
            "times and even ratios may be noisy")
    if args.device == "cuda":
        info["tf32"] = args.tf32
    peak_n = 4096 if args.device == "cuda" else 2048
    if do_peak:
        info["gemm_peak_dtype"], info["gemm_peak_n"] = "float32", peak_n
        info["gemm_peak_gflops_start"] = gemm_peak_gflops(args.device, torch.float32, peak_n)
        info["gemm_peak_gflops"] = info["gemm_peak_gflops_start"]
    log(format_machine(info))
    log(_where(plan, args))

    cells = [(spec, mode, shape, dt) for spec in plan.specs for mode in plan.modes
             for shape in plan.shapes for dt in plan.dtypes]
    results: List[CellResult] = []
    t_start = time.perf_counter()
    for i, (spec, mode, shape, dt) in enumerate(cells, 1):
        r = run_cell(spec, mode, shape, args.device, dt, warmup, repeats, min_time, args.seed)
        results.append(r)
        log(_progress(i, len(cells), r, time.perf_counter() - t_start))

    if do_peak:
        # Measured again at the end, and the better of the two kept: a peak taken while the
        # shared machine is busy understates it and overstates every efficiency.
        info["gemm_peak_gflops_end"] = gemm_peak_gflops(args.device, torch.float32, peak_n)
        info["gemm_peak_gflops"] = max(info["gemm_peak_gflops_start"], info["gemm_peak_gflops_end"])
    info["load_end"] = load_average()
    cpus = os.cpu_count() or 1
    if args.device == "cpu" and info["load_end"] is not None and info["load_end"] > cpus + 0.5:
        log(f"warning: load average {info['load_end']:.2f} at the end on {cpus} CPUs, of which this "
            f"run accounts for about {min(cpus, info['torch_threads'])}: other work competed for "
            "the CPUs, treat these timings as noisy")
    peak = info.get("gemm_peak_gflops") if args.device == "cpu" else None
    print()
    print(format_machine(info))
    print()
    print(report.format_table(results, peak))
    summary = report.format_summary(results, peak)
    if summary:
        print()
        print(summary)

    stem = report.results_stem(info)
    plot_path: Optional[Path] = None
    if not args.no_plot:
        plot_path = Path(args.plot) if args.plot else plan.out_dir / (stem + ".png")
        title = (f"rnnfast vs torch.nn — {info.get('gpu') or info.get('cpu')}, "
                 f"{info['torch_threads']} threads, torch {info['torch']}" + (" (quick)" if quick else ""))
        if plot_results(results, str(plot_path), title):
            log(f"wrote {_show(plot_path)}")
        else:
            plot_path = None
    md_path = plan.out_dir / (stem + ".md")
    plot_name = None
    if plot_path is not None:
        plot_name = os.path.relpath(plot_path.resolve(), md_path.resolve().parent).replace(os.sep, "/")
    report.write_text(md_path, report.format_results_markdown(results, info, peak, plot_name))
    log(f"wrote {_show(md_path)}")
    if args.json:
        _write_json(args.json, {"machine": info, "args": dict(vars(args)), "quick": quick, "repeats": repeats,
                                "warmup": warmup, "min_time": min_time,
                                "results": [dataclasses.asdict(r) for r in results]})

    if any(r.status != "ok" for r in results):
        return 1
    if args.strict and any(r.target_met is False for r in results):
        return 2
    return 0

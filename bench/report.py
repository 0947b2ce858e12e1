"""The report: per-cell tables, the speedup grid, the summary, and the results files.

A full-grid CPU run writes its results into the repository's ``docs/results/`` (never copied
there by hand): ``cpu-<vendor>-<kernelset>.md`` (header: commit, date, CPU, ISA flags, kernel set, torch,
threads, command line; the speedup grid; every cell) beside the plot ``cpu-<vendor>-<kernelset>.png``,
and ``--memory`` writes ``memory-cpu-<vendor>-<kernelset>.md``. The kernel set (``avx2``, ``avx512``)
is in the name so that the results of both kinds of machine live side by side. Every other run
(partial, ``--quick``, CUDA) writes the same files into ``bench_results/`` or ``--out DIR``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .grid import EFFICIENCY_TARGET, GRID_ORDER, MODES
from .machine import SOURCE_ROOT, format_isa, kernel_set, results_key
from .memory import MemoryResult
from .timing import CellResult
from .util import fmt, markdown_table

__all__ = [
    "DOCS_RESULTS", "SCRATCH_DIR", "output_dir", "results_stem", "memory_stem", "format_table",
    "format_speedup_table", "format_summary", "format_memory_table", "memory_caption", "memory_summary",
    "format_results_markdown", "format_memory_markdown", "load_stem", "format_load_markdown", "onnx_stem",
    "format_onnx_markdown", "write_text", "bf16_hardware", "format_own_float32_table",
]

#: Where a full-grid CPU run writes its results: ``docs/results`` of the source tree.
DOCS_RESULTS = SOURCE_ROOT / "docs" / "results"

#: Where every other run writes them (relative to the working directory; git-ignored).
SCRATCH_DIR = Path("bench_results")


def output_dir(out: Optional[str], docs_run: bool) -> Path:
    """The directory a run writes its report and plot to: ``out`` when given; else
    :data:`DOCS_RESULTS` for a ``docs_run`` (full grid, CPU, not quick, docs not turned off)
    when the source tree has a ``docs/`` directory; else :data:`SCRATCH_DIR`."""
    if out:
        return Path(out)
    if docs_run and DOCS_RESULTS.parent.is_dir():
        return DOCS_RESULTS
    return SCRATCH_DIR


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def results_stem(info: Dict[str, Any]) -> str:
    """File name (without extension) of a timing run's results: ``cpu-<vendor>-<kernelset>`` on the
    CPU (``cpu-<vendor>-<kernelset>-bfloat16`` for a bfloat16-only run), ``cuda-<gpu>`` on CUDA."""
    if info.get("device") == "cuda":
        return "cuda-" + _slug(str(info.get("gpu", "unknown")))
    suffix = "-bfloat16" if info.get("dtypes") == ["bfloat16"] else ""
    return "cpu-" + _slug(results_key(info)) + suffix


def memory_stem(info: Dict[str, Any]) -> str:
    """File name (without extension) of a ``--memory`` run's results: ``memory-cpu-<vendor>-<kernelset>``
    (``memory-cpu-<vendor>-<kernelset>-bfloat16`` for a bfloat16 run)."""
    suffix = "-bfloat16" if info.get("dtypes") == ["bfloat16"] else ""
    return "memory-cpu-" + _slug(results_key(info)) + suffix


def format_table(results: Sequence[CellResult], peak_gflops: Optional[float] = None) -> str:
    """Markdown table: one row per cell, with the target and whether it was met."""
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
            row += [fmt(r.target, ".1f") + ("x" if r.target is not None else ""), r.status]
            rows.append(row)
            continue
        row += [
            fmt(r.torch_s * 1e3 if r.torch_s is not None else None, ".2f"),
            fmt(r.fast_s * 1e3 if r.fast_s is not None else None, ".2f"),
            fmt(r.speedup, ".2f") + "x",
            fmt(r.speedup_median, ".2f") + "x",
            fmt(r.torch_gflops, ".1f"),
            fmt(r.fast_gflops, ".1f"),
        ]
        if peak_gflops:
            row.append(fmt(100.0 * r.fast_gflops / peak_gflops if r.fast_gflops else None, ".0f") + "%")
        if show_mem:
            row += [fmt(r.torch_peak_bytes / 2**20 if r.torch_peak_bytes is not None else None, ".1f"),
                    fmt(r.fast_peak_bytes / 2**20 if r.fast_peak_bytes is not None else None, ".1f")]
        if r.target is None:
            row += ["-", "-"]
        else:
            row += [f"{r.target:.1f}x", "met" if r.target_met else "NOT met"]
        rows.append(row)
    right = {i for i, h in enumerate(head) if any(k in h for k in ("ms", "speedup", "GF/s", "peak", "target"))}
    return markdown_table(rows, right)


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



def format_speedup_table(results: Sequence[CellResult]) -> Tuple[str, str]:
    """The speedup grid: one row per layer × mode (× dtype when there are several), one column
    per shape, speedups with the met targets in bold. Returns ``(table, count line)``, the
    count line being ``N of M targets met`` (a cell with a target that failed counts as not met).
    """
    dtypes = list(dict.fromkeys(r.dtype for r in results))
    shapes = list(dict.fromkeys(r.shape for r in results))
    order = {s: i for i, s in enumerate(GRID_ORDER)}
    shapes.sort(key=lambda s: order.get(s.lstrip("q"), len(order)))
    keys: List[Tuple[str, str, str]] = []
    for r in results:
        if (r.layer, r.mode, r.dtype) not in keys:
            keys.append((r.layer, r.mode, r.dtype))
    mode_rank = {m: i for i, m in enumerate(MODES)}
    layer_rank = {lay: i for i, lay in enumerate(dict.fromkeys(k[0] for k in keys))}
    keys.sort(key=lambda k: (layer_rank[k[0]], mode_rank.get(k[1], len(mode_rank)), dtypes.index(k[2])))
    head = ["layer", "mode"] + (["dtype"] if len(dtypes) > 1 else []) + shapes
    rows = [head]
    for layer, mode, dtype in keys:
        row = [layer, mode] + ([dtype] if len(dtypes) > 1 else [])
        for sh in shapes:
            r = next((c for c in results if (c.layer, c.mode, c.dtype, c.shape) == (layer, mode, dtype, sh)), None)
            if r is None:
                row.append("")
            elif r.status != "ok" or r.speedup is None:
                row.append(r.status)
            else:
                text = f"{r.speedup:.2f}x"
                row.append(f"**{text}**" if r.target_met else text)
        rows.append(row)
    right = set(range(len(head) - len(shapes), len(head)))
    judged = [r for r in results if r.target is not None]
    met = sum(1 for r in judged if r.status == "ok" and r.target_met)
    count = (f"{met} of {len(judged)} targets met" if judged
             else "no targets judged (they apply to the full-size grid on the CPU, float32, and "
                  "bfloat16 on CPUs with AMX-BF16)")
    return markdown_table(rows, right), count


def bf16_hardware(info: Dict[str, Any]) -> Optional[bool]:
    """Whether the CPU has bfloat16 hardware (AVX512-BF16 or AMX-BF16); None where unknown."""
    isa = info.get("isa") or {}
    flags = [isa.get("avx512_bf16"), isa.get("amx_bf16")]
    if any(flags):
        return True
    return None if any(f is None for f in flags) else False


def format_own_float32_table(results: Sequence[CellResult], judged: bool) -> Tuple[str, str]:
    """rnnfast's bfloat16 time over its own float32 time on the same values (CPU bfloat16 cells,
    timed interleaved): one row per layer × mode, one column per shape; with ``judged`` (a CPU
    without bfloat16 hardware, where the target is a ratio of at most 1) the cells that meet it
    in bold. Returns ``(table, count line)``."""
    cells = [r for r in results if r.bf16_over_f32 is not None]
    shapes = list(dict.fromkeys(r.shape for r in cells))
    order = {sh: i for i, sh in enumerate(GRID_ORDER)}
    shapes.sort(key=lambda sh: order.get(sh.lstrip("q"), len(order)))
    keys = list(dict.fromkeys((r.layer, r.mode) for r in cells))
    rows = [["layer", "mode"] + shapes]
    for layer, mode in keys:
        row = [layer, mode]
        for sh in shapes:
            r = next((c for c in cells if (c.layer, c.mode, c.shape) == (layer, mode, sh)), None)
            if r is None:
                row.append("")
                continue
            text = f"{r.bf16_over_f32:.2f}"
            row.append(f"**{text}**" if judged and r.bf16_over_f32 <= 1.0 else text)
        rows.append(row)
    at_most = sum(1 for r in cells if r.bf16_over_f32 <= 1.0)
    count = f"{at_most} of {len(cells)} cells at or below rnnfast's float32 time"
    return markdown_table(rows, set(range(2, 2 + len(shapes)))), count


def format_memory_table(results: Sequence[MemoryResult]) -> str:
    """Markdown table of :func:`bench.memory.measure_memory`'s rows (MiB = 2**20 bytes)."""
    head = ["layer", "shape", "T×B×H", "torch.nn MiB", "rnnfast MiB", "rnnfast/torch", "rnnfast <= torch",
            "torch.nn MiB (warm)", "rnnfast MiB (warm)", "rnnfast/torch (warm)", "<= (warm)"]

    def mib(v: Optional[int]) -> str:
        return fmt(v / 2**20 if v is not None else None, ".1f")

    def mark(v: Optional[bool]) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    rows = [head]
    for r in results:
        row = [r.layer, r.shape, f"{r.T}×{r.B}×{r.H}"]
        if r.status != "ok":
            rows.append(row + [r.status] + ["-"] * (len(head) - 4))
            continue
        row += [mib(r.torch_cold_bytes), mib(r.fast_cold_bytes), fmt(r.ratio, ".2f"), mark(r.ok),
                mib(r.torch_warm_bytes), mib(r.fast_warm_bytes), fmt(r.ratio_warm, ".2f"), mark(r.ok_warm)]
        rows.append(row)
    right = {i for i, h in enumerate(head) if "MiB" in h or "/" in h}
    return markdown_table(rows, right)


def memory_caption(results: Sequence[MemoryResult]) -> str:
    """What the memory table shows, and how it was measured."""
    dtype = results[0].dtype if results else "float32"
    return (f"Peak extra memory of one training step in {dtype}, both implementations (forward + "
            "backward with a fixed upstream gradient), "
            "MiB = 2^20 bytes, above the RSS after setup; cold = first step of a fresh process, "
            f"warm = the second step; method: {results[0].method if results else '-'}")


def memory_summary(results: Sequence[MemoryResult]) -> str:
    """``rnnfast <= torch.nn (cold step) in N/M cells`` and where it is larger."""
    bad = [r for r in results if r.status == "ok" and r.ok is False]
    return (f"rnnfast <= torch.nn (cold step) in {sum(1 for r in results if r.ok)}/{len(results)} cells"
            + (": larger in " + ", ".join(f"{r.layer} {r.shape} (x{r.ratio:.2f})" for r in bad) if bad else ""))


# --------------------------------------------------------------------------------------------
# The results files.
# --------------------------------------------------------------------------------------------


def _header(title: str, info: Dict[str, Any]) -> List[str]:
    """Title and the description of the run: commit, date, machine, build, command line."""
    build = info.get("rnnfast_build")
    threads = info.get("torch_threads")
    lines = [
        f"# {title}",
        "",
        "Written by `python -m bench` from one run (see `bench/README.md`); rerun it to update this "
        "file rather than editing it.",
        "",
        f"- commit: `{info.get('git') or 'unknown'}`",
        f"- date: {info.get('date_utc') or 'unknown'}",
        f"- CPU: {info.get('cpu', 'unknown')} ({info.get('cpu_count')} logical CPUs)",
        f"- ISA: {format_isa(info['isa']) if info.get('isa') else 'unknown'}",
        f"- rnnfast: {info.get('rnnfast', 'unknown')}, CPU kernel set `{kernel_set(info)}`"
        + (f"; build info `{build}`" if build else ""),
        f"- torch: {info.get('torch', 'unknown')} (oneDNN {'on' if info.get('mkldnn') else 'off'}), "
        f"threads: {threads if threads is not None else 'unknown'}; python {info.get('python', '?')}, "
        f"{info.get('platform', '?')}",
    ]
    if "gpu" in info:
        lines.append(f"- GPU: {info['gpu']} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, "
                     f"TF32 {'on' if info.get('tf32') else 'off'})")
    if info.get("load_start") is not None:
        lines.append(f"- load average (1 min): {info['load_start']:.2f} at start"
                     + (f", {info['load_end']:.2f} at end" if info.get("load_end") is not None else ""))
    if info.get("gemm_peak_gflops"):
        lines.append(f"- measured GEMM peak ({info.get('gemm_peak_dtype')}, n={info.get('gemm_peak_n')}): "
                     f"{info['gemm_peak_gflops']:.0f} GF/s")
    if info.get("run"):
        lines.append(f"- run: {info['run']}")
    lines.append(f"- command: `{info.get('command') or 'unknown'}`")
    return lines


def format_results_markdown(results: Sequence[CellResult], info: Dict[str, Any],
                            peak_gflops: Optional[float] = None, plot_name: Optional[str] = None) -> str:
    """The results file of a timing run (``cpu-<vendor>-<kernelset>.md``): header, speedup grid with the
    count of targets met, the plot (``plot_name``, relative to the file), every cell, summary."""
    where = (f"CUDA ({info.get('gpu', 'unknown GPU')})" if info.get("device") == "cuda"
             else f"CPU, `{kernel_set(info)}` kernels")
    stat = results[0].stat if results else "min"
    table, count = format_speedup_table(results)
    judged = any(r.target is not None for r in results)
    dtypes = info.get("dtypes") or []
    title = f"rnnfast vs torch.nn: {where}" + (f", {', '.join(dtypes)}" if dtypes and dtypes != ["float32"] else "")
    out = _header(title, info)
    out += [
        "",
        "## Speedup",
        "",
        f"speedup = torch.nn time / rnnfast time ({stat} of the interleaved runs); **bold**: the "
        "target is met (targets in the table of all cells).",
        "",
        table,
        "",
        f"**{count}.**" if judged else f"{count}.",
    ]
    if plot_name:
        out += ["", f"![speedup per shape]({plot_name})"]
    if any(r.bf16_over_f32 is not None for r in results):
        hardware = bf16_hardware(info)
        own, own_count = format_own_float32_table(results, judged=hardware is False)
        why = ("the target on a CPU without bfloat16 hardware, as this one: at most 1.00, met in "
               "bold" if hardware is False else
               "the target applies to CPUs without bfloat16 hardware; this one has it (or its "
               "flags are unknown), so it is not judged here")
        out += [
            "",
            "## rnnfast bfloat16 against rnnfast float32",
            "",
            f"rnnfast's bfloat16 time / its float32 time on the same values ({stat} of the same "
            f"interleaved runs; {why}).",
            "",
            own,
            "",
            f"{own_count}.",
        ]
    out += ["", "## All cells", "", format_table(results, peak_gflops)]
    summary = format_summary(results, peak_gflops)
    if summary:
        out += [""] + [f"- {ln}" for ln in summary.splitlines()]
    return "\n".join(out) + "\n"


def format_memory_markdown(results: Sequence[MemoryResult], info: Dict[str, Any]) -> str:
    """The results file of a ``--memory`` run (``memory-cpu-<vendor>-<kernelset>.md``)."""
    dtype = " in bfloat16" if info.get("dtypes") == ["bfloat16"] else ""
    out = _header(f"rnnfast vs torch.nn: peak memory of a training step{dtype}, CPU, "
                  f"`{kernel_set(info)}` kernels", info)
    out += ["", memory_caption(results) + ".", "", format_memory_table(results), "",
            memory_summary(results) + "."]
    return "\n".join(out) + "\n"


def load_stem(info: Dict[str, Any]) -> str:
    """File name (without extension) of an ``--under-load`` run's results: ``load-cpu-<vendor>-<kernelset>``."""
    return "load-cpu-" + _slug(results_key(info))


def format_load_markdown(results: Sequence[Any], info: Dict[str, Any], table: str, summary: str) -> str:
    """The results file of an ``--under-load`` run (``load-cpu-<vendor>-<kernelset>.md``)."""
    out = _header(f"rnnfast vs torch.nn beside a busy process, CPU, `{kernel_set(info)}` kernels", info)
    out += ["", "Median time per call alone, then beside one process spinning on a CPU (`python -c "
            "'while True: pass'`), both implementations interleaved in each phase; slowdown = beside / "
            "alone. \"rnnfast one-thread loops\": of rnnfast's step loops beside the busy process, how "
            "many its load monitor ran on one thread (docs/design.md, threads under load).",
            "", table, "", summary + "."]
    return "\n".join(out) + "\n"


def onnx_stem(info: Dict[str, Any]) -> str:
    """File name (without extension) of an ``--onnx`` run's results: ``onnx-cpu-<vendor>-<kernelset>``."""
    return "onnx-cpu-" + _slug(results_key(info))


def format_onnx_markdown(info: Dict[str, Any], caption: str, table: str, summary: str) -> str:
    """The results file of an ``--onnx`` run (``onnx-cpu-<vendor>-<kernelset>.md``)."""
    out = _header(f"rnnfast vs torch.nn exported to ONNX, run in ONNX Runtime, CPU, `{kernel_set(info)}` kernels",
                  info)
    out += ["", caption, "", table, "", summary + "."]
    return "\n".join(out) + "\n"


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its directory."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)

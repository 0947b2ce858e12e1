"""The results files of ``python -m bench`` (bench/report.py, bench/cli.py): the header
(commit, date, CPU, ISA, kernel set, command line) and tables written from fake cells, and
where a run writes them (only a full-grid CPU run goes to docs/results)."""
import pathlib
import re
import sys

import pytest

# The bench package lives at the repository root, beside rnnfast/; appended (not prepended) so
# that rnnfast itself is imported as it would be without it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from bench import cli, grid, machine, report  # noqa: E402
from bench.timing import CellResult  # noqa: E402


def _cell(layer, mode, shape, speedup, target, status="ok"):
    r = CellResult(layer=layer, mode=mode, shape=shape, T=100, B=64, H=256, dtype="float32", device="cpu",
                   status=status, target=target)
    if status == "ok":
        r.torch_s, r.fast_s = 0.01 * speedup, 0.01
        r.torch_min_s, r.fast_min_s, r.torch_median_s, r.fast_median_s = r.torch_s, r.fast_s, r.torch_s, r.fast_s
        r.speedup = r.speedup_median = speedup
        r.target_met = speedup >= target if target is not None else None
    else:
        r.message = "output: mismatch"
    return r


CELLS = [
    _cell("LSTM", "infer", "S", 1.5, 1.2),
    _cell("LSTM", "infer", "M", 0.9, 1.2),
    _cell("LSTM", "train", "S", 1.4, 1.3),
    _cell("GRU", "train", "B1", None, 2.0, status="FAILED"),
]

INFO = {
    "device": "cpu", "cpu": "AMD EPYC 9R14", "cpu_vendor": "amd", "cpu_count": 2, "torch_threads": 2, "torch": "2.13.0+cpu",
    "python": "3.11.7", "platform": "Linux", "mkldnn": True, "git": "abc1234 + uncommitted changes",
    "date_utc": "2026-12-02 06:00 UTC",
    "isa": {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False},
    "rnnfast": "0.1.0", "rnnfast_build": {"cpu_kernels": "avx2"},
    "command": "python -m bench", "run": "full benchmark grid",
}


def test_results_markdown_header_and_tables():
    text = report.format_results_markdown(CELLS, INFO, plot_name="cpu-amd-avx2.png")
    assert text.startswith("# rnnfast vs torch.nn: CPU, `avx2` kernels\n")
    for line in ["- commit: `abc1234 + uncommitted changes`", "- date: 2026-12-02 06:00 UTC",
                 "- CPU: AMD EPYC 9R14 (2 logical CPUs)",
                 "- ISA: avx2 yes, avx512f no, avx512_bf16 no, amx_bf16 no",
                 "- torch: 2.13.0+cpu (oneDNN on), threads: 2", "- command: `python -m bench`",
                 "![speedup per shape](cpu-amd-avx2.png)"]:
        assert line in text, line
    assert "CPU kernel set `avx2`" in text
    # speedup grid: layer × mode rows, shape columns in grid order, met targets in bold
    assert re.search(r"^\| layer +\| mode +\| +S \| +M \| +B1 \|$", text, re.M), text
    assert re.search(r"^\| LSTM +\| infer +\| +\*\*1\.50x\*\* \| +0\.90x \| +\|$", text, re.M), text
    assert re.search(r"^\| GRU +\| train +\| +\| +\| +FAILED \|$", text, re.M), text
    # the failed cell with a target counts as not met
    assert "**2 of 4 targets met.**" in text
    # the full per-cell table follows
    assert "## All cells" in text and "torch ms (min)" in text and "NOT met" in text
    assert report.results_stem(INFO) == "cpu-amd-avx2"
    assert report.memory_stem(INFO) == "memory-cpu-amd-avx2"
    # without a known vendor the name is the kernel set alone
    assert report.results_stem({k: v for k, v in INFO.items() if k != "cpu_vendor"}) == "cpu-avx2"
    amx = dict(INFO, cpu_vendor="intel", rnnfast_build={"cpu_kernels": "avx512", "bf16_gemm": "amx tiles (step products)"})
    assert report.results_stem(amx) == "cpu-intel-avx512-amx"
    assert report.results_stem(dict(amx, dtypes=["bfloat16"])) == "cpu-intel-avx512-amx-bfloat16"
    assert report.load_stem(amx) == "load-cpu-intel-avx512-amx"
    dot = dict(INFO, rnnfast_build={"cpu_kernels": "avx512",
                                    "bf16_gemm": "avx512_bf16 dot products (step products)"})
    assert report.results_stem(dot) == "cpu-amd-avx512-bf16"
    assert report.results_stem(dict(dot, dtypes=["bfloat16"])) == "cpu-amd-avx512-bf16-bfloat16"
    # an AVX512-BF16 Xeon without AMX is a kind of its own beside the EPYC with the same ISA
    assert report.results_stem(dict(dot, cpu_vendor="intel")) == "cpu-intel-avx512-bf16"


def _bf16_cell(layer, mode, shape, ratio):
    r = _cell(layer, mode, shape, 2.0, None)
    r.dtype = "bfloat16"
    r.fast_f32_s = r.fast_f32_min_s = r.fast_f32_median_s = r.fast_s / ratio
    r.bf16_over_f32 = ratio
    return r


def test_bfloat16_results_have_the_own_float32_table():
    """A bfloat16 run's file has rnnfast's bf16 time over its float32 time per cell, judged
    against 1.00 (bold where met) only on a CPU without bfloat16 hardware."""
    cells = [_bf16_cell("LSTM", "train", "S", 1.07), _bf16_cell("LSTM", "train", "M", 0.82),
             _bf16_cell("GRU", "infer", "S", 1.00)]
    info = dict(INFO, dtypes=["bfloat16"])
    text = report.format_results_markdown(cells, info)
    assert "## rnnfast bfloat16 against rnnfast float32" in text
    assert re.search(r"^\| LSTM +\| train +\| +1\.07 \| +\*\*0\.82\*\* \|$", text, re.M), text
    assert re.search(r"^\| GRU +\| infer +\| +\*\*1\.00\*\* \| +\|$", text, re.M), text
    assert "2 of 3 cells at or below rnnfast's float32 time." in text
    assert "without bfloat16 hardware, as this one" in text
    with_bf16 = dict(info, isa=dict(INFO["isa"], avx512_bf16=True))
    text = report.format_results_markdown(cells, with_bf16)
    assert re.search(r"^\| LSTM +\| train +\| +1\.07 \| +0\.82 \|$", text, re.M), text
    assert "not judged here" in text
    # a float32 run has no such table
    assert "against rnnfast float32" not in report.format_results_markdown(CELLS, INFO)


def test_header_from_this_machine(tmp_path):
    info = machine.machine_info("cpu")
    info["command"] = "python -m bench --quick"
    path = report.write_text(tmp_path / "r" / "cpu.md", report.format_results_markdown(CELLS, info))
    text = path.read_text(encoding="utf-8")
    assert re.search(r"^- commit: `([0-9a-f]{7,}( \+ uncommitted changes)?|unknown)`$", text, re.M), text
    assert re.search(r"^- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.M), text
    assert f"- CPU: {machine.cpu_model()}" in text
    assert re.search(r"^- ISA: avx2 (yes|no|\?), avx512f (yes|no|\?), avx512_bf16 (yes|no|\?), "
                     r"amx_bf16 (yes|no|\?)$", text, re.M), text
    import rnnfast

    assert f"CPU kernel set `{rnnfast.build_info()['cpu_kernels']}`" in text


def test_commit_unknown_outside_git(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "SOURCE_ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert machine.git_state() == "unknown"


def _plan(*argv):
    return cli.plan_run(cli.build_parser().parse_args(list(argv)))


def test_only_a_full_grid_cpu_run_targets_docs(tmp_path):
    docs = report.DOCS_RESULTS.resolve()
    full = _plan()
    assert full.full_grid and full.to_docs and full.out_dir.resolve() == docs
    assert _plan("--layers", "lstm,gru,rnn", "--modes", "train,infer", "--shapes", "grid").to_docs
    assert _plan("--memory").to_docs
    for argv in (["--layers", "lstm"], ["--modes", "infer"], ["--shapes", "S,M,L"], ["--shapes", "all"],
                 ["--quick"], ["--device", "cuda"], ["--dtypes", "float32,float64"], ["--no-docs"],
                 ["--memory", "--quick"], ["--memory", "--layers", "rnn"], ["--memory", "--memory-repeat", "2"]):
        plan = _plan(*argv)
        assert not plan.to_docs, argv
        assert plan.out_dir == report.SCRATCH_DIR, argv
        assert docs not in plan.out_dir.resolve().parents and plan.out_dir.resolve() != docs, argv
    assert _plan("--layers", "lstm", "--out", str(tmp_path)).out_dir == tmp_path


def test_partial_run_writes_to_bench_results(tmp_path, monkeypatch):
    """End to end, one tiny cell: the files land in ./bench_results, docs/results is untouched."""
    pytest.importorskip("matplotlib")
    docs = report.DOCS_RESULTS
    before = sorted((p.name, p.stat().st_mtime_ns) for p in docs.glob("*")) if docs.is_dir() else None
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["--quick", "--layers", "lstm", "--modes", "infer", "--shapes", "S", "--warmup", "0",
                   "--repeats", "1", "--min-time", "0"])
    assert rc == 0
    stem = report.results_stem(machine.machine_info("cpu"))
    md = tmp_path / "bench_results" / f"{stem}.md"
    assert md.is_file() and (tmp_path / "bench_results" / f"{stem}.png").is_file()
    text = md.read_text(encoding="utf-8")
    assert "- command: `python -m bench --quick --layers lstm --modes infer --shapes S" in text
    assert "| LSTM " in text and "qS" in text
    after = sorted((p.name, p.stat().st_mtime_ns) for p in docs.glob("*")) if docs.is_dir() else None
    assert after == before


def test_bfloat16_targets_apply_on_amx_cpus_only():
    import torch
    lstm, gru = grid.get_layer("lstm"), grid.get_layer("gru")
    xl, s = grid.GRID_SHAPES["XL"], grid.GRID_SHAPES["S"]
    assert grid.target_for(lstm, "infer", xl, "cpu", torch.bfloat16, amx=True) == 1.0
    assert grid.target_for(lstm, "train", s, "cpu", torch.bfloat16, amx=True) == 1.3
    assert grid.target_for(gru, "train", xl, "cpu", torch.bfloat16, amx=True) == 1.3
    assert grid.target_for(gru, "infer", s, "cpu", torch.bfloat16, amx=True) == 2.0
    assert grid.target_for(lstm, "infer", xl, "cpu", torch.bfloat16, amx=False) is None
    assert grid.target_for(lstm, "infer", grid.QUICK_SHAPES["XL"], "cpu", torch.bfloat16, amx=True) is None
    assert grid.target_for(lstm, "infer", xl, "cuda", torch.bfloat16, amx=True) is None
    assert grid.target_for(lstm, "infer", xl, "cpu", torch.float32) == 1.0

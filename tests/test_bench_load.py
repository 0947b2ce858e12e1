"""bench/load.py (``python -m bench --under-load``): slowdowns, the verdict and the table."""
from __future__ import annotations

import pathlib
import sys

# The bench package lives at the repository root, beside rnnfast/; appended (not prepended) so
# that rnnfast itself is imported as it would be without it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from bench import load, report  # noqa: E402


def test_slowdowns_and_verdict():
    r = load.LoadResult("LSTM", "infer", "M", 100, 64, 256, torch_alone_s=0.010, torch_loaded_s=0.030,
                        fast_alone_s=0.008, fast_loaded_s=0.016,
                        rnnfast_load={"split_loops": 2, "single_loops": 18})
    assert abs(r.torch_slowdown - 3.0) < 1e-12 and abs(r.fast_slowdown - 2.0) < 1e-12
    assert r.ok is True
    worse = load.LoadResult("GRU", "train", "S", 200, 16, 128, torch_alone_s=0.010, torch_loaded_s=0.015,
                            fast_alone_s=0.010, fast_loaded_s=0.020)
    assert worse.ok is False
    missing = load.LoadResult("RNN", "infer", "B1", 100, 1, 256, status="FAILED", message="mismatch")
    assert missing.ok is None and missing.fast_slowdown is None
    table = load.format_load_table([r, worse, missing])
    assert "18 of 20" in table and "| yes" in table and "| NO" in table and "FAILED" in table
    assert load.load_summary([r, worse, missing]) == (
        "rnnfast's slowdown beside a busy process no worse than torch.nn's in 1 of 2 cells; 1 not measured")
    md = report.format_load_markdown([r], {"isa": None, "rnnfast_build": {"cpu_kernels": "avx2"}}, table, "summary")
    assert md.startswith("# rnnfast vs torch.nn beside a busy process") and table in md

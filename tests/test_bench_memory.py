"""The CPU training-step peak-memory measurement of ``python -m bench --memory`` (bench/memory.py).

Cheap (three fresh child interpreters, run concurrently; one tiny LSTM shape): checks that the
method reports a positive peak for both implementations and that it can *see* memory, i.e. an
extra buffer allocated inside the step shows up in the measurement.
"""
import pathlib
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")

# The bench package lives at the repository root, beside rnnfast/; appended (not prepended) so
# that rnnfast itself is imported as it would be without it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from bench import grid, memory, report  # noqa: E402

SHAPE = grid.Shape("T20B8H64", 20, 8, 64)  # gates buffers ~160 KiB: above the mmap threshold
EXTRA = 32 * 2**20


def test_step_memory_positive_and_sees_an_extra_allocation():
    spec = grid.get_layer("lstm")
    jobs = [("torch", 0), ("rnnfast", 0), ("rnnfast", EXTRA)]
    with ThreadPoolExecutor(len(jobs)) as ex:
        futs = [ex.submit(memory.measure_step_memory, spec, impl, SHAPE, 0, 1, extra, 120.0)
                for impl, extra in jobs]
        t, f, fx = [fu.result() for fu in futs]
    for r in (t, f, fx):
        assert r["cold_bytes"] > 0, r
        if r["method"].startswith("VmHWM"):
            assert r["warm_bytes"] is not None and r["warm_bytes"] > 0, r
    # the extra buffer is filled (torch.ones) and alive across the backward: it must show up,
    # all of it up to page-level noise, and not much more.
    assert fx["cold_bytes"] >= f["cold_bytes"] + 0.9 * EXTRA, (f, fx)
    assert fx["cold_bytes"] <= f["cold_bytes"] + EXTRA + 8 * 2**20, (f, fx)
    if fx["warm_bytes"] is not None:
        assert fx["warm_bytes"] >= f["warm_bytes"] + 0.9 * EXTRA, (f, fx)


def test_step_memory_in_bfloat16():
    """--dtypes bfloat16: both implementations' step in bfloat16 (the child says so), and a
    bfloat16 run's file name carries the dtype."""
    spec = grid.get_layer("gru")
    with ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(memory.measure_step_memory, spec, impl, SHAPE, 0, 1, 0, 120.0, None,
                          "bfloat16") for impl in ("torch", "rnnfast")]
        results = [fu.result() for fu in futs]
    for r in results:
        assert r["dtype"] == "bfloat16" and r["cold_bytes"] > 0, r
    info = {"rnnfast_build": {"cpu_kernels": "avx2", "bf16_gemm": "float32 on up-converted values"},
            "dtypes": ["bfloat16"]}
    assert report.memory_stem(info) == "memory-cpu-avx2-bfloat16"
    assert report.memory_stem(dict(info, dtypes=["float32"])) == "memory-cpu-avx2"


def test_memory_table_formats():
    r = memory.MemoryResult("LSTM", "S", 200, 16, 128, torch_cold_bytes=2**20, fast_cold_bytes=2**19,
                            ratio=0.5, ok=True)
    text = report.format_memory_table([r])
    assert "LSTM" in text and "0.50" in text and "yes" in text

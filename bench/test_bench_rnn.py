"""pytest-benchmark suite: rnnfast vs torch.nn, layer × mode × shape × implementation.

Run explicitly (plain ``pytest`` from the repository root does not collect ``bench/``)::

    pytest bench                                   # full benchmark grid, CPU, float32
    RNNFAST_BENCH_QUICK=1 pytest bench -q          # scaled-down smoke run
    pytest bench -k "lstm and train and M"         # one slice
    pytest bench --benchmark-autosave              # save, then later: --benchmark-compare

Each (layer, mode, shape) is one pytest-benchmark group holding the ``torch`` and the
``rnnfast`` benchmark, so the default ``--benchmark-group-by=group`` lists them side by side;
a speedup summary is printed at the end (``bench/conftest.py``). Before the rnnfast layer is
timed, its output, final states and (train) all gradients are checked against torch.nn with
the same helper as ``python -m bench`` (:func:`bench.check.check_correctness`); a mismatch
fails that test instead of timing it. The torch.nn benchmark is the reference and is
timed regardless.

Environment variables (all optional):

- ``RNNFAST_BENCH_QUICK=1``: scaled-down shapes and fewer rounds (smoke tests, CI).
- ``RNNFAST_BENCH_LAYERS=lstm,gru``: layers (default: all; absent rnnfast layers are skipped).
- ``RNNFAST_BENCH_MODES=infer,train``, ``RNNFAST_BENCH_SHAPES=S,M,...`` (same names as the CLI,
  including ``small-batch`` and ``T100B8H256``).
- ``RNNFAST_BENCH_DEVICE=cuda`` (skips without CUDA; CUDA events, median, peak memory in
  ``extra_info``), ``RNNFAST_BENCH_DTYPES=float32,float16,bfloat16`` (default: float32 on the
  CPU, all three on CUDA), ``RNNFAST_BENCH_TF32=1`` (allow TF32 in cuDNN/cuBLAS; default off).
- ``RNNFAST_BENCH_THREADS=2`` (torch.set_num_threads), ``RNNFAST_BENCH_ROUNDS=N`` (fixed rounds;
  default: enough for about 1 s per benchmark, between 5 and 50; quick: 0.1 s, 3 to 20).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional, Tuple

import pytest
import torch

from bench import check, grid, timing

QUICK = os.environ.get("RNNFAST_BENCH_QUICK", "") not in ("", "0")
DEVICE = os.environ.get("RNNFAST_BENCH_DEVICE", "cpu")
THREADS = int(os.environ.get("RNNFAST_BENCH_THREADS", "2"))
_FIXED_ROUNDS = os.environ.get("RNNFAST_BENCH_ROUNDS")
WARMUP_ROUNDS = 1 if QUICK else 2
ROUND_SECONDS, MIN_ROUNDS, MAX_ROUNDS = (0.1, 3, 20) if QUICK else (1.0, 5, 50)


def _env_list(name: str) -> Optional[list]:
    v = os.environ.get(name, "")
    return [p.strip() for p in v.split(",") if p.strip()] or None


LAYERS = grid.resolve_layers(_env_list("RNNFAST_BENCH_LAYERS"))
MODES = _env_list("RNNFAST_BENCH_MODES") or list(grid.MODES)
SHAPES = grid.resolve_shapes(_env_list("RNNFAST_BENCH_SHAPES"), quick=QUICK, device=DEVICE)
_DEFAULT_DTYPES = ["float32", "float16", "bfloat16"] if DEVICE == "cuda" else ["float32"]
DTYPES = [getattr(torch, d) for d in (_env_list("RNNFAST_BENCH_DTYPES") or _DEFAULT_DTYPES)]
TF32 = os.environ.get("RNNFAST_BENCH_TF32", "") not in ("", "0")
IMPLS = ("torch", "rnnfast")


@functools.lru_cache(maxsize=1)
def _cell(layer_key: str, mode: str, shape: grid.Shape, dtype: torch.dtype) -> Tuple[Any, Any, Any, Optional[str]]:
    """Build the (torch.nn, rnnfast, input) triple for a cell and check it once.

    Cached for one cell, so the torch and rnnfast benchmarks of a group (adjacent in the
    parametrisation order) share layers and the correctness check. Returns the check's
    failure message, or None when rnnfast matches torch.nn.
    """
    spec = grid.get_layer(layer_key)
    ref, fast, x = check.make_pair(spec, shape, mode, DEVICE, dtype)
    try:
        check.check_correctness(spec, ref, fast, x, mode)
        error = None
    except AssertionError as e:
        error = f"rnnfast {spec.name} {mode} {shape.name} differs from torch.nn: {e}"
    except Exception as e:  # noqa: BLE001 - rnnfast raising is a failure of the check too
        error = f"rnnfast {spec.name} {mode} {shape.name} raised {type(e).__name__}: {e}"
    return ref, fast, x, error


@pytest.fixture(scope="session", autouse=True)
def _torch_settings() -> None:
    if THREADS > 0:
        torch.set_num_threads(THREADS)
    if DEVICE == "cuda" and torch.cuda.is_available():
        timing.set_tf32(TF32)


def _warm_up_and_pick_rounds(run, prepare) -> int:
    """Warm up (adaptively, as the CLI does), then pick the number of timed rounds.

    Fixed rounds from RNNFAST_BENCH_ROUNDS, otherwise enough for about ROUND_SECONDS,
    between MIN_ROUNDS and MAX_ROUNDS.
    """
    dt = min(timing.time_interleaved([(prepare, run)], DEVICE, warmup=WARMUP_ROUNDS, repeats=1)[0])
    if _FIXED_ROUNDS:
        return max(1, int(_FIXED_ROUNDS))
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, ROUND_SECONDS / max(dt, 1e-6))))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=grid.dtype_name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda s: s.key)
def test_rnn(request: pytest.FixtureRequest, bench_record: Any, layer: grid.LayerSpec, mode: str, shape: grid.Shape,
             dtype: torch.dtype, impl: str) -> None:
    """Time one implementation of one cell (after checking rnnfast against torch.nn)."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("RNNFAST_BENCH_DEVICE=cuda but CUDA is not available")
    if grid.rnnfast_class(layer) is None:
        pytest.skip(f"rnnfast.{layer.name} does not exist yet")
    group = f"{layer.name} {mode} {shape.name}" + ("" if dtype == torch.float32 else f" {grid.dtype_name(dtype)}")
    tgt = grid.target_for(layer, mode, shape, DEVICE, dtype)
    ref, fast, x, error = _cell(layer.key, mode, shape, dtype)
    if impl == "rnnfast" and error is not None:
        bench_record(group=group, impl=impl, seconds=None, target=tgt, failed=True)
        pytest.fail(error, pytrace=False)
    # Requested only now, so that skipped and failed cells do not leave an unused fixture
    # (pytest-benchmark warns about those).
    benchmark = request.getfixturevalue("benchmark")
    module = ref if impl == "torch" else fast
    prepare, run = timing.make_runner(module, x, mode)
    if DEVICE == "cuda":
        def target() -> None:
            run()
            torch.cuda.synchronize()

        def setup() -> None:
            prepare()
            torch.cuda.synchronize()
    else:
        target, setup = run, prepare

    benchmark.group = group
    flop = grid.flops(layer, shape, mode)
    benchmark.extra_info.update(
        impl=impl, layer=layer.name, mode=mode, shape=shape.name, T=shape.T, B=shape.B, H=shape.H,
        dtype=grid.dtype_name(dtype), device=DEVICE, flops=flop, target_speedup=tgt,
        threads=torch.get_num_threads(),
    )
    rounds = _warm_up_and_pick_rounds(target, setup)
    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)

    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable
        return
    seconds = stats.median if DEVICE == "cuda" else stats.min
    benchmark.extra_info["gflops_per_s"] = flop / seconds / 1e9
    if DEVICE == "cuda":
        # docs/performance.md's GPU method: CUDA events, median, and peak memory of one call.
        ev = timing.time_interleaved([(prepare, run)], "cuda", warmup=0, repeats=max(5, min(rounds, 20)))[0]
        benchmark.extra_info["cuda_event_median_s"] = sorted(ev)[len(ev) // 2]
        benchmark.extra_info["peak_bytes"] = timing.measure_peak_memory(prepare, run, "cuda")
        seconds = benchmark.extra_info["cuda_event_median_s"]
    bench_record(group=group, impl=impl, seconds=seconds, target=tgt,
                 stat="median (CUDA events)" if DEVICE == "cuda" else "min")

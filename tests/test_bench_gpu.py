"""The GPU benchmark script (bench/gpu.py) and the GPU time model (bench/gpu_model.py), run
without a GPU: the benchmark through the SIMT emulator (its times mean nothing, its
correctness checks and table do), the model from the kernels' plans."""
from __future__ import annotations

import pytest
import torch

from bench import gpu, gpu_model
from rnnfast.testing import emulated_device


def test_gpu_bench_runs_emulated(tmp_path, capsys):
    rc = gpu.main(["--emulate", "--layers", "gru", "--modes", "train", "--dtypes", "float32",
                   "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "gpu-emulated.md").read_text()
    assert "EMULATED" in text and "NOT GPU times" in text
    rows = [line for line in text.splitlines() if line.startswith("| GRU")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(c) > 0 for c in cells[4:7]), row  # cuDNN stand-in, standard, persistent


def test_gpu_bench_names_a_refusal(tmp_path):
    """Where the persistent kernels cannot hold the shape, the column says why, and the
    other two are still timed."""
    with emulated_device(sm_count=1, smem_per_block_optin=2048):
        rc = gpu.main(["--emulate", "--layers", "rnn", "--modes", "infer", "--dtypes",
                       "float32", "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "gpu-emulated.md").read_text()
    assert "n/a: each block of the forward kernel needs" in text


def test_gpu_bench_skips_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu.main(["--out", str(tmp_path)]) == 0
    assert "skipping: no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_gpu_model_is_labelled_and_follows_the_plan(tmp_path):
    out = tmp_path / "model.md"
    assert gpu_model.main(["--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# MODEL, not a measurement")
    assert "**assumed**" in text and "## H200 SXM: RNN, bfloat16" in text
    # A shape whose block slice cannot fit is marked, not modelled.
    assert "(does not fit)" in text

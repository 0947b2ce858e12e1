"""rnnfast on a real GPU against torch.nn (cuDNN): every option, every dtype.

These tests need a CUDA device and an rnnfast built with CUDA; without them they
skip (the CUDA kernels are still checked on every machine by test_cuda_emulated.py,
which runs the same sources in the SIMT emulator).
"""
from __future__ import annotations

import itertools

import pytest
import torch

import rnnfast

from conftest import make_lengths, run_rnn

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and rnnfast.build_info()["cuda"]),
    reason="needs a CUDA device and rnnfast built with CUDA (FORCE_CUDA=1)")

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Against cuDNN in the same dtype both sides round: float32 has TF32 disabled below, so
#: a few ulp of float32 through the GEMMs; the half types round every GEMM output
#: (u = 4.9e-4 float16, 3.9e-3 bfloat16), ~20 u through a few layers and steps.
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-3),
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=8e-2, rtol=8e-2),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


OPTIONS = [
    dict(num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    for L, bi, bf, bias in itertools.product((1, 2), (False, True), (False, True), (True, False))
]
FORMS = ("batched", "unbatched", "packed_sorted", "packed_unsorted")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}{int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", ["LSTM", "LSTM_proj", "GRU", "RNN_tanh", "RNN_relu"])
def test_layers_vs_cudnn(kind, dtype, options, form):
    name, _, extra = kind.partition("_")
    kwargs = dict(options)
    if extra == "proj":
        kwargs["proj_size"] = 5
    elif extra:
        kwargs["nonlinearity"] = extra
    T, B, I, H = 7, 3, 11, 33
    ref = getattr(torch.nn, name)(I, H, device="cuda", dtype=dtype, **kwargs)
    fast = getattr(rnnfast, name)(I, H, device="cuda", dtype=dtype, **kwargs)
    fast.load_state_dict(ref.state_dict())
    bf = kwargs["batch_first"]
    if form == "unbatched":
        x = torch.randn(T, I, device="cuda", dtype=dtype)
    else:
        x = torch.randn(*((B, T, I) if bf else (T, B, I)), device="cuda", dtype=dtype)
    lengths = make_lengths(B, T, sort=form == "packed_sorted") if form.startswith("packed") else None
    got, grads = run_rnn(fast, x, None, form, bf, lengths)
    want, _ = run_rnn(ref, x, None, form, bf, lengths, grads=grads)
    for key in want:
        if key in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            continue
        torch.testing.assert_close(got[key], want[key], **TOL[dtype],
                                   msg=lambda m, k=key: f"{kind} {k}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_vs_torch(cell, dtype):
    ref = getattr(torch.nn, cell)(11, 33, device="cuda", dtype=dtype)
    fast = getattr(rnnfast, cell)(11, 33, device="cuda", dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 11, device="cuda", dtype=dtype)
    got, want = fast(x), ref(x)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[dtype])


def test_current_stream_is_used():
    """Work is queued on the caller's current stream (no private streams)."""
    m = rnnfast.LSTM(16, 32, device="cuda")
    x = torch.randn(9, 4, 16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out, _ = m(x)
    s.synchronize()
    ref, _ = m(x)
    torch.testing.assert_close(out, ref)

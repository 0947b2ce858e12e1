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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", ["LSTM", "LSTM_proj", "GRU"])
def test_option_layers_match_the_cpu(kind, dtype):
    """A two-layer bidirectional layer with layer_norm, zoneout and both dropouts, one
    training step on the GPU and on the CPU from the same module and masks: outputs and
    gradients agree (the masks are drawn on the CPU and handed to the layer functions, since
    CUDA's generator draws other numbers)."""
    from rnnfast import ops, reference
    name, _, extra = kind.partition("_")
    torch.manual_seed(0)
    H, P = 33, (7 if extra == "proj" else 33)
    G = 4 if name == "LSTM" else 3
    x = torch.randn(9, 5, 11, dtype=dtype)
    w_ih = torch.randn(G * H, 11, dtype=dtype) * 0.2
    w_hh = torch.randn(G * H, P, dtype=dtype) * 0.2
    b_ih, b_hh = torch.randn(G * H, dtype=dtype) * 0.1, torch.randn(G * H, dtype=dtype) * 0.1
    w_hr = torch.randn(P, H, dtype=dtype) * 0.2 if extra == "proj" else None
    h0, c0 = torch.randn(5, P, dtype=dtype), torch.randn(5, H, dtype=dtype)
    ln = [torch.rand(G * H, dtype=dtype) + 0.5, torch.rand(G * H, dtype=dtype) + 0.5]
    if name == "LSTM":
        ln += [torch.rand(H, dtype=dtype) + 0.5, torch.randn(H, dtype=dtype) * 0.1]
    masks = reference.draw_masks(G, H, P, 9, 5, weight_dropout=0.2, recurrent_dropout=0.3,
                                 zoneout=0.25, cell_state=name == "LSTM")
    results = []
    for device in ("cpu", "cuda"):
        def on(t):
            return None if t is None else t.to(device).requires_grad_()
        args = [on(t) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)]
        lnp = [on(t) for t in ln]
        m = reference.LayerMasks(*(None if t is None else t.to(device) for t in masks))
        if name == "LSTM":
            outs = ops.lstm_layer(*args, layer_norm=lnp, masks=m, reverse=True)
            leaves = [t for t in args + lnp if t is not None]
        else:
            outs = ops.gru_layer(args[0], args[1], *args[3:7], layer_norm=lnp, masks=m)
            leaves = args[:2] + args[3:7] + lnp
        sum(o.square().sum() for o in outs).backward()
        results.append([o.detach().cpu() for o in outs] + [t.grad.cpu() for t in leaves])
    for a, b in zip(*results):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("algorithm", ["standard", "persistent"])
@pytest.mark.parametrize("B,H", [(1, 7), (4, 64), (8, 300), (40, 33), (3, 1024)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", ["LSTM", "LSTM_proj", "GRU", "RNN_tanh"])
def test_algorithms_vs_cudnn(kind, dtype, B, H, algorithm):
    """Each forward algorithm (rnnfast.cuda_algorithm), forced, against cuDNN: 2 layers,
    bidirectional, packed. Where the persistent kernels cannot hold the shape on this GPU,
    the test checks that the error names the limit, and that "auto" then runs the shape
    (on the standard algorithm) to the same results."""
    name, _, extra = kind.partition("_")
    kwargs = dict(num_layers=2, bidirectional=True)
    if extra == "proj":
        kwargs["proj_size"] = max(1, H // 3)
    elif extra:
        kwargs["nonlinearity"] = extra
    T, I = 9, 16
    ref = getattr(torch.nn, name)(I, H, device="cuda", dtype=dtype, **kwargs)
    fast = getattr(rnnfast, name)(I, H, device="cuda", dtype=dtype, **kwargs)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, device="cuda", dtype=dtype)
    lengths = make_lengths(B, T, sort=False)
    try:
        with rnnfast.cuda_algorithm(algorithm):
            got, grads = run_rnn(fast, x, None, "packed_unsorted", False, lengths)
    except RuntimeError as e:
        assert algorithm == "persistent" and "cannot run on the persistent kernel" in str(e)
        assert "bytes of shared memory" in str(e) or "co-resident" in str(e), str(e)
        got, grads = run_rnn(fast, x, None, "packed_unsorted", False, lengths)  # auto
    want, _ = run_rnn(ref, x, None, "packed_unsorted", False, lengths, grads=grads)
    for key in want:
        if key in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            continue
        torch.testing.assert_close(got[key], want[key], **TOL[dtype],
                                   msg=lambda m, k=key: f"{kind} {algorithm} {k}: {m}")


def test_persistent_refuses_what_does_not_fit():
    """An fp32 LSTM at H = P = 8192: a block's slice of W_hh cannot fit any GPU's shared
    memory; forced, the forward raises naming the limit; under auto it runs (standard)."""
    m = rnnfast.LSTM(8, 8192, device="cuda")
    x = torch.randn(2, 1, 8, device="cuda")
    with torch.no_grad():
        with rnnfast.cuda_algorithm("persistent"):
            with pytest.raises(RuntimeError, match="bytes of shared memory"):
                m(x)
        out, _ = m(x)
    assert torch.isfinite(out).all()

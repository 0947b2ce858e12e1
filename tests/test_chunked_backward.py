"""The chunked backward of the float32 and float64 layers (csrc/cpu/layer.h,
backward_chunk_steps): the gate gradients held a chunk of steps at a time and the
whole-sequence products (dW_ih, dW_hh, dX) formed a chunk at a time inside the step loop,
dW summed over the chunks. The default chunk is about 1024 rows; the tests force chunks of
one and of three steps (the last one shorter) so that short sequences run in several, with
packed input, both directions and a projection, against torch.nn and against the same layer
run on the whole sequence at once."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from rnnfast import _C

CASES = [
    # (name, torch class, rnnfast class, kwargs, gates, gradient columns a row)
    ("lstm", torch.nn.LSTM, rnnfast.LSTM, {}, 4, 4),
    ("lstm_proj", torch.nn.LSTM, rnnfast.LSTM, {"proj_size": 37}, 4, 4),
    ("gru", torch.nn.GRU, rnnfast.GRU, {}, 3, 4),
    ("rnn_tanh", torch.nn.RNN, rnnfast.RNN, {"nonlinearity": "tanh"}, 1, 1),
    ("rnn_relu", torch.nn.RNN, rnnfast.RNN, {"nonlinearity": "relu", "bias": False}, 1, 1),
]
IDS = [c[0] for c in CASES]

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-8)}

T, B, I, H = 7, 9, 50, 97
LENGTHS = torch.tensor([7, 7, 6, 5, 5, 3, 3, 2, 1])


@pytest.fixture
def chunk_bytes():
    """Sets the chunk's bytes for the test (restored to the default after it)."""
    yield _C._set_backward_chunk_bytes
    _C._set_backward_chunk_bytes(0)


def _chunk_steps(kwargs, gates, cols, dtype, cap):
    """The steps per chunk the backend takes for these layers with `cap` chunk bytes."""
    P = kwargs.get("proj_size", H)
    elem = torch.tensor([], dtype=dtype).element_size()
    flops = 2 * B * gates * H * P + (2 * B * H * P if "proj_size" in kwargs else 0)
    _C._set_backward_chunk_bytes(cap)
    return _C._backward_chunk_steps(T, B, elem * cols * H, flops)


def _run(mod, x, packed, x_grad=True):
    inp = pack_padded_sequence(x, LENGTHS) if packed else x
    out, state = mod(inp)
    out = out.data if packed else out
    states = state if isinstance(state, tuple) else (state,)
    grads_out = [torch.linspace(-1, 1, t.numel(), dtype=x.dtype).reshape(t.shape) for t in (out, *states)]
    wrt = ([x] if x_grad else []) + list(mod.parameters())
    return [out, *states, *torch.autograd.grad((out, *states), wrt, grads_out)]


def _assert_close(got, want, dtype, what):
    tol = TOL[dtype]
    for i, (a, b) in enumerate(zip(got, want)):
        # Weight gradients are sums over all rows: their rounding grows with the terms, so
        # the absolute tolerance scales with the tensor's largest entry.
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, atol=tol["atol"] * scale, rtol=tol["rtol"],
                                   msg=lambda m: f"{what}, tensor {i}: {m}")


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("layout", ["one_layer", "bidirectional_2", "no_input_grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name,ref_cls,cls,kwargs,gates,cols", CASES, ids=IDS)
def test_chunked_backward_matches_torch_and_the_whole_sequence(name, ref_cls, cls, kwargs, gates, cols,
                                                               packed, dtype, layout, steps, chunk_bytes):
    torch.manual_seed(0)
    extra = {"num_layers": 2, "bidirectional": True} if layout == "bidirectional_2" else {}
    ref = ref_cls(I, H, dtype=dtype, **extra, **kwargs)
    m = cls(I, H, dtype=dtype, **extra, **kwargs)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=layout != "no_input_grad")
    x_grad = layout != "no_input_grad"
    elem = torch.tensor([], dtype=dtype).element_size()
    cap = steps * B * cols * H * elem
    assert _chunk_steps(kwargs, gates, cols, dtype, cap) == steps  # the chunked path runs
    chunked = _run(m, x, packed, x_grad)
    chunk_bytes(-1)
    assert _C._backward_chunk_steps(T, B, elem * cols * H, 10**9) == 0
    whole = _run(m, x, packed, x_grad)
    expected = _run(ref, x, packed, x_grad)
    _assert_close(chunked, expected, dtype, "chunked against torch.nn")
    _assert_close(chunked, whole, dtype, "chunked against the whole sequence")


def _split_invariant_kernels():
    return rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel"


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name,ref_cls,cls,kwargs,gates,cols", [c for c in CASES if c[0] != "lstm_proj"],
                         ids=[i for i in IDS if i != "lstm_proj"])
def test_chunked_backward_same_bits_on_one_thread_under_load(name, ref_cls, cls, kwargs, gates, cols,
                                                            packed, chunk_bytes):
    """The chunk's products are the same calls whatever number of threads the loop runs on, so a
    float32 loop that drops to one thread under load gives bitwise the split loop's result."""
    if not _split_invariant_kernels() or torch.get_num_threads() < 2:
        pytest.skip("step loops drop to one thread under load only with rnnfast's panel "
                    "micro-kernel and two or more threads")
    torch.manual_seed(0)
    m = cls(I, H, num_layers=2, bidirectional=True, **kwargs)
    x = torch.randn(T, B, I, requires_grad=True)
    cap = 3 * B * cols * H * 4
    assert _chunk_steps(kwargs, gates, cols, torch.float32, cap) == 3
    try:
        _C._reset_step_loop_load()
        _C._hold_step_loops_split(60.0)
        split = _run(m, x, packed)
        assert _C._step_loop_load()["single_loops"] == 0
        _C._reset_step_loop_load()
        _C._hold_step_loops_on_one_thread(60.0)
        single = _run(m, x, packed)
        assert _C._step_loop_load()["single_loops"] > 0
    finally:
        _C._reset_step_loop_load()
    for i, (a, b) in enumerate(zip(split, single)):
        assert torch.equal(a, b), f"tensor {i} differs between the split and the one-thread loop"


@pytest.mark.parametrize("name,cls,kwargs,hidden", [
    ("lstm", rnnfast.LSTM, {}, 64),
    ("gru", rnnfast.GRU, {}, 64),
    ("rnn_tanh", rnnfast.RNN, {}, 112),
], ids=["lstm", "gru", "rnn_tanh"])
def test_chunked_backward_gradcheck(name, cls, kwargs, hidden, chunk_bytes):
    """float64 gradcheck of the input and initial-state gradients with chunks of two steps
    (hidden sizes at which the step loop splits, which the chunked path requires)."""
    torch.manual_seed(0)
    t, b, i = 5, 3, 4
    m = cls(i, hidden, dtype=torch.float64, **kwargs)
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[name]
    cols = {"lstm": 4, "gru": 4, "rnn_tanh": 1}[name]
    chunk_bytes(2 * b * cols * hidden * 8)
    assert _C._backward_chunk_steps(t, b, 8 * cols * hidden, 2 * b * gates * hidden * hidden) == 2
    x = torch.randn(t, b, i, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, b, hidden, dtype=torch.float64, requires_grad=True)

    def f(x, h0):
        if name == "lstm":
            out, (h, c) = m(x, (h0, torch.zeros_like(h0)))
            return out, h, c
        out, h = m(x, h0)
        return out, h

    assert torch.autograd.gradcheck(f, (x, h0))


def test_default_chunks_are_about_1024_rows():
    """The rule: chunks of about 1024 rows (at most 16 MiB of gate gradients); the whole
    sequence where it has no more rows than a chunk or where the loop runs on one thread."""
    _C._set_backward_chunk_bytes(0)
    lstm_xl = dict(T=50, B=128, row_bytes=4 * 4 * 1024, step_flops=2 * 128 * 4 * 1024 * 1024)
    assert _C._backward_chunk_steps(**lstm_xl) == 8          # 1024 rows, 16 MiB
    assert _C._backward_chunk_steps(100, 64, 4 * 4 * 512, 2 * 64 * 4 * 512 * 512) == 15  # 7 chunks
    assert _C._backward_chunk_steps(100, 4, 4 * 4 * 512, 2 * 4 * 4 * 512 * 512) == 0    # 400 rows
    assert _C._backward_chunk_steps(100, 64, 4 * 4 * 8192, 2 * 64 * 4 * 8192 * 8192) == 2  # by bytes
    assert _C._backward_chunk_steps(10_000, 1, 4 * 4 * 16, 2 * 4 * 16 * 16) == 0          # one thread

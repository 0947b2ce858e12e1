"""rnnfast's layers and cells under ``torch.autocast``: the dtypes torch.nn gives, values
and gradients as close to float64 as torch.nn's own autocast results are.

torch's autocast lists name none of lstm/gru/rnn on the CPU; torch.nn's dtypes there follow
from what its implementation runs (rnnfast/autocast.py has the table), and these tests
read them off torch.nn itself rather than from any list: for every layer and cell, input
form and state, the dtypes of rnnfast's results must equal torch.nn's.

Values: under bfloat16 autocast each product rounds its operands to bfloat16 (unit
roundoff u = 2^-8) and results in bfloat16 are rounded once more, so neither rnnfast nor
torch.nn is within float32 tolerance of the float64 result. Each result is compared with
a float64 run of the same module. The two implementations make the same kinds of
roundings in different places and orders (a weight gradient sums T*B products of rounded
factors, so its error scales with the sum of the terms' magnitudes, not with the result),
so the bound is relative to torch.nn's own error: rnnfast's largest error must not exceed
twice torch.nn's largest error, or 2u times the tensor's largest magnitude (the bfloat16
rounding of the result and of one operand) where torch.nn's happens to be smaller.
Where rnnfast computes in float32 (the state dtype: the GRU, the packed LSTM, the cells but
the RNN's), its error is also checked to be float32's.
"""
from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
import rnnfast.testing
from rnnfast import autocast as rnnfast_autocast

U = 2.0 ** -8  # bfloat16 unit roundoff
T, B, I, H = 6, 3, 5, 7
LENGTHS = torch.tensor([6, 4, 2])

LAYERS: dict[str, Callable[[], nn.Module]] = {
    "lstm": lambda: nn.LSTM(I, H),
    "lstm_2l_bidir": lambda: nn.LSTM(I, H, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: nn.LSTM(I, H, proj_size=4),
    "lstm_batch_first": lambda: nn.LSTM(I, H, batch_first=True),
    "gru": lambda: nn.GRU(I, H),
    "gru_2l_bidir": lambda: nn.GRU(I, H, num_layers=2, bidirectional=True),
    "rnn_tanh": lambda: nn.RNN(I, H, num_layers=2),
    "rnn_relu_bidir": lambda: nn.RNN(I, H, nonlinearity="relu", bidirectional=True),
}
CELLS: dict[str, Callable[[], nn.Module]] = {
    "lstm_cell": lambda: nn.LSTMCell(I, H),
    "gru_cell": lambda: nn.GRUCell(I, H),
    "rnn_cell_tanh": lambda: nn.RNNCell(I, H),
    "rnn_cell_relu": lambda: nn.RNNCell(I, H, nonlinearity="relu"),
}
ALL = {**LAYERS, **CELLS}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
        yield


def pair(make: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
    ref = make()
    fast = rnnfast.convert(make())
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def is_cell(m: nn.Module) -> bool:
    return isinstance(m, nn.RNNCellBase)


def leaves(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, PackedSequence):
        return [out.data]
    return [t for o in out for t in leaves(o)]


def make_input(m: nn.Module, form: str) -> object:
    """Input of ``form``: padded float32, unbatched, packed, bfloat16 (as a preceding
    autocast Linear gives), or with an explicit float32 state."""
    if is_cell(m):
        x = torch.randn(B, I) if form != "unbatched" else torch.randn(I)
    elif getattr(m, "batch_first", False):
        x = torch.randn(B, T, I)
    else:
        x = torch.randn(T, I) if form == "unbatched" else torch.randn(T, B, I)
    if form == "bf16_input":
        return x.bfloat16()
    if form == "packed":
        return pack_padded_sequence(x, LENGTHS, batch_first=getattr(m, "batch_first", False))
    return x


def call(m: nn.Module, inp, form: str):
    if form != "given_state":
        return m(inp)
    if is_cell(m):
        h = torch.randn(B, H)
        return m(inp, (h, torch.randn(B, H)) if isinstance(m, nn.LSTMCell) or
                 type(m) is rnnfast.LSTMCell else h)
    layers = m.num_layers * (2 if m.bidirectional else 1)
    out = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    batch = inp.shape[0] if m.batch_first else inp.shape[1]
    h = torch.randn(layers, batch, out)
    return m(inp, (h, torch.randn(layers, batch, m.hidden_size)) if m.mode == "LSTM" else h)


FORMS = ["padded", "unbatched", "packed", "bf16_input", "given_state"]


# Cells take no PackedSequence.
CASES = [(name, form) for name in ALL for form in FORMS if not (name in CELLS and form == "packed")]


@pytest.mark.parametrize("name,form", CASES)
def test_dtypes_match_torch_nn(name, form):
    ref, fast = pair(ALL[name])
    inp = make_input(ref, form)
    dtypes = []
    for m in (ref, fast):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dtypes.append([t.dtype for t in leaves(call(m, inp, form))])
    assert dtypes[1] == dtypes[0]


@pytest.mark.parametrize("name", ["lstm", "lstm_2l_bidir", "lstm_cell"])
def test_dtypes_match_torch_nn_without_onednn(name):
    """With oneDNN disabled torch.nn.LSTM runs its generic code: the state's dtype."""
    ref, fast = pair(ALL[name])
    x = make_input(ref, "padded")
    with torch.backends.mkldnn.flags(enabled=False), torch.autocast("cpu", torch.bfloat16):
        expected = [t.dtype for t in leaves(ref(x))]
        assert [t.dtype for t in leaves(fast(x))] == expected
    assert torch.float32 in expected


def run(m: nn.Module, inp, autocast: bool, dtype=torch.bfloat16):
    """Outputs, then the gradients of the input and of every parameter."""
    data = inp.data if isinstance(inp, PackedSequence) else inp
    data = data.detach().clone().requires_grad_(True)
    arg = inp._replace(data=data) if isinstance(inp, PackedSequence) else data
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        outs = leaves(m(arg))
    gen = torch.Generator().manual_seed(3)
    grads_out = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
                 for o in outs]
    torch.autograd.backward(outs, grads_out)
    return outs + [data.grad] + [p.grad for p in m.parameters()]


def check_close(name: str, expected, fast, torch_result, float32_compute: bool) -> None:
    for i, (r, f, t) in enumerate(zip(expected, fast, torch_result)):
        assert f.dtype == t.dtype, (name, i)
        err = (f.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        scale = r.abs().max().item()
        assert err <= max(2 * torch_err, 2 * U * scale), (
            f"{name}[{i}]: rnnfast error {err:g} > twice torch.nn's {torch_err:g} and 2u*scale")
        if float32_compute and f.dtype == torch.float32:
            torch.testing.assert_close(f.double(), r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,packed", [(n, p) for n in ALL for p in (False, True)
                                         if not (n in CELLS and p)])
def test_values_and_gradients_close_to_torch_nn(name, packed):
    ref, fast = pair(ALL[name])
    if "relu" in name:  # keep pre-activations off the ReLU kink (a rounding can flip it)
        with torch.no_grad():
            for m in (ref, fast):
                for pname, p in m.named_parameters():
                    if pname.startswith("bias"):
                        p.add_(1.0)
    inp = make_input(ref, "packed" if packed else "padded")
    ref64 = ALL[name]().double()
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    inp64 = (inp._replace(data=inp.data.double()) if isinstance(inp, PackedSequence)
             else inp.double())
    expected = [t.double() for t in run(ref64, inp64, autocast=False)]
    torch_result = run(ref, inp, autocast=True)
    fast_result = run(fast, inp, autocast=True)
    float32_compute = fast_result[0].dtype == torch.float32  # the output's dtype
    check_close(name, expected, fast_result, torch_result, float32_compute)
    # Parameter gradients come back in the parameters' dtype, as torch.nn's do.
    assert all(g.dtype == torch.float32 for g in fast_result[-len(list(fast.parameters())):])


def test_model_with_linear_layers_trains_under_autocast():
    """Linear (bfloat16 output under autocast) -> LSTM -> GRU -> Linear, loss, backward."""
    def make():
        return nn.Sequential(nn.Linear(I, 8), nn.LSTM(8, H, batch_first=True))

    ref, fast = make(), rnnfast.convert(make())
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I)
    for m in (ref, fast):
        with torch.autocast("cpu", torch.bfloat16):
            out, (h, c) = m(x)
            assert out.dtype == h.dtype == c.dtype == torch.bfloat16
        out.float().pow(2).mean().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert q.grad.dtype == torch.float32
        torch.testing.assert_close(q.grad, p.grad, atol=4 * U * p.grad.abs().max().item(),
                                   rtol=0, msg=name)


def test_float64_is_left_alone():
    fast = rnnfast.LSTM(I, H, num_layers=2).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with torch.autocast("cpu", torch.bfloat16):
        out, (h, c) = fast(x)
    assert out.dtype == h.dtype == c.dtype == torch.float64
    assert torch.equal(out, fast(x)[0])


@pytest.mark.parametrize("name", ["rnn_tanh", "gru", "lstm_proj", "rnn_cell_tanh", "gru_cell"])
def test_cpu_float16_autocast(name):
    """CPU float16 autocast: rnnfast has no CPU float16 kernel, so the float16 cases run
    rnnfast.reference's plain torch; dtypes and values as torch.nn's (torch.nn's padded
    oneDNN LSTM fails on CPUs without oneDNN float16 support, so it is not compared)."""
    ref, fast = pair(ALL[name])
    x = make_input(ref, "padded")
    with torch.autocast("cpu", torch.float16):
        expected, got = leaves(ref(x)), leaves(fast(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for e, g in zip(expected, got):
        tol = 4 * 2.0 ** -11 * e.abs().max().item()  # float16: u = 2^-11
        torch.testing.assert_close(g, e, atol=tol, rtol=0)


def test_cuda_rule_and_registration():
    """torch's CUDA autocast runs every recurrent layer and cell in the autocast dtype
    (cuDNN's _cudnn_rnn and the fused/plain cells are on the lower-precision list); the
    rule is that, and the kernels are registered for both namespaces."""
    rnnfast.testing.emulator()
    x, h = torch.randn(T, B, I), torch.randn(B, H)
    w_ih, w_hh, b = torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H)
    args = (x, h, h, w_ih, w_hh, b, b, None, None, False, False)
    low = torch.get_autocast_dtype("cuda")  # float16 unless set otherwise; no GPU needed
    for kind in ("lstm", "gru", "rnn"):
        assert rnnfast_autocast.autocast_dtypes(kind, "cuda", args) == (low, low)
        assert rnnfast_autocast.autocast_dtypes(
            kind, "cuda", (x.double(),) + args[1:]) is None
        for ns in ("rnnfast", "rnnfast_emu"):
            for key in ("AutocastCPU", "AutocastCUDA"):
                assert torch._C._dispatch_has_kernel_for_dispatch_key(
                    f"{ns}::{kind}_forward", key)


@pytest.mark.parametrize("name", ["lstm", "lstm_proj", "gru", "rnn_tanh", "lstm_cell"])
def test_emulated_cuda_kernels_under_cpu_autocast(name):
    """The emulator's operators (CUDA kernels on CPU tensors) get the same autocast
    kernels; on CPU tensors the CPU rule applies."""
    if not rnnfast.testing.simt_has_half():
        pytest.skip("emulator built without CUDA's half types")  # a build option, tested
    ref, fast = pair(ALL[name])
    x = make_input(ref, "padded")
    with torch.autocast("cpu", torch.bfloat16):
        expected = leaves(ref(x))
        with rnnfast.testing.emulate_cuda():
            got = leaves(fast(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.double(), e.double(), rtol=0,
                                   atol=4 * U * e.abs().max().item())


def test_compile_fullgraph_under_autocast():
    torch._dynamo.reset()
    ref, fast = pair(LAYERS["lstm_2l_bidir"])
    x = torch.randn(T, B, I)
    compiled = torch.compile(fast, fullgraph=True, dynamic=False)
    with torch.autocast("cpu", torch.bfloat16):
        expected = leaves(fast(x))
        got = leaves(compiled(x))
    assert [t.dtype for t in got] == [t.dtype for t in expected] == [torch.bfloat16] * 3
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_lstm_cell_batch_sizes_follow_the_input():
    """Under CPU autocast the LSTM cell runs one packed step of B rows: in eager mode its
    batch sizes are one cached tensor per B (no allocation per call); a trace keeps B
    dynamic (taken from the input in the graph)."""
    cell = rnnfast.LSTMCell(I, H)
    x3, x5 = torch.randn(3, I), torch.randn(5, I)
    assert rnnfast.ops._one_step(x3) is rnnfast.ops._one_step(torch.randn(3, 2))
    assert rnnfast.ops._one_step(x5).tolist() == [5]
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(cell, (x3,), check_trace=False)
        for x in (x5, x3):
            for got, want in zip(traced(x), cell(x)):
                assert got.shape == want.shape == (x.shape[0], H)
                torch.testing.assert_close(got, want, atol=0, rtol=0)

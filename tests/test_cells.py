"""Parity of rnnfast.LSTMCell, rnnfast.GRUCell and rnnfast.RNNCell (tanh and relu) with
torch.nn's cells, for every kind in tests/kinds.py that has a cell: batched (B, I) and
unbatched (I,) input, state given or None, bias on or off, float32/float64; outputs and
every gradient; state_dict, repr, errors, torch.compile.

The extension is required: these tests fail (not skip) when rnnfast cannot be imported.
"""

from typing import Dict, Optional, Tuple

import pytest
import torch
from torch import nn

import rnnfast
from conftest import assert_results_close, assert_same_error, capture_error
from kinds import CELL_KINDS, kind_params

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]
KIND_PARAMS = kind_params(CELL_KINDS)


def make_state(kind, batch: Optional[int], hidden_size: int, dtype):
    """Random state: ``h`` (or ``(h, c)`` for the LSTM), ``(B, H)``, or ``(H,)`` if
    ``batch`` is None (unbatched)."""
    shape = (hidden_size,) if batch is None else (batch, hidden_size)
    return kind.cell_state(*shape, dtype=dtype)


def run_cell(m, x, hx, grads=None, backward=True) -> Tuple[Dict[str, object], tuple]:
    """One call of cell ``m`` on fresh leaf copies of ``x``/``hx``, then backward with
    upstream gradients ``grads`` (random if None) on its output(s). Returns the outputs
    (``h``, and ``c`` for the LSTM), the gradients of the input, the states and every
    parameter, and the upstream gradients used."""
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    leaves: tuple = ()
    arg = None
    if hx is not None:
        states = hx if isinstance(hx, tuple) else (hx,)
        leaves = tuple(s.detach().clone().requires_grad_(True) for s in states)
        arg = leaves if isinstance(hx, tuple) else leaves[0]
    out = m(x) if hx is None else m(x, arg)
    outs = tuple(out) if isinstance(out, tuple) else (out,)
    results: Dict[str, object] = dict(zip(("h", "c"), outs))
    if not backward:
        return results, ()
    if grads is None:
        grads = tuple(torch.randn_like(t) for t in outs)
    sum((t * g).sum() for t, g in zip(outs, grads)).backward()
    results["grad_input"] = x.grad
    for name, leaf in zip(("grad_h0", "grad_c0"), leaves):
        results[name] = leaf.grad
    for name, p in m.named_parameters():
        results["grad." + name] = p.grad
    return results, grads


def compare(ref, fast, kind, batched=True, batch=4, with_hx=True, backward=True):
    """Run both cells on the same random input (and state) and compare everything."""
    dtype = ref.weight_ih.dtype
    x_shape = (batch, ref.input_size) if batched else (ref.input_size,)
    x = torch.randn(*x_shape, dtype=dtype)
    hx = make_state(kind, batch if batched else None, ref.hidden_size, dtype) \
        if with_hx else None
    expected, grads = run_cell(ref, x, hx, backward=backward)
    got, _ = run_cell(fast, x, hx, grads, backward=backward)
    assert_results_close(got, expected, dtype)
    return got, expected


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_exports(kind):
    assert issubclass(kind.fast_cell, nn.Module)
    assert kind.fast_cell.__name__ in rnnfast.__all__
    assert getattr(rnnfast, kind.fast_cell.__name__) is kind.fast_cell


# --------------------------------------------------------------------------- parity grid

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_parity(kind, batched, with_hx, bias, dtype):
    ref, fast = kind.cell_pair(5, 7, dtype, bias=bias)
    got, _ = compare(ref, fast, kind, batched=batched, with_hx=with_hx)
    assert got["h"].shape == ((4, 7) if batched else (7,))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("input_size,hidden_size,batch", [(1, 1, 1), (5, 33, 3), (33, 2, 9)])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_odd_sizes(kind, input_size, hidden_size, batch, dtype):
    ref, fast = kind.cell_pair(input_size, hidden_size, dtype)
    compare(ref, fast, kind, batch=batch)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_empty_batch(kind, with_hx):
    """B=0: torch's cells return (0, H) outputs."""
    ref, fast = kind.cell_pair(5, 7, torch.float64)
    got, _ = compare(ref, fast, kind, batch=0, with_hx=with_hx)
    assert got["h"].shape == (0, 7)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_unrolled_loop_over_time(kind):
    """The usual way of using a cell: a Python loop over time steps, the state carried,
    backward through all of them."""
    ref, fast = kind.cell_pair(4, 6, torch.float64)
    xs = torch.randn(5, 3, 4, dtype=torch.float64)
    h0 = make_state(kind, 3, 6, torch.float64)
    w = torch.randn(5, 3, 6, dtype=torch.float64)
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        x = xs.clone().requires_grad_(True)
        state = tuple(s.clone().requires_grad_(True) for s in h0) if kind.has_cell_state \
            else h0.clone().requires_grad_(True)
        leaves = state if kind.has_cell_state else (state,)
        loss = 0
        for t in range(5):
            state = m(x[t], state)
            h = state[0] if kind.has_cell_state else state
            loss = loss + (h * w[t]).sum()
        loss.backward()
        res = {"h": h.detach(), "x": x.grad}
        res.update({f"s{i}": leaf.grad for i, leaf in enumerate(leaves)})
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("what", ["input_only", "params_only", "hx_only"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_partial_requires_grad(kind, what):
    ref, fast = kind.cell_pair(4, 6, torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    hx = make_state(kind, 3, 6, torch.float64)
    grads_out = None
    results = []
    for m in (ref, fast):
        for p in m.parameters():
            p.grad = None
            p.requires_grad_(what == "params_only")
        xl = x.clone().requires_grad_(what == "input_only")
        states = tuple(s.clone().requires_grad_(what == "hx_only")
                       for s in (hx if isinstance(hx, tuple) else (hx,)))
        out = m(xl, states if isinstance(hx, tuple) else states[0])
        outs = out if isinstance(out, tuple) else (out,)
        if grads_out is None:
            grads_out = [torch.randn_like(t) for t in outs]
        sum((t * g).sum() for t, g in zip(outs, grads_out)).backward()
        res = {"x": xl.grad, "out": outs[0].detach()}
        res.update({f"s{i}": s.grad for i, s in enumerate(states)})
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_non_contiguous_input_and_state(kind):
    ref, fast = kind.cell_pair(4, 6, torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64).T
    hx = make_state(kind, 6, 3, torch.float64)
    hx = tuple(s.T for s in hx) if isinstance(hx, tuple) else hx.T
    assert not x.is_contiguous()
    expected, got = ref(x, hx), fast(x, hx)
    if not isinstance(expected, tuple):
        expected, got = (expected,), (got,)
    assert_results_close(dict(enumerate(got)), dict(enumerate(expected)), torch.float64)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_without_autograd(kind, mode):
    ref, fast = kind.cell_pair(5, 7, torch.float64)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        got, _ = compare(ref, fast, kind, backward=False)
    assert not got["h"].requires_grad


# ------------------------------------------------------------ module interface parity

CONFIGS = [dict(), dict(bias=False)]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_parameters_and_state_dict(kind, kwargs):
    ref, fast = kind.cell_modules(5, 7, **kwargs)
    assert [(n, p.shape, p.dtype) for n, p in fast.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    for attr in ("input_size", "hidden_size", "bias"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    if kind.nonlinearity:
        assert fast.nonlinearity == ref.nonlinearity == kind.nonlinearity
    if not ref.bias:
        assert fast.bias_ih is None and fast.bias_hh is None
    # torch -> rnnfast
    fast.load_state_dict(ref.state_dict())
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    compare(ref, fast, kind)
    # rnnfast -> torch
    ref2, fast2 = kind.cell_modules(5, 7, **kwargs)
    ref2.load_state_dict(fast2.state_dict())
    compare(ref2, fast2, kind, batched=False)


@pytest.mark.parametrize("kwargs", CONFIGS, ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_same_initialisation_under_same_seed(kind, kwargs):
    kwargs = {**kind.cell_kwargs, **kwargs}
    torch.manual_seed(7)
    ref = kind.torch_cell(5, 7, **kwargs)
    torch.manual_seed(7)
    fast = kind.fast_cell(5, 7, **kwargs)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("kwargs", CONFIGS, ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_repr(kind, kwargs):
    ref, fast = kind.cell_modules(5, 7, **kwargs)
    expected = type(fast).__name__ + repr(ref)[len(type(ref).__name__):]
    assert repr(fast) == expected


def test_rnn_cell_positional_arguments():
    """torch.nn.RNNCell(input_size, hidden_size, bias, nonlinearity)."""
    ref = nn.RNNCell(5, 7, False, "relu")
    fast = rnnfast.RNNCell(5, 7, False, "relu")
    assert (fast.bias, fast.nonlinearity) == (ref.bias, ref.nonlinearity) == (False, "relu")
    fast.load_state_dict(ref.state_dict())
    compare(ref, fast, CELL_KINDS["rnn_relu"])


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_to_float64_and_factory_kwargs(kind):
    ref, fast = kind.cell_pair(5, 7)
    ref, fast = ref.double(), fast.double()
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    compare(ref, fast, kind)
    ref, fast = kind.cell_modules(5, 7, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in fast.parameters())


# ------------------------------------------------------------------------------ errors

# Cell under test: input_size 5, hidden_size 7.
BAD_CALLS = {
    "input_size_batched": lambda m, k: m(torch.randn(3, 6)),
    "input_size_unbatched": lambda m, k: m(torch.randn(6)),
    "input_3d": lambda m, k: m(torch.randn(2, 3, 5)),
    "input_0d": lambda m, k: m(torch.tensor(1.0)),
    "hx_hidden": lambda m, k: m(torch.randn(3, 5), k.cell_state(3, 8)),
    "hx_batch": lambda m, k: m(torch.randn(3, 5), k.cell_state(2, 7)),
    "hx_3d": lambda m, k: m(torch.randn(3, 5), k.cell_state(1, 3, 7)),
    "batched_input_1d_hx": lambda m, k: m(torch.randn(3, 5), k.cell_state(7)),
    "unbatched_input_batched_hx": lambda m, k: m(torch.randn(5), k.cell_state(3, 7)),
    "unbatched_input_batch1_hx": lambda m, k: m(torch.randn(5), k.cell_state(1, 7)),
    "unbatched_hx_hidden": lambda m, k: m(torch.randn(5), k.cell_state(6)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_forward_errors_match_torch(kind, case):
    ref, fast = kind.cell_pair(5, 7)
    assert_same_error(lambda: BAD_CALLS[case](ref, kind), lambda: BAD_CALLS[case](fast, kind))
    compare(ref, fast, kind)  # still usable afterwards


@pytest.mark.parametrize(
    "kind", kind_params({n: k for n, k in CELL_KINDS.items() if k.has_cell_state}))
def test_lstm_cell_state_pair_errors(kind):
    """LSTMCell checks h and c separately (the c error names hidden1)."""
    ref, fast = kind.cell_pair(5, 7)
    for hx in [(torch.randn(3, 7), torch.randn(3, 8)),
               (torch.randn(3, 7), torch.randn(2, 7)),
               (torch.randn(3, 7), torch.randn(1, 3, 7))]:
        assert_same_error(lambda: ref(torch.randn(3, 5), hx), lambda: fast(torch.randn(3, 5), hx))


@pytest.mark.parametrize("what", ["input", "state"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_dtype_mismatch_error_type(kind, what):
    """torch's messages here come from inside its matmul ('mat1 and mat2 must have the same
    dtype...'), so only the exception type is required to match."""
    ref, fast = kind.cell_pair(5, 7)
    x_dtype = torch.float64 if what == "input" else torch.float32
    s_dtype = torch.float64 if what == "state" else torch.float32
    args = (torch.randn(3, 5, dtype=x_dtype), kind.cell_state(3, 7, dtype=s_dtype))
    expected = capture_error(lambda: ref(*args))
    got = capture_error(lambda: fast(*args))
    assert type(got) is type(expected), (type(got), got, type(expected), expected)


def test_rnn_cell_unknown_nonlinearity():
    """torch.nn.RNNCell accepts any string at construction (and shows it in its repr); the
    call raises RuntimeError('Unknown nonlinearity: ...')."""
    ref = nn.RNNCell(3, 4, nonlinearity="sigmoid")
    fast = rnnfast.RNNCell(3, 4, nonlinearity="sigmoid")
    assert repr(fast) == type(fast).__name__ + repr(ref)[len("RNNCell"):]
    assert_same_error(lambda: ref(torch.randn(2, 3)), lambda: fast(torch.randn(2, 3)))


@pytest.mark.parametrize("kwargs", [dict(hidden_size=-1), dict(input_size=-2)],
                         ids=["hidden_negative", "input_negative"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_constructor_errors_match_torch(kind, kwargs):
    full = dict(input_size=5, hidden_size=7, **kind.cell_kwargs)
    full.update(kwargs)
    assert_same_error(lambda: kind.torch_cell(**full), lambda: kind.fast_cell(**full))


# ------------------------------------------------------------------------ torch.compile

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind,batched,with_hx", [
    pytest.param(CELL_KINDS[name], batched, with_hx, id=f"{name}-{batched}-{with_hx}")
    for name, batched, with_hx in [("lstm", True, True), ("gru", False, True),
                                   ("rnn_tanh", True, False), ("rnn_relu", True, True)]
])
def test_torch_compile_fullgraph(kind, batched, with_hx, fresh_dynamo):
    """aot_eager traces forward and backward; compare with the eager module. One input
    form per kind (each call compiles anew): together they cover batched and unbatched
    input, with and without a state."""
    _, fast = kind.cell_modules(5, 7, dtype=torch.float64)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    x = torch.randn(*((3, 5) if batched else (5,)), dtype=torch.float64)
    hx = make_state(kind, 3 if batched else None, 7, torch.float64) if with_hx else None
    expected, grads = run_cell(fast, x, hx)
    got, _ = run_cell(compiled, x, hx, grads)
    got = {k.replace("_orig_mod.", ""): v for k, v in got.items()}
    assert_results_close(got, expected, torch.float64)

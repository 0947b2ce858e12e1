"""Forward-mode AD through rnnfast's layers and cells: ``torch.func.jvp`` (and
``jacfwd``) and ``torch.autograd.forward_ad``.

The fused operators have no forward-mode formula; while forward AD watches a call,
``rnnfast.ops`` runs the plain-torch code of ``rnnfast.reference`` instead. Tangents are
compared with torch.nn's own forward-mode AD in float64: the two compute the same maths
in different orders, so they agree to ~1e-15 relative; 1e-10 (the float64 tolerance of
the whole suite) leaves room for error growth through layers and steps. A test also
checks that ordinary calls never take that path.
"""
from __future__ import annotations

from typing import Callable

import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from rnnfast import ops, reference

TOL = dict(atol=1e-10, rtol=1e-10)
T, B, I, H = 5, 3, 4, 6

LAYERS = {
    "lstm_2l_bidir": lambda: nn.LSTM(I, H, num_layers=2, bidirectional=True),
    "lstm_proj_batch_first": lambda: nn.LSTM(I, H, proj_size=3, batch_first=True),
    "lstm_no_bias": lambda: nn.LSTM(I, H, bias=False),
    "gru_2l_bidir": lambda: nn.GRU(I, H, num_layers=2, bidirectional=True),
    "rnn_tanh": lambda: nn.RNN(I, H, num_layers=2),
    "rnn_relu_bidir": lambda: nn.RNN(I, H, nonlinearity="relu", bidirectional=True),
}
CELLS = {
    "lstm_cell": lambda: nn.LSTMCell(I, H),
    "gru_cell": lambda: nn.GRUCell(I, H),
    "rnn_cell_tanh": lambda: nn.RNNCell(I, H),
    "rnn_cell_relu": lambda: nn.RNNCell(I, H, nonlinearity="relu"),
}


def pair(make: Callable[[], nn.Module]) -> tuple[nn.Module, nn.Module]:
    """A float64 torch.nn module and its rnnfast conversion with the same weights."""
    ref = make().double()
    fast = rnnfast.convert(make().double())
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def flat(out) -> tuple[torch.Tensor, ...]:
    """Every tensor of a layer's or cell's result, in order."""
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, PackedSequence):
        return (out.data,)
    return tuple(t for o in out for t in flat(o))


def assert_tangents_equal(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype == torch.float64
        torch.testing.assert_close(x, y, **TOL)


def jvp_all(m: nn.Module, x: torch.Tensor, hx, tangents: dict) -> tuple:
    """``torch.func.jvp`` of ``m(x, hx)`` with respect to the input, the state and every
    parameter at once (tangents by name)."""
    params = dict(m.named_parameters())
    state = hx if isinstance(hx, tuple) else (hx,)

    def f(x, state, params):
        arg = state if isinstance(hx, tuple) else state[0]
        return flat(torch.func.functional_call(m, params, (x, arg)))

    primals = (x, state, params)
    tans = (tangents["x"], tangents["state"], {k: tangents[k] for k in params})
    return torch.func.jvp(f, primals, tans)


def random_tangents(m: nn.Module, x: torch.Tensor, hx) -> dict:
    state = hx if isinstance(hx, tuple) else (hx,)
    t = {"x": torch.randn_like(x), "state": tuple(torch.randn_like(s) for s in state)}
    t.update({k: torch.randn_like(p) for k, p in m.named_parameters()})
    return t


def layer_state(m: nn.Module, batch: int = B):
    layers = m.num_layers * (2 if m.bidirectional else 1)
    out = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    h = torch.randn(layers, batch, out, dtype=torch.float64)
    if isinstance(m, nn.LSTM) or m.mode == "LSTM":
        return (h, torch.randn(layers, batch, m.hidden_size, dtype=torch.float64))
    return h


@pytest.mark.parametrize("name", LAYERS)
def test_func_jvp_layer_matches_torch(name):
    ref, fast = pair(LAYERS[name])
    shape = (B, T, I) if ref.batch_first else (T, B, I)
    x = torch.randn(shape, dtype=torch.float64)
    hx = layer_state(ref)
    tangents = random_tangents(ref, x, hx)
    out_ref, tan_ref = jvp_all(ref, x, hx, tangents)
    out_fast, tan_fast = jvp_all(fast, x, hx, tangents)
    assert_tangents_equal(out_ref, out_fast)
    assert_tangents_equal(tan_ref, tan_fast)
    assert all(t.abs().sum() > 0 for t in tan_fast)  # a zero tangent would be a silent miss


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_func_jvp_cell_matches_torch(name, batched):
    ref, fast = pair(CELLS[name])
    x = torch.randn((B, I) if batched else (I,), dtype=torch.float64)
    h = torch.randn((B, H) if batched else (H,), dtype=torch.float64)
    hx = (h, torch.randn_like(h)) if name == "lstm_cell" else h
    tangents = random_tangents(ref, x, hx)
    out_ref, tan_ref = jvp_all(ref, x, hx, tangents)
    out_fast, tan_fast = jvp_all(fast, x, hx, tangents)
    assert_tangents_equal(out_ref, out_fast)
    assert_tangents_equal(tan_ref, tan_fast)


@pytest.mark.parametrize("name", [*LAYERS, *CELLS])
def test_forward_ad_dual_tensors_match_torch(name):
    """``torch.autograd.forward_ad``: a dual input (no state given), tangent of every output."""
    make = {**LAYERS, **CELLS}[name]
    ref, fast = pair(make)
    cell = name in CELLS
    shape = (B, I) if cell else ((B, T, I) if ref.batch_first else (T, B, I))
    x, tx = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    tangents = []
    for m in (ref, fast):
        with fwAD.dual_level():
            out = flat(m(fwAD.make_dual(x, tx)))
            tangents.append(tuple(fwAD.unpack_dual(o).tangent for o in out))
    assert all(t is not None for t in tangents[1])
    assert_tangents_equal(*tangents)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_forward_ad_packed_input_matches_torch(kind):
    """Packed sequences (unsorted lengths) under ``forward_ad``, bidirectional."""
    make = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
    ref, fast = pair(lambda: make(I, H, bidirectional=True))
    x = torch.randn(T, B, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([3, 5, 2]), enforce_sorted=False)
    tangent = torch.randn_like(packed.data)
    results = []
    for m in (ref, fast):
        with fwAD.dual_level():
            dual = packed._replace(data=fwAD.make_dual(packed.data, tangent))
            results.append(tuple(fwAD.unpack_dual(o).tangent for o in flat(m(dual))))
    assert_tangents_equal(*results)


def test_jacfwd_and_jacrev_match_the_fused_kernels_backward():
    """``jacfwd`` (vmap over jvp) and ``jacrev`` (vmap over vjp) both run the plain-torch
    reference; the Jacobian by ordinary autograd (``torch.autograd.functional.jacobian``)
    runs the fused kernels forward and their hand-written backward. All three agree."""
    fast = rnnfast.GRU(I, H, num_layers=2).double()
    x = torch.randn(T, 2, I, dtype=torch.float64)

    def f(x):
        return fast(x)[0].sum(0)

    by_kernels = torch.autograd.functional.jacobian(f, x)
    assert by_kernels.abs().sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # jacrev runs the reference: warned
        by_jacrev = torch.func.jacrev(f)(x)
    torch.testing.assert_close(torch.func.jacfwd(f)(x), by_kernels, **TOL)
    torch.testing.assert_close(by_jacrev, by_kernels, **TOL)


def test_ordinary_calls_do_not_take_the_composite_path(monkeypatch):
    """The plain-torch fallback runs only under forward AD: not in plain calls, not under
    ``vmap``, not inside a dual level whose inputs carry no tangent."""
    calls = []
    for name in ("lstm_layer", "gru_layer", "rnn_layer"):
        original = getattr(reference, name)

        def spy(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(reference, name, spy)
    x = torch.randn(T, B, I)
    mods = [rnnfast.LSTM(I, H), rnnfast.GRU(I, H), rnnfast.RNN(I, H), rnnfast.LSTMCell(I, H),
            rnnfast.GRUCell(I, H), rnnfast.RNNCell(I, H)]
    for m in mods:
        inp = x[0] if "Cell" in type(m).__name__ else x
        m(inp)
        with fwAD.dual_level():
            m(inp)
    torch.func.vmap(lambda x: mods[1](x)[0], in_dims=1)(torch.randn(T, 2, B, I))
    assert calls == []
    with fwAD.dual_level():
        mods[1](fwAD.make_dual(x, torch.randn_like(x)))
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["lstm_2l_bidir", "gru_2l_bidir", "rnn_relu_bidir"])
@pytest.mark.filterwarnings("ignore:rnnfast. under torch.func.grad")
def test_func_grad_and_vjp_match_autograd(name):
    """torch.func's reverse-mode transforms (``grad``, ``vjp``) take the same plain-torch
    path (torch runs an operator's autograd formula only under ordinary autograd); they
    must agree with ordinary backward through the fused kernels."""
    _, fast = pair(LAYERS[name])
    x = torch.randn(T, B, I, dtype=torch.float64)
    cotangent = torch.randn_like(fast(x)[0])
    params = dict(fast.named_parameters())

    def f(params, x):
        return torch.func.functional_call(fast, params, (x,))[0]

    grads = torch.func.grad(lambda p, x: (f(p, x) * cotangent).sum(), argnums=(0, 1))(params, x)
    _, vjp_fn = torch.func.vjp(f, params, x)
    vjp_grads = vjp_fn(cotangent)
    x_leaf = x.clone().requires_grad_(True)
    (fast(x_leaf)[0] * cotangent).sum().backward()
    for by_func in (grads, vjp_grads):
        torch.testing.assert_close(by_func[1], x_leaf.grad, **TOL)
        for k, p in fast.named_parameters():
            torch.testing.assert_close(by_func[0][k], p.grad, **TOL)


def test_reverse_transforms_warn_once_that_they_run_the_reference(monkeypatch):
    """Under torch.func.grad/vjp/jacrev the layers run the plain-torch reference: the
    first such call says so (UserWarning), later ones do not."""
    monkeypatch.setattr(ops, "_warned", set())
    fast = rnnfast.GRU(I, H)
    x = torch.randn(T, B, I)

    def loss(x):
        return fast(x)[0].sum()

    with pytest.warns(UserWarning, match="torch.func.grad/vjp/jacrev.*plain-torch"):
        torch.func.grad(loss)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.func.grad(loss)(x)
        torch.func.vjp(loss, x)
        fast(x)[0].sum().backward()  # ordinary autograd: the kernels, no warning
        torch.func.jvp(loss, (x,), (x,))  # forward mode: the only way, no warning


# ------------------------------------------------------------------------ torch.compile

@pytest.mark.parametrize("name", ["gru_2l_bidir", "lstm_cell"])
def test_compiled_jvp_matches_torch(name):
    """``torch.compile`` around ``torch.func.jvp``: the traced layer is the plain-torch
    reference (the fused operators have no forward-mode rule), with torch.nn's tangents,
    never zero ones."""
    ref, fast = pair({**LAYERS, **CELLS}[name])
    x = torch.randn((B, I) if name in CELLS else (T, B, I), dtype=torch.float64)
    v = torch.randn_like(x)

    def run(m, x, v):
        return torch.func.jvp(lambda x: flat(m(x)), (x,), (v,))

    out_ref, tan_ref = run(ref, x, v)
    out_fast, tan_fast = torch.compile(run, backend="eager")(fast, x, v)
    assert_tangents_equal(out_ref, out_fast)
    assert_tangents_equal(tan_ref, tan_fast)
    assert all(t.abs().sum() > 0 for t in tan_fast)


# ----------------------------------------------------------- the operators refuse a tangent

def _gru_operator(x, h, m):
    return torch.ops.rnnfast.gru_forward(x, h, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0,
                                         m.bias_hh_l0, None, False, False)[0]


def test_operators_refuse_a_tangent():
    """Reached with a tangent (called directly, from a TorchScript module, an exported
    program), a fused operator raises instead of returning a zero tangent."""
    m = nn.GRU(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.zeros(B, H, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="no forward-mode AD rule"):
        torch.func.jvp(lambda x: _gru_operator(x, h, m), (x,), (torch.randn_like(x),))
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        with pytest.raises(RuntimeError, match="no forward-mode AD rule"):
            _gru_operator(dual, h, m)
        # no tangent, inside a dual level: runs
        torch.testing.assert_close(_gru_operator(x, h, m), m(x)[0], **TOL)
    lstm = torch.jit.script(nn.Sequential(rnnfast.LSTM(I, H).double()))
    with pytest.raises(RuntimeError, match="no forward-mode AD rule"):
        torch.func.jvp(lambda x: lstm(x)[0], (x,), (torch.randn_like(x),))

"""The module keyword arguments beyond torch.nn: ``layer_norm``, ``zoneout``,
``recurrent_dropout`` and ``weight_dropout`` on rnnfast.LSTM/GRU, ``layer_norm`` on
rnnfast.LSTMCell/GRUCell.

Checked against rnnfast.reference (the spec of the formulas and of the mask draw order),
called with the module's own parameters under the same ``torch.manual_seed``: outputs,
final states and the gradients of every parameter, the input and the initial states, in
float64 (tight) and float32 (float rounding); every input form; the default modules'
parameters and ``state_dict`` (torch.nn's exactly); errors; the refusals where a model
would be handled the torch.nn way (TorchScript, ONNX, dynamic quantization, streaming in
training mode); torch.compile(fullgraph=True).
"""
from __future__ import annotations

import copy
import io
import warnings
from typing import Optional

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from rnnfast import reference as R

I, H, B, T, P = 3, 5, 3, 4, 2
LAYER_KINDS = {"LSTM": (rnnfast.LSTM, nn.LSTM), "GRU": (rnnfast.GRU, nn.GRU)}
ALL = dict(layer_norm=True, zoneout=0.3, recurrent_dropout=0.4, weight_dropout=0.35)
OPTION_SETS = {
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout=0.3),
    "recurrent_dropout": dict(recurrent_dropout=0.4),
    "weight_dropout": dict(weight_dropout=0.35),
    "all": ALL,
}
PROBABILITIES = ("zoneout", "recurrent_dropout", "weight_dropout")


def tolerances(dtype: torch.dtype, expected: torch.Tensor, grad: bool = False,
               layer_norm: bool = False) -> dict:
    """float64: the two sides sum in different orders, ~1e-15 relative. float32, against
    float64 (the module's own rounding): relative 1e-5, absolute 1e-6 (1e-5 for gradients,
    which sum over steps, rows and directions), scaled by the size of the values; with layer
    normalisation 3e-5 and 3e-4: each LN divides by the standard deviation of a few (H = 5)
    values, which amplifies rounding (measured up to ~3e-6 and ~4e-5 for outputs and
    gradients; the reference run in float32 shows the same)."""
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10 * scale)
    if layer_norm:
        unit = 3e-4 if grad else 3e-5
        return dict(rtol=unit, atol=unit * scale)
    return dict(rtol=1e-5, atol=(1e-5 if grad else 1e-6) * scale)


def assert_close(actual, expected, dtype, grad=False, msg="", layer_norm=False):
    """``actual`` (dtype ``dtype``) against ``expected`` (float64 for float32 results)."""
    torch.testing.assert_close(actual.to(expected.dtype), expected,
                               **tolerances(dtype, expected, grad, layer_norm),
                               msg=lambda m: f"{msg}: {m}")


# ----------------------------------------------------------------------------- harness

def make_layer(kind: str, dtype=torch.float64, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with one layer
        m = LAYER_KINDS[kind][0](I, H, dtype=dtype, **kwargs)
    if getattr(m, "layer_norm", False):
        # Non-trivial layer-norm weights, so that they matter (they start at 1 and 0).
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "_ln_" in name:
                    p.add_(torch.randn(p.shape, dtype=dtype) * 0.3)
    return m


def state_widths(m: nn.Module) -> tuple:
    if m.mode == "LSTM":
        return (m.proj_size or m.hidden_size, m.hidden_size)
    return (m.hidden_size,)


def inputs(m: nn.Module, form: str, dtype, with_hx: bool = True, seed: int = 1):
    """Random leaves from their own generator (the global one draws the masks): padded
    input ``x`` in the module's layout, lengths for packed input, initial states."""
    g = torch.Generator().manual_seed(seed)
    layers = m.num_layers * (2 if m.bidirectional else 1)
    if form == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=dtype)
    elif m.batch_first:
        x = torch.randn(B, T, I, generator=g, dtype=dtype)
    else:
        x = torch.randn(T, B, I, generator=g, dtype=dtype)
    lengths = [2, T, 1] if form == "packed" else None  # unsorted, the longest is T
    hx = None
    if with_hx:
        batch = () if form == "unbatched" else (B,)
        hx = tuple(torch.randn(layers, *batch, w, generator=g, dtype=dtype)
                   for w in state_widths(m))
    x.requires_grad_(True)
    if hx is not None:
        for s in hx:
            s.requires_grad_(True)
    return x, lengths, hx


def as_hx(m: nn.Module, states):
    if states is None:
        return None
    return tuple(states) if m.mode == "LSTM" else states[0]


def run_module(m, x, lengths, hx, seed: int):
    """The module's output (packed data for packed input) and final states (user order)."""
    inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=m.batch_first,
                                                         enforce_sorted=False)
    torch.manual_seed(seed)
    out, final = m(inp) if hx is None else m(inp, as_hx(m, hx))
    if lengths is not None:
        assert isinstance(out, PackedSequence)
        out = out.data
    finals = tuple(final) if isinstance(final, tuple) else (final,)
    return out, finals


def run_reference(m, x, lengths, hx, seed: int, masks=None, training: Optional[bool] = None):
    """rnnfast.reference.lstm/gru with the module's parameters and options; packed input in
    the packed (sorted) batch order, final states back in the user's order."""
    training = m.training if training is None else training
    fn = R.lstm if m.mode == "LSTM" else R.gru
    batch_sizes = unsorted = None
    data, states = x, hx
    if lengths is not None:
        packed = pack_padded_sequence(x, lengths, batch_first=m.batch_first,
                                      enforce_sorted=False)
        data, batch_sizes, unsorted = packed.data, packed.batch_sizes, packed.unsorted_indices
        if hx is not None:
            states = tuple(s.index_select(1, packed.sorted_indices) for s in hx)
    torch.manual_seed(seed)
    out, final = fn(data, as_hx(m, states), R.params_from_module(m), m.num_layers,
                    m.bidirectional, m.batch_first, m.dropout, training, batch_sizes,
                    layer_norm=R.layer_norm_params_from_module(m), zoneout=m.zoneout,
                    recurrent_dropout=m.recurrent_dropout, weight_dropout=m.weight_dropout,
                    masks=masks)
    finals = tuple(final) if isinstance(final, tuple) else (final,)
    if unsorted is not None:
        finals = tuple(s.index_select(1, unsorted) for s in finals)
    return out, finals


def grads_of(m, outs, leaves, seed: int = 7):
    """Gradients of a random weighting of ``outs`` w.r.t. ``leaves`` and every parameter."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)).sum()
               for t in outs)
    targets = list(leaves) + list(m.parameters())
    return torch.autograd.grad(loss, targets, allow_unused=True)


def check_against_reference(m, form="batched", with_hx=True, seed=5, dtype=torch.float64):
    """The module against the reference, outputs, final states and every gradient. In
    float32 the reference runs in float64 on the same (float32-valued) parameters and
    inputs, with the same masks (drawn in float32 whatever the dtype): what is left is the
    module's own float32 rounding."""
    x, lengths, hx = inputs(m, form, dtype, with_hx)
    leaves = [x] + list(hx or ())
    got_out, got_finals = run_module(m, x, lengths, hx, seed)
    ref_m, ref_leaves = m, leaves
    if dtype != torch.float64:
        ref_m = copy.deepcopy(m).double()
        ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ref_x, ref_hx = ref_leaves[0], (tuple(ref_leaves[1:]) if hx is not None else None)
    want_out, want_finals = run_reference(ref_m, ref_x, lengths, ref_hx, seed)
    ln = bool(m.layer_norm)
    assert got_out.shape == want_out.shape and got_out.dtype == dtype
    assert_close(got_out, want_out, dtype, msg="output", layer_norm=ln)
    assert len(got_finals) == len(want_finals)
    for i, (a, b) in enumerate(zip(got_finals, want_finals)):
        assert_close(a, b, dtype, msg=f"final state {i}", layer_norm=ln)
    got = grads_of(m, (got_out,) + got_finals, leaves)
    want = grads_of(ref_m, (want_out,) + want_finals, ref_leaves)
    names = ["input"] + [f"state {i}" for i in range(len(leaves) - 1)] + [
        n for n, _ in m.named_parameters()]
    assert len(got) == len(want) == len(names)
    for name, a, b in zip(names, got, want):
        assert b is not None, name  # every parameter takes part
        assert_close(a, b, dtype, grad=True, msg=f"gradient of {name}", layer_norm=ln)


# ------------------------------------------------------------------ against the reference

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("options", list(OPTION_SETS), ids=list(OPTION_SETS))
@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_matches_reference(kind, options, training, dtype):
    """Two bidirectional layers with inter-layer dropout, given initial states."""
    m = make_layer(kind, dtype, num_layers=2, bidirectional=True, dropout=0.3,
                   **OPTION_SETS[options]).train(training)
    check_against_reference(m, dtype=dtype)


@pytest.mark.parametrize("form,kwargs,with_hx", [
    ("batched", dict(batch_first=True), True),
    ("unbatched", dict(), True),
    ("unbatched", dict(batch_first=True, num_layers=2), False),
    ("packed", dict(), True),
    ("packed", dict(num_layers=2, bidirectional=True, dropout=0.2), True),
    ("packed", dict(batch_first=True), False),
    ("batched", dict(num_layers=2), False),
], ids=["batch_first", "unbatched", "unbatched-bf-nohx", "packed", "packed-bidir",
        "packed-bf-nohx", "nohx"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_input_forms(kind, training, form, kwargs, with_hx):
    m = make_layer(kind, **ALL, **kwargs).train(training)
    check_against_reference(m, form, with_hx)


@pytest.mark.parametrize("form", ["batched", "packed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_lstm_projection(training, dtype, form):
    m = make_layer("LSTM", dtype, num_layers=2, bidirectional=True, proj_size=P,
                   **ALL).train(training)
    check_against_reference(m, form, dtype=dtype)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_without_bias(kind):
    m = make_layer(kind, bias=False, num_layers=2, **ALL).train()
    check_against_reference(m)


@pytest.mark.parametrize("form", ["batched", "packed", "unbatched"])
@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_masks_drawn_in_documented_order(kind, form):
    """The masks the module uses are those drawn by hand, with reference.draw_masks, from
    the same seed in the documented order (per layer, forward then reverse; no inter-layer
    dropout here, so nothing is drawn in between), passed to the reference explicitly.
    For packed input: T = len(batch_sizes), B = batch_sizes[0]."""
    proj = dict(proj_size=P) if kind == "LSTM" else {}
    m = make_layer(kind, num_layers=2, bidirectional=True, **proj, **ALL).train()
    x, lengths, hx = inputs(m, form, torch.float64)
    steps, batch = T, (1 if form == "unbatched" else B)
    if form == "packed":
        batch_sizes = pack_padded_sequence(x, lengths, enforce_sorted=False).batch_sizes
        steps, batch = len(batch_sizes), int(batch_sizes[0])
    gates = 4 if kind == "LSTM" else 3
    torch.manual_seed(11)
    masks = [R.draw_masks(gates, H, state_widths(m)[0], steps, batch,
                          weight_dropout=m.weight_dropout,
                          recurrent_dropout=m.recurrent_dropout, zoneout=m.zoneout,
                          cell_state=kind == "LSTM")
             for _ in range(4)]
    assert all(t is not None for t in masks[0][:(4 if kind == "LSTM" else 3)])
    got_out, got_finals = run_module(m, x, lengths, hx, seed=11)
    want_out, want_finals = run_reference(m, x, lengths, hx, seed=999, masks=masks)
    torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-10)
    for a, b in zip(got_finals, want_finals):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_training_masks_follow_the_seed_and_eval_is_deterministic(kind):
    m = make_layer(kind, num_layers=2, **ALL)
    x, _, hx = inputs(m, "batched", torch.float64)
    m.train()
    a, _ = run_module(m, x, None, hx, seed=1)
    b, _ = run_module(m, x, None, hx, seed=1)
    c, _ = run_module(m, x, None, hx, seed=2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    m.eval()
    torch.manual_seed(1)
    d, _ = m(x, as_hx(m, hx))
    e, _ = m(x, as_hx(m, hx))
    assert torch.equal(d, e)
    assert not torch.allclose(a, d)


@pytest.mark.parametrize("options", list(OPTION_SETS), ids=list(OPTION_SETS))
@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_each_option_changes_the_training_result(kind, options):
    """Not a no-op: the same weights without the option give another result."""
    m = make_layer(kind, **OPTION_SETS[options]).train()
    plain = LAYER_KINDS[kind][0](I, H, dtype=torch.float64)
    plain.load_state_dict(m.state_dict(), strict=False)
    x, _, hx = inputs(m, "batched", torch.float64)
    a, _ = run_module(m, x, None, hx, seed=3)
    b, _ = run_module(plain, x, None, hx, seed=3)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_functional_takes_the_options(kind):
    """rnnfast.functional.lstm/gru with explicit options and masks equal the reference."""
    m = make_layer(kind, num_layers=2, **ALL).train()
    x, _, hx = inputs(m, "batched", torch.float64)
    gates = 4 if kind == "LSTM" else 3
    torch.manual_seed(4)
    masks = [R.draw_masks(gates, H, H, T, B, weight_dropout=0.2, recurrent_dropout=0.3,
                          zoneout=0.4, cell_state=kind == "LSTM") for _ in range(2)]
    ln = R.layer_norm_params_from_module(m)
    fn = rnnfast.functional.lstm if kind == "LSTM" else rnnfast.functional.gru
    params = [p[:5] if kind == "LSTM" else p[:4] for p in R.params_from_module(m)]
    got = fn(x, *hx, params, 2, training=True, layer_norm=ln, masks=masks)
    want_out, want_final = run_reference(m, x, None, hx, seed=0, masks=masks)
    torch.testing.assert_close(got[0], want_out, rtol=1e-10, atol=1e-10)
    for a, b in zip(got[1:], want_final):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_float16_on_the_cpu_runs_the_reference(kind):
    """Where torch.nn's implementation would run (no rnnfast kernel), options run the
    reference instead."""
    m = make_layer(kind, num_layers=2, **ALL).half().train()
    assert not rnnfast.ops.runs_kernels(torch.zeros(1, dtype=torch.float16))
    x, _, hx = inputs(m, "batched", torch.float16)
    got_out, got_finals = run_module(m, x, None, hx, seed=8)
    want_out, want_finals = run_reference(m, x, None, hx, seed=8)
    assert got_out.dtype == torch.float16
    torch.testing.assert_close(got_out, want_out, rtol=0, atol=0)
    for a, b in zip(got_finals, want_finals):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------ cells

@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_layer_norm_matches_reference(kind, dtype, batched):
    """One step of the layer-normalised cell against reference.lstm_cell/gru_cell (in
    float64, on the same values, for float32), states and every gradient."""
    torch.manual_seed(0)
    m = getattr(rnnfast, kind)(I, H, dtype=dtype, layer_norm=True)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "_ln_" in name:
                p.add_(torch.randn(p.shape, dtype=dtype) * 0.3)
    g = torch.Generator().manual_seed(2)
    rows = (B,) if batched else ()
    leaves = [torch.randn(*rows, I if i == 0 else H, generator=g, dtype=dtype,
                          requires_grad=True)
              for i in range(3 if kind == "LSTMCell" else 2)]
    x, states = leaves[0], leaves[1:]
    got = m(x, tuple(states) if kind == "LSTMCell" else states[0])
    got = got if isinstance(got, tuple) else (got,)
    assert all(t.dtype == dtype and t.shape == (*rows, H) for t in got)

    ref_m = copy.deepcopy(m).double()
    ref_leaves = [t.detach().double().requires_grad_(True) for t in leaves]
    ln = R.cell_layer_norm_params_from_module(ref_m)
    w = R.cell_params_from_module(ref_m)
    batched_leaves = [t if batched else t.unsqueeze(0) for t in ref_leaves]
    if kind == "LSTMCell":
        want = R.lstm_cell(*batched_leaves, *w, layer_norm=ln)
    else:
        want = (R.gru_cell(*batched_leaves, *w, layer_norm=ln),)
    if not batched:
        want = tuple(t.squeeze(0) for t in want)
    for a, b in zip(got, want):
        assert_close(a, b, dtype, msg="state", layer_norm=True)
    got_g = grads_of(m, got, leaves)
    want_g = grads_of(ref_m, want, ref_leaves)
    names = ["input"] + [f"state {i}" for i in range(len(states))] + [
        n for n, _ in m.named_parameters()]
    assert len(got_g) == len(want_g) == len(names)
    for name, a, b in zip(names, got_g, want_g):
        assert b is not None, name
        assert_close(a, b, dtype, grad=True, msg=f"gradient of {name}", layer_norm=True)


@pytest.mark.parametrize("kind,torch_cls,names", [
    ("LSTMCell", nn.LSTMCell, ["weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c"]),
    ("GRUCell", nn.GRUCell, ["weight_ln_ih", "weight_ln_hh"]),
])
def test_cell_parameters(kind, torch_cls, names):
    torch.manual_seed(0)
    ref = torch_cls(I, H)
    ref_rng = torch.get_rng_state()
    torch.manual_seed(0)
    m = getattr(rnnfast, kind)(I, H, layer_norm=True)
    assert torch.equal(torch.get_rng_state(), ref_rng)
    keys = list(m.state_dict())
    assert keys == list(ref.state_dict()) + names
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    gates = 4 if kind == "LSTMCell" else 3
    sizes = {"weight_ln_ih": gates * H, "weight_ln_hh": gates * H, "weight_ln_c": H,
             "bias_ln_c": H}
    for name in names:
        p = getattr(m, name)
        assert isinstance(p, nn.Parameter) and p.shape == (sizes[name],)
        assert torch.all(p == (0.0 if name.startswith("bias") else 1.0)), name
    assert R.cell_layer_norm_params_from_module(m) is not None
    assert "layer_norm=True" in repr(m)
    with pytest.raises(TypeError):
        getattr(rnnfast, kind)(I, H, zoneout=0.1)
    with pytest.raises(TypeError, match="layer_norm should be of type bool"):
        getattr(rnnfast, kind)(I, H, layer_norm=1)


# ------------------------------------------------------------ parameters and state_dict

LAYER_CONFIGS = [dict(), dict(num_layers=2, bidirectional=True), dict(bias=False),
                 dict(proj_size=P, num_layers=2)]
KIND_CONFIGS = [(kind, i) for kind in LAYER_KINDS for i, c in enumerate(LAYER_CONFIGS)
                if kind == "LSTM" or "proj_size" not in c]


@pytest.mark.parametrize("kind,config", KIND_CONFIGS)
def test_defaults_are_torch_nn_exactly(kind, config):
    kwargs = LAYER_CONFIGS[config]
    fast_cls, torch_cls = LAYER_KINDS[kind]
    torch.manual_seed(0)
    ref = torch_cls(I, H, **kwargs)
    ref_rng = torch.get_rng_state()
    torch.manual_seed(0)
    m = fast_cls(I, H, **kwargs)
    assert torch.equal(torch.get_rng_state(), ref_rng)
    assert list(m.state_dict()) == list(ref.state_dict())
    for (n1, p1), (n2, p2) in zip(m.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert m._flat_weights_names == ref._flat_weights_names
    assert m._all_weights == ref._all_weights
    assert repr(m).replace("rnnfast", "") == repr(ref)
    x = torch.randn(T, B, I)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn: no oneDNN for projections
        torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def ln_names(kind: str, layers: int, bidirectional: bool) -> list:
    bases = ["weight_ln_ih", "weight_ln_hh"] + (["weight_ln_c", "bias_ln_c"]
                                                 if kind == "LSTM" else [])
    return [f"{b}_l{k}{s}" for k in range(layers)
            for s in ([""] + (["_reverse"] if bidirectional else [])) for b in bases]


@pytest.mark.parametrize("kind,config", KIND_CONFIGS)
def test_layer_norm_parameters(kind, config):
    """Names, shapes, 1/0 init after construction and after reset_parameters(); torch.nn's
    parameters draw exactly what torch.nn's draw (same values, same RNG state after)."""
    kwargs = LAYER_CONFIGS[config]
    fast_cls, torch_cls = LAYER_KINDS[kind]
    torch.manual_seed(0)
    ref = torch_cls(I, H, **kwargs)
    ref_rng = torch.get_rng_state()
    torch.manual_seed(0)
    m = fast_cls(I, H, layer_norm=True, **kwargs)
    assert torch.equal(torch.get_rng_state(), ref_rng)
    names = ln_names(kind, kwargs.get("num_layers", 1), kwargs.get("bidirectional", False))
    assert list(m.state_dict()) == list(ref.state_dict()) + names
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    # torch.nn's bookkeeping lists torch.nn's parameters only.
    assert m._flat_weights_names == ref._flat_weights_names
    assert m._all_weights == ref._all_weights
    assert [t.shape for t in m._flat_weights] == [t.shape for t in ref._flat_weights]
    gates = 4 if kind == "LSTM" else 3

    def check_ln_init():
        for name in names:
            p = getattr(m, name)
            assert isinstance(p, nn.Parameter) and p.dtype == torch.float32
            assert p.shape == ((H,) if "_c_" in name else (gates * H,)), name
            assert torch.all(p == (0.0 if name.startswith("bias") else 1.0)), name

    check_ln_init()
    with torch.no_grad():
        for name in names:
            getattr(m, name).uniform_()
    torch.manual_seed(3)
    ref.reset_parameters()
    ref_rng = torch.get_rng_state()
    torch.manual_seed(3)
    m.reset_parameters()
    assert torch.equal(torch.get_rng_state(), ref_rng)
    check_ln_init()
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert R.layer_norm_params_from_module(m) is not None


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_state_dict_round_trip_and_conversions(kind):
    m = make_layer(kind, num_layers=2, bidirectional=True, **ALL).eval()
    x, _, hx = inputs(m, "batched", torch.float64, seed=3)
    want, _ = m(x, as_hx(m, hx))
    other = LAYER_KINDS[kind][0](I, H, num_layers=2, bidirectional=True, dtype=torch.float64,
                                 **ALL).eval()
    assert not torch.allclose(other(x, as_hx(other, hx))[0], want)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other(x, as_hx(other, hx))[0], want, rtol=0, atol=0)
    # torch.nn's layer (no layer-norm parameters) cannot take it, nor give one.
    plain = LAYER_KINDS[kind][1](I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="weight_ln_ih_l0"):
        plain.load_state_dict(m.state_dict())
    with pytest.raises(RuntimeError, match="weight_ln_ih_l0"):
        other.load_state_dict(plain.state_dict())
    # Pickled whole, deep-copied, cast: the options and parameters come along.
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    for clone in (torch.load(buffer, weights_only=False), copy.deepcopy(m)):
        assert clone._options() == m._options()
        torch.testing.assert_close(clone(x, as_hx(clone, hx))[0], want, rtol=0, atol=0)
    single = copy.deepcopy(m).float()
    assert all(p.dtype == torch.float32 for p in single.parameters())
    got, _ = single(x.float(), as_hx(m, tuple(s.float() for s in hx)))
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_extra_repr(kind):
    m = LAYER_KINDS[kind][0](I, H, num_layers=2, layer_norm=True, zoneout=0.1,
                             weight_dropout=0.25)
    assert repr(m) == (f"{kind}({I}, {H}, num_layers=2, layer_norm=True, zoneout=0.1, "
                       "weight_dropout=0.25)")
    assert "recurrent_dropout" not in repr(m)


# ------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("value", [-0.1, 1.0, True, "0.1"], ids=["neg", "one", "bool", "str"])
@pytest.mark.parametrize("name", PROBABILITIES)
@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_bad_probability(kind, name, value):
    with pytest.raises(ValueError) as info:
        LAYER_KINDS[kind][0](I, H, **{name: value})
    with pytest.raises(ValueError) as expected:
        R._check_probability(name, value)
    assert str(info.value) == str(expected.value)
    assert name in str(info.value)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_bad_value_set_later_and_module_still_usable(kind):
    m = make_layer(kind, zoneout=0.2).train()
    x, _, hx = inputs(m, "batched", torch.float64)
    before, _ = run_module(m, x, None, hx, seed=1)
    m.recurrent_dropout = 1.0
    with pytest.raises(ValueError, match="recurrent_dropout probability"):
        m(x, as_hx(m, hx))
    m.recurrent_dropout = 0.0
    after, _ = run_module(m, x, None, hx, seed=1)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    check_against_reference(m)


def test_layer_norm_must_be_bool_and_rnn_takes_no_options():
    for value in (1, None, "yes"):
        with pytest.raises(TypeError, match="layer_norm should be of type bool"):
            rnnfast.LSTM(I, H, layer_norm=value)
        with pytest.raises(TypeError, match="layer_norm should be of type bool"):
            rnnfast.GRU(I, H, layer_norm=value)
    for name, value in (("layer_norm", True), ("zoneout", 0.1), ("recurrent_dropout", 0.1),
                        ("weight_dropout", 0.1)):
        with pytest.raises(TypeError) as ours:
            rnnfast.RNN(I, H, **{name: value})
        with pytest.raises(TypeError) as torchs:
            nn.RNN(I, H, **{name: value})
        assert str(ours.value) == str(torchs.value)
        assert f"unexpected keyword argument '{name}'" in str(ours.value)
    with pytest.raises(TypeError):
        rnnfast.RNNCell(I, H, layer_norm=True)
    # Keyword-only: one positional argument too many is an error, as in torch.nn.
    with pytest.raises(TypeError):
        rnnfast.LSTM(I, H, 1, True, False, 0.0, False, 0, None, None, True)
    m = rnnfast.LSTM(I, H, layer_norm=True)  # still constructible and usable
    assert m(torch.randn(T, B, I))[0].shape == (T, B, H)


# --------------------------------------------------------------------------- refusals

def _chain(error: BaseException) -> list:
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def _assert_names(error: BaseException, expected_type, *words: str) -> None:
    ours = [e for e in _chain(error) if isinstance(e, expected_type)]
    assert ours, f"not rnnfast's refusal: {error!r}"
    for word in words:
        assert word in str(ours[0]), (word, str(ours[0]))


# torch's own deprecation notices of torch.ao.quantization and torch.jit (both still work).
no_quant_deprecation = pytest.mark.filterwarnings(
    "ignore:torch.ao.quantization is deprecated:DeprecationWarning")
no_jit_deprecation = pytest.mark.filterwarnings(
    "ignore:`torch.jit.*` is deprecated:DeprecationWarning")

REFUSED = [("LSTM", dict(layer_norm=True), "rnnfast.LSTM(layer_norm=True)"),
           ("GRU", dict(zoneout=0.1), "rnnfast.GRU(zoneout=0.1)"),
           ("LSTM", dict(recurrent_dropout=0.2, weight_dropout=0.1),
            "rnnfast.LSTM(recurrent_dropout=0.2, weight_dropout=0.1)")]


def _refused_module(kind, kwargs):
    return nn.Sequential(LAYER_KINDS[kind][0](I, H, **kwargs)).eval()


class _First(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


@no_jit_deprecation
@pytest.mark.parametrize("kind,kwargs,text", REFUSED, ids=["ln", "zoneout", "dropouts"])
def test_torchscript_refuses_options(kind, kwargs, text):
    layer = LAYER_KINDS[kind][0](I, H, **kwargs).eval()
    x = torch.randn(T, B, I)
    for target in (layer, _First(layer)):
        with pytest.raises(NotImplementedError) as info:
            torch.jit.script(target)
        _assert_names(info.value, NotImplementedError, text, "torch.jit.script")
    with pytest.raises(NotImplementedError) as info:
        torch.jit.trace(_First(layer), (x,))
    _assert_names(info.value, NotImplementedError, text, "torch.jit.trace")
    assert layer(x)[0].shape == (T, B, H)  # still usable


@no_jit_deprecation
def test_torchscript_of_default_layers_still_works():
    model = _First(rnnfast.GRU(I, H)).eval()
    x = torch.randn(T, B, I)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize("kind,kwargs,text", REFUSED[:2], ids=["ln", "zoneout"])
def test_onnx_legacy_refuses_options(kind, kwargs, text):
    model = _First(LAYER_KINDS[kind][0](I, H, **kwargs)).eval()
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(T, B, I),), io.BytesIO(), dynamo=False)
    _assert_names(info.value, rnnfast.OnnxExportError, text, "ONNX",
                  next(iter(kwargs)))


def test_onnx_dynamo_refuses_options():
    pytest.importorskip("onnxscript")
    model = _First(rnnfast.LSTM(I, H, layer_norm=True, zoneout=0.1)).eval()
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(T, B, I),), dynamo=True, verbose=False)
    _assert_names(info.value, rnnfast.OnnxExportError,
                  "rnnfast.LSTM(layer_norm=True, zoneout=0.1)", "ONNX")


@no_jit_deprecation
@no_quant_deprecation
@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cells_with_layer_norm_refuse_torchscript_and_onnx(kind):
    cell = getattr(rnnfast, kind)(I, H, layer_norm=True).eval()
    x = torch.randn(B, I)
    text = f"rnnfast.{kind}(layer_norm=True)"
    with pytest.raises(NotImplementedError) as info:
        torch.jit.script(cell)
    _assert_names(info.value, NotImplementedError, text)
    with pytest.raises(NotImplementedError) as info:
        torch.jit.trace(cell, (x,))
    _assert_names(info.value, NotImplementedError, text)
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cell, (x,), io.BytesIO(), dynamo=False)
    _assert_names(info.value, rnnfast.OnnxExportError, text, "layer_norm")
    with pytest.raises(NotImplementedError) as info:
        torch.ao.quantization.quantize_dynamic(nn.Sequential(cell), {getattr(nn, kind)})
    _assert_names(info.value, NotImplementedError, text, "quantize_dynamic")


@no_quant_deprecation
@pytest.mark.parametrize("spec_torch", [True, False], ids=["nn-spec", "rnnfast-spec"])
@pytest.mark.parametrize("kind,kwargs,text", REFUSED, ids=["ln", "zoneout", "dropouts"])
def test_quantization_and_to_torch_refuse_options(kind, kwargs, text, spec_torch):
    model = _refused_module(kind, kwargs)
    cls = LAYER_KINDS[kind][1 if spec_torch else 0]
    with pytest.raises(NotImplementedError) as info:
        torch.ao.quantization.quantize_dynamic(model, {cls})
    _assert_names(info.value, NotImplementedError, text, "quantize_dynamic")
    with pytest.raises(NotImplementedError) as info:
        rnnfast.quantization.to_torch(model[0])
    _assert_names(info.value, NotImplementedError, text, "torch.nn")
    # Named out of the spec, it stays in float and runs.
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear})
    assert type(q[0]) is type(model[0])


def test_convert_leaves_layers_with_options_alone():
    layer = rnnfast.LSTM(I, H, layer_norm=True)
    model = nn.Sequential(layer, nn.GRU(I, H))
    rnnfast.convert(model)
    assert model[0] is layer and type(model[1]) is rnnfast.GRU


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_torch_export_in_eval_mode(kind):
    """What the refusals suggest instead: torch.export of a layer with options."""
    m = make_layer(kind, num_layers=2, layer_norm=True, zoneout=0.2).eval()
    x, _, _ = inputs(m, "batched", torch.float64)
    x = x.detach()
    program = torch.export.export(m, (x,))
    torch.testing.assert_close(program.module()(x)[0], m(x)[0], rtol=1e-10, atol=1e-10)


# -------------------------------------------------------------------------- streaming

@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_streaming_in_eval_mode_matches_the_whole_sequence(kind):
    m = make_layer(kind, num_layers=2, layer_norm=True, zoneout=0.3,
                   recurrent_dropout=0.2, weight_dropout=0.2).eval()
    x, _, hx = inputs(m, "batched", torch.float64)
    with torch.no_grad():
        want, want_final = m(x, as_hx(m, hx))
    for direct in (True, False):
        stream = rnnfast.StreamingState(m)
        stream.direct = direct
        stream.state = as_hx(m, tuple(s.detach() for s in hx))
        got = torch.stack([stream.step(x[t]) for t in range(T)])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        final = stream.state if isinstance(stream.state, tuple) else (stream.state,)
        want_f = want_final if isinstance(want_final, tuple) else (want_final,)
        for a, b in zip(final, want_f):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_streaming_refuses_training_masks(kind):
    m = make_layer(kind, layer_norm=True, recurrent_dropout=0.2).train()
    stream = rnnfast.StreamingState(m)
    with pytest.raises(NotImplementedError) as info:
        stream.step(torch.randn(B, I, dtype=torch.float64))
    assert "recurrent_dropout" in str(info.value) and "eval" in str(info.value)
    # layer_norm alone is deterministic: it streams in training mode too.
    m2 = make_layer(kind, layer_norm=True).train()
    x, _, _ = inputs(m2, "batched", torch.float64)
    with torch.no_grad():
        want, _ = m2(x)
    stream = rnnfast.StreamingState(m2)
    got = torch.stack([stream.step(x[t]) for t in range(T)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------- torch.compile

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", list(LAYER_KINDS))
def test_torch_compile_fullgraph(kind, fresh_dynamo):
    """Layer norm and zoneout (plus the dropouts), training and evaluation: no graph
    break, eager's results and gradients (aot_eager draws the masks from the same
    generator as eager)."""
    m = make_layer(kind, num_layers=2, dropout=0.2, **ALL)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    for training in (True, False):
        m.train(training)
        x, _, hx = inputs(m, "batched", torch.float64)
        leaves = [x] + list(hx)
        want_out, want_final = run_module(m, x, None, hx, seed=6)
        got_out, got_final = run_module(compiled, x, None, hx, seed=6)
        torch.testing.assert_close(got_out, want_out, rtol=1e-10, atol=1e-10)
        for a, b in zip(got_final, want_final):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        got = grads_of(m, (got_out,) + got_final, leaves)
        want = grads_of(m, (want_out,) + want_final, leaves)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

"""``torch.export`` with dynamic time and batch axes (and ``torch.export.save``/``load``)
and ``torch.func.vmap`` over rnnfast's layers and cells.

torch.nn's layers fail both (export: a constraint violation on a dynamic time axis; vmap:
no batching rule for aten::lstm and co.); rnnfast's operators are described by fake
kernels, so export records one operator call per layer and direction whatever T and B
are, and their batching rules (rnnfast/vmap.py) fold a vmapped input and state into the
batch: one operator call for all samples (vmapped weights: one call per sample).

The exported program runs the very same operators as eager mode, so its results are
compared bitwise; vmap against a Python loop of eager calls, bitwise as well (the kernels
compute each row of the batch in the same order whatever the other rows are).
"""
from __future__ import annotations

import io
from collections import Counter
from typing import Callable

import pytest
import torch
from torch import nn
from torch.export import Dim

import rnnfast

I, H = 5, 7

LAYERS: dict[str, Callable[[], nn.Module]] = {
    "lstm_2l_bidir": lambda: rnnfast.LSTM(I, H, num_layers=2, bidirectional=True),
    "lstm_proj_batch_first": lambda: rnnfast.LSTM(I, H, proj_size=4, batch_first=True),
    "gru_bidir": lambda: rnnfast.GRU(I, H, bidirectional=True),
    "rnn_relu_2l": lambda: rnnfast.RNN(I, H, num_layers=2, nonlinearity="relu"),
}
CELLS: dict[str, Callable[[], nn.Module]] = {
    "lstm_cell": lambda: rnnfast.LSTMCell(I, H),
    "gru_cell": lambda: rnnfast.GRUCell(I, H),
    "rnn_cell": lambda: rnnfast.RNNCell(I, H),
}


def flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


def assert_equal(a, b) -> None:
    a, b = flat(a), flat(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def layer_input(m: nn.Module, t: int, b: int) -> torch.Tensor:
    return torch.randn(b, t, I) if m.batch_first else torch.randn(t, b, I)


def export_layer(m: nn.Module, with_state: bool) -> torch.export.ExportedProgram:
    t_dim, b_dim = Dim("T", min=2, max=512), Dim("B", min=2, max=512)
    x = layer_input(m, 6, 3)
    x_shape = {0: b_dim, 1: t_dim} if m.batch_first else {0: t_dim, 1: b_dim}
    if not with_state:
        return torch.export.export(m, (x,), dynamic_shapes=(x_shape,))
    layers = m.num_layers * (2 if m.bidirectional else 1)
    out = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    h = torch.randn(layers, 3, out)
    if m.mode == "LSTM":
        hx = (h, torch.randn(layers, 3, m.hidden_size))
        return torch.export.export(m, (x, hx), dynamic_shapes=(x_shape, ({1: b_dim},) * 2))
    return torch.export.export(m, (x, h), dynamic_shapes=(x_shape, {1: b_dim}))


def states_for(m: nn.Module, b: int, with_state: bool):
    if not with_state:
        return ()
    layers = m.num_layers * (2 if m.bidirectional else 1)
    out = m.proj_size if getattr(m, "proj_size", 0) else m.hidden_size
    h = torch.randn(layers, b, out)
    return ((h, torch.randn(layers, b, m.hidden_size)),) if m.mode == "LSTM" else (h,)


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("name", LAYERS)
def test_export_dynamic_time_and_batch(name, with_state):
    m = LAYERS[name]().eval()
    ep = export_layer(m, with_state)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    kind = name.split("_")[0]
    assert f"rnnfast.{kind}_forward.default" in targets  # the fused operator, not a loop
    for t, b in ((11, 5), (2, 2), (6, 3)):  # other T and B than the export's, and its own
        x = layer_input(m, t, b)
        state = states_for(m, b, with_state)
        assert_equal(ep.module()(x, *state), m(x, *state))


def test_export_save_load_round_trip():
    m = LAYERS["lstm_2l_bidir"]().eval()
    ep = export_layer(m, with_state=True)
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    x = layer_input(m, 9, 4)
    state = states_for(m, 4, with_state=True)
    assert_equal(loaded.module()(x, *state), m(x, *state))


@pytest.mark.parametrize("name", CELLS)
def test_export_cell_dynamic_batch(name):
    m = CELLS[name]().eval()
    b_dim = Dim("B", min=2, max=512)
    ep = torch.export.export(m, (torch.randn(3, I),), dynamic_shapes=({0: b_dim},))
    for b in (2, 9):
        x = torch.randn(b, I)
        assert_equal(ep.module()(x), m(x))


def test_export_model_backward():
    """A model around the layers exported for training (grad kept): backward through the
    exported module's operators gives eager's gradients."""
    model = nn.Sequential(nn.Linear(I, I), rnnfast.GRU(I, H, batch_first=True))
    x = torch.randn(4, 6, I)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("B", min=2, max=64),
                                                          1: Dim("T", min=2, max=64)},))
    exported = ep.module()
    x2 = torch.randn(3, 8, I)
    grads = []
    for mod in (model, exported):
        out, h = mod(x2)
        params = [p for _, p in sorted(mod.named_parameters())]
        grads.append(torch.autograd.grad(out.sum() + h.sum(), params))
    assert_equal(grads[0], grads[1])


@pytest.mark.parametrize("name", LAYERS)
def test_vmap_over_sequences(name):
    """vmap over a leading axis of independent batches (input and state)."""
    m = LAYERS[name]()
    xs = torch.stack([layer_input(m, 5, 3) for _ in range(4)])
    states = [states_for(m, 3, True) for _ in range(4)]
    stacked = torch.utils._pytree.tree_map(lambda *t: torch.stack(t), *states)
    got = torch.func.vmap(lambda x, s: m(x, *s))(xs, stacked)
    expected = [m(x, *s) for x, s in zip(xs, states)]
    # vmap folds the samples into one batch. rnnfast's step products give each row the same
    # bits whatever the batch; the LSTM's projection is the BLAS's, whose sums may depend on
    # the number of rows (MKL on AMD CPUs): there, float32 rounding.
    exact = getattr(m, "proj_size", 0) == 0
    tol = dict(atol=0, rtol=0) if exact else dict(atol=1e-6, rtol=1e-5)
    for g, e in zip(flat(got), zip(*[flat(e) for e in expected])):
        torch.testing.assert_close(g, torch.stack(e), **tol)


@pytest.mark.parametrize("name", CELLS)
def test_vmap_over_cells(name):
    m = CELLS[name]()
    xs = torch.randn(4, 3, I)
    got = torch.func.vmap(m)(xs)
    expected = [m(x) for x in xs]
    for g, e in zip(flat(got), zip(*[flat(e) for e in expected])):
        torch.testing.assert_close(g, torch.stack(e), atol=0, rtol=0)


def test_vmap_over_stacked_weights():
    """Model ensembling: vmap over stacked copies of the parameters."""
    models = [rnnfast.GRU(I, H) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(models)
    x = torch.randn(5, 2, I)

    def run(p, b):
        return torch.func.functional_call(models[0], (p, b), (x,))

    got = torch.func.vmap(run)(params, buffers)
    expected = [m(x) for m in models]
    for g, e in zip(flat(got), zip(*[flat(e) for e in expected])):
        torch.testing.assert_close(g, torch.stack(e), atol=0, rtol=0)


def test_vmap_folds_samples_into_one_operator_call():
    """A vmapped input runs one forward and one backward operator call per layer and
    direction, not one per sample."""
    m = rnnfast.GRU(I, H, bidirectional=True)
    xs = torch.randn(4, 6, 3, I, requires_grad=True)
    with torch.profiler.profile() as prof:
        torch.func.vmap(lambda x: m(x)[0])(xs).sum().backward()
    calls = Counter(e.name for e in prof.events() if e.name.startswith("rnnfast::"))
    assert calls["rnnfast::gru_backward"] == 2  # per-sample calls would make 8
    # per direction: the vmapped call and the one folded call its batching rule makes
    # (per-sample calls would make 2 + 2 * 4)
    assert calls["rnnfast::gru_forward"] == 4


def test_vmap_then_backward():
    m = rnnfast.LSTM(I, H)
    xs = torch.randn(3, 5, 2, I, requires_grad=True)
    out = torch.func.vmap(lambda x: m(x)[0])(xs)
    out.sum().backward()
    grad_vmap = xs.grad.clone()
    xs.grad = None
    sum(m(x)[0].sum() for x in xs).backward()
    # dX is a whole-sequence product of all the folded rows; at this size the BLAS's, whose
    # sums may depend on the number of rows (MKL on AMD CPUs): float32 rounding.
    torch.testing.assert_close(grad_vmap, xs.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm_2l_bidir", "gru_bidir"])
def test_compile_fullgraph_dynamic(name):
    """torch.compile(fullgraph=True) with dynamic shapes: no graph break, eager's results at
    several T and B after one compilation."""
    torch._dynamo.reset()
    m = LAYERS[name]()
    compiled = torch.compile(m, fullgraph=True, dynamic=True, backend="aot_eager")
    for t, b in ((6, 3), (9, 4), (3, 2)):
        x = layer_input(m, t, b)
        assert_equal(compiled(x), m(x))

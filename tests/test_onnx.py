"""ONNX export with both of torch's exporters: rnnfast's layers and cells become the standard
ONNX LSTM / GRU / RNN nodes, and the exported model, run in ONNX Runtime at other sequence
lengths and batch sizes than exported, gives torch.nn's outputs."""
from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnfast

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: The suite's float32 tolerances. ONNX Runtime's LSTM/GRU/RNN kernels and torch.nn's
#: compute the same float32 maths in different orders.
TOL = dict(atol=1e-5, rtol=1e-4)
EXPORT_T, EXPORT_B = 5, 3
RUN_SHAPES = ((9, 2), (1, 4))  # (T, B) at which the exported model runs


class _Model(nn.Module):
    """Linear -> recurrent layer -> Linear; returns the output and the final states."""

    def __init__(self, lib, kind: str, **kwargs):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.rnn = getattr(lib, kind)(6, 5, **kwargs)
        directions = 2 if kwargs.get("bidirectional") else 1
        self.out = nn.Linear(5 * directions, 3)

    def forward(self, x, *state):
        if len(state) == 0:
            y, h = self.rnn(self.inp(x))
        elif len(state) == 1:
            y, h = self.rnn(self.inp(x), state[0])
        else:
            y, h = self.rnn(self.inp(x), (state[0], state[1]))
        return (self.out(y),) + (tuple(h) if isinstance(h, tuple) else (h,))


class _CellModel(nn.Module):
    """Linear -> cell -> Linear."""

    def __init__(self, lib, kind: str, **kwargs):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.cell = getattr(lib, kind)(6, 5, **kwargs)
        self.out = nn.Linear(5, 3)

    def forward(self, x, *state):
        if len(state) == 0:
            h = self.cell(self.inp(x))
        elif len(state) == 1:
            h = self.cell(self.inp(x), state[0])
        else:
            h = self.cell(self.inp(x), (state[0], state[1]))
        h = h if isinstance(h, tuple) else (h,)
        return (self.out(h[0]),) + h


def _pair(model_cls, kind, **kwargs):
    ref = model_cls(nn, kind, **kwargs).eval()
    fast = model_cls(rnnfast, kind, **kwargs).eval()
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def _inputs(model, t: int, b: int, with_state: bool) -> tuple:
    """x, then the initial states if ``with_state``."""
    if isinstance(model, _CellModel):
        x = torch.randn(b, 4)
        states = 2 if isinstance(model.cell, (nn.LSTMCell, rnnfast.LSTMCell)) else 1
        return (x,) + tuple(torch.randn(b, 5) for _ in range(states) if with_state)
    layer = model.rnn
    x = torch.randn(b, t, 4) if layer.batch_first else torch.randn(t, b, 4)
    if not with_state:
        return (x,)
    d = 2 if layer.bidirectional else 1
    states = 2 if layer.mode == "LSTM" else 1
    return (x,) + tuple(torch.randn(layer.num_layers * d, b, 5) for _ in range(states))


def _axes(model, inputs) -> tuple[dict, dict]:
    """Which axes are the time and batch axes of each input: for dynamic_axes (legacy) and
    dynamic_shapes (dynamo)."""
    if isinstance(model, _CellModel):
        per_input = [{0: "B"} for _ in inputs]
    else:
        t_axis, b_axis = (1, 0) if model.rnn.batch_first else (0, 1)
        per_input = [{t_axis: "T", b_axis: "B"}] + [{1: "B"} for _ in inputs[1:]]
    return per_input


def _export(model, inputs, dynamo: bool, **kwargs) -> "onnx.ModelProto":
    per_input = _axes(model, inputs)
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {n: torch.export.Dim(n, min=1) for n in ("T", "B")}
            shapes = [{a: dims[n] for a, n in axes.items()} for axes in per_input]
            shapes = (shapes[0], tuple(shapes[1:])) if len(shapes) > 1 else (shapes[0],)
            program = torch.onnx.export(model, inputs, dynamo=True, input_names=names,
                                        dynamic_shapes=shapes, verbose=False, **kwargs)
            return program.model_proto
        f = io.BytesIO()
        torch.onnx.export(model, inputs, f, dynamo=False, input_names=names,
                          dynamic_axes={n: axes for n, axes in zip(names, per_input)},
                          **kwargs)
        return onnx.load_from_string(f.getvalue())


def _run(proto, inputs) -> list:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})


def _check_nodes(proto, kind: str, count: int) -> None:
    """The graph holds ``count`` standard ``kind`` nodes, every node in the default domain,
    and each node's weights W, R and bias B are stored tensors (initializers or constants):
    the reordering to ONNX's gate order is folded at export, not computed by
    Gather/Concat nodes at every run."""
    nodes = list(proto.graph.node)
    stored = {t.name for t in proto.graph.initializer}
    stored |= {o for n in nodes if n.op_type == "Constant" for o in n.output}
    for n in nodes:
        if n.op_type == kind:
            weights = [name for name in n.input[1:4] if name]
            assert weights and all(name in stored for name in weights), \
                (n.input, [(m.op_type, list(m.output)) for m in nodes])
    assert sum(n.op_type == kind for n in nodes) == count, [n.op_type for n in nodes]
    assert all(n.domain in ("", "ai.onnx") for n in nodes), \
        {(n.domain, n.op_type) for n in nodes}
    assert not any(n.op_type in ("Loop", "Scan") for n in nodes)
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "GRU":
            assert attrs.get("linear_before_reset") == 1


def _compare(fast, ref, dynamo: bool, with_state: bool, kind: str, count: int,
             **export_kwargs) -> None:
    proto = _export(fast, _inputs(fast, EXPORT_T, EXPORT_B, with_state), dynamo,
                    **export_kwargs)
    _check_nodes(proto, kind, count)
    for t, b in RUN_SHAPES:
        inputs = _inputs(fast, t, b, with_state)
        got = _run(proto, inputs)
        with torch.no_grad():
            want = ref(*inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, **TOL)


LAYER_CASES = [
    # (id, kind, kwargs, with_state)
    ("lstm", "LSTM", dict(num_layers=2), False),
    ("lstm-bi-bf-state", "LSTM", dict(num_layers=2, bidirectional=True, batch_first=True),
     True),
    ("lstm-nobias-state", "LSTM", dict(bias=False), True),
    ("gru", "GRU", dict(num_layers=2), False),
    ("gru-bi-bf-state", "GRU", dict(num_layers=2, bidirectional=True, batch_first=True), True),
    ("gru-nobias", "GRU", dict(bias=False, bidirectional=True), False),
    ("rnn-tanh", "RNN", dict(num_layers=2), False),
    ("rnn-relu-bi-bf-state", "RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True,
                                         batch_first=True), True),
    ("rnn-relu-nobias", "RNN", dict(nonlinearity="relu", bias=False), True),
]
CELL_CASES = [
    ("lstmcell", "LSTMCell", {}, True),
    ("lstmcell-nostate", "LSTMCell", dict(bias=False), False),
    ("grucell", "GRUCell", {}, True),
    ("grucell-nostate", "GRUCell", {}, False),
    ("rnncell-tanh", "RNNCell", {}, False),
    ("rnncell-relu", "RNNCell", dict(nonlinearity="relu", bias=False), True),
]
_NODE = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN", "LSTMCell": "LSTM", "GRUCell": "GRU",
         "RNNCell": "RNN"}
# The dynamo exporter takes about a second per model: it runs on a subset of the cases.
DYNAMO_LAYER_CASES = [c for c in LAYER_CASES if c[0] in
                      ("lstm", "lstm-bi-bf-state", "gru-bi-bf-state", "gru-nobias", "rnn-tanh",
                       "rnn-relu-bi-bf-state", "lstm-nobias-state")]
DYNAMO_CELL_CASES = [c for c in CELL_CASES if c[0] in ("lstmcell", "grucell-nostate",
                                                       "rnncell-relu")]


def _ids(cases):
    return [c[0] for c in cases]


@pytest.mark.parametrize("case,kind,kwargs,with_state", LAYER_CASES, ids=_ids(LAYER_CASES))
def test_layer_legacy(case, kind, kwargs, with_state):
    fast, ref = _pair(_Model, kind, **kwargs)
    count = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    _compare(fast, ref, False, with_state, kind, count)


@pytest.mark.parametrize("case,kind,kwargs,with_state", DYNAMO_LAYER_CASES,
                         ids=_ids(DYNAMO_LAYER_CASES))
def test_layer_dynamo(case, kind, kwargs, with_state):
    fast, ref = _pair(_Model, kind, **kwargs)
    count = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    _compare(fast, ref, True, with_state, kind, count)


@pytest.mark.parametrize("case,kind,kwargs,with_state", CELL_CASES, ids=_ids(CELL_CASES))
def test_cell_legacy(case, kind, kwargs, with_state):
    fast, ref = _pair(_CellModel, kind, **kwargs)
    _compare(fast, ref, False, with_state, _NODE[kind], 1)


@pytest.mark.parametrize("case,kind,kwargs,with_state", DYNAMO_CELL_CASES,
                         ids=_ids(DYNAMO_CELL_CASES))
def test_cell_dynamo(case, kind, kwargs, with_state):
    fast, ref = _pair(_CellModel, kind, **kwargs)
    _compare(fast, ref, True, with_state, _NODE[kind], 1)


def test_legacy_opset_versions():
    """The symbolic functions serve every opset from 9 (Squeeze/Unsqueeze changed at 13)."""
    fast, ref = _pair(_Model, "GRU", num_layers=2, bidirectional=True)
    for opset in (11, 13, 17):
        _compare(fast, ref, False, False, "GRU", 4, opset_version=opset)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_translation_table_for_exported_programs(kind):
    """A program from torch.export (holding rnnfast's operators) exports with the table."""
    fast, ref = _pair(_Model, kind, num_layers=2, bidirectional=(kind == "LSTM"))
    x = _inputs(fast, EXPORT_T, EXPORT_B, False)
    dims = {n: torch.export.Dim(n, min=1) for n in ("T", "B")}
    with torch.no_grad():
        program = torch.export.export(fast, x, dynamic_shapes=({0: dims["T"], 1: dims["B"]},))
    assert any("rnnfast" in str(n.target) for n in program.graph.nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(program, dynamo=True, verbose=False,
                                  custom_translation_table=rnnfast.onnx_translation_table()
                                  ).model_proto
    _check_nodes(proto, kind, 4 if kind == "LSTM" else 2)
    for t, b in RUN_SHAPES:
        inputs = _inputs(fast, t, b, False)
        with torch.no_grad():
            want = ref(*inputs)
        for g, w in zip(_run(proto, inputs), want):
            torch.testing.assert_close(torch.from_numpy(g), w, **TOL)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_unbatched_input(dynamo):
    ref = nn.LSTM(4, 5, num_layers=2, bidirectional=True).eval()
    fast = rnnfast.LSTM(4, 5, num_layers=2, bidirectional=True).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            proto = torch.onnx.export(fast, (x,), dynamo=True, verbose=False,
                                      dynamic_shapes=({0: torch.export.Dim("T")},)).model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(fast, (x,), f, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "T"}})
            proto = onnx.load_from_string(f.getvalue())
    _check_nodes(proto, "LSTM", 4)
    x = torch.randn(9, 4)
    with torch.no_grad():
        out, (h, c) = ref(x)
    for g, w in zip(_run(proto, (x,)), (out, h, c)):
        torch.testing.assert_close(torch.from_numpy(g), w, **TOL)


def test_plain_rnn_is_one_node_per_layer_not_unrolled():
    """torch.nn.RNN's dynamo export unrolls the time loop; rnnfast's is an RNN node, and
    the graph does not grow with the sequence length."""
    fast, _ = _pair(_Model, "RNN")
    sizes = []
    for t in (4, 12):
        proto = _export(fast, _inputs(fast, t, 2, False), dynamo=False)
        _check_nodes(proto, "RNN", 1)
        sizes.append(len(proto.graph.node))
    assert sizes[0] == sizes[1]


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_projection_is_refused_by_name(dynamo):
    model = rnnfast.LSTM(4, 5, proj_size=3).eval()
    with pytest.raises(Exception) as info:
        _export_plain(model, (torch.randn(5, 2, 4),), dynamo)
    _assert_refusal(info.value, "proj_size")


class _Packed(nn.Module):
    """pack_padded_sequence -> layer -> pad_packed_sequence; returns the padded output and
    the final hidden state."""

    def __init__(self, lib, kind: str, **kwargs):
        super().__init__()
        self.rnn = getattr(lib, kind)(4, 5, batch_first=True, **kwargs)

    def forward(self, x, lengths, *state):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        if len(state) == 0:
            y, h = self.rnn(packed)
        elif len(state) == 1:
            y, h = self.rnn(packed, state[0])
        else:
            y, h = self.rnn(packed, (state[0], state[1]))
        y, _ = pad_packed_sequence(y, batch_first=True)
        return (y,) + (tuple(h) if isinstance(h, tuple) else (h,))


def _packed_inputs(t: int, b: int, states: int, layers: int) -> tuple:
    lengths = torch.randint(1, t + 1, (b,))
    lengths[b // 2] = t  # the padded output is as long as the longest sequence
    return (torch.randn(b, t, 4), lengths) + tuple(torch.randn(layers, b, 5)
                                                   for _ in range(states))


@pytest.mark.parametrize("kind,kwargs,with_state", [
    ("LSTM", dict(num_layers=2), True),
    ("GRU", dict(num_layers=2), False),
    ("RNN", dict(nonlinearity="relu"), True),
], ids=["lstm-state", "gru", "rnn-relu-state"])
def test_packed_sequence_legacy_becomes_sequence_lens(kind, kwargs, with_state):
    """As for torch.nn's layers, torch's exporter turns the packed input of unidirectional
    layers into the padded tensor and the nodes' sequence_lens."""
    ref = _Packed(nn, kind, **kwargs).eval()
    fast = _Packed(rnnfast, kind, **kwargs).eval()
    fast.load_state_dict(ref.state_dict())
    states = (2 if kind == "LSTM" else 1) if with_state else 0
    layers = kwargs.get("num_layers", 1)
    inputs = _packed_inputs(EXPORT_T, EXPORT_B, states, layers)
    names = [f"in{i}" for i in range(len(inputs))]
    axes = [{0: "B", 1: "T"}, {0: "B"}] + [{1: "B"}] * states
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fast, inputs, f, dynamo=False, input_names=names,
                          dynamic_axes=dict(zip(names, axes)))
    proto = onnx.load_from_string(f.getvalue())
    _check_nodes(proto, kind, layers)
    assert all(n.input[4] for n in proto.graph.node if n.op_type == kind)  # sequence_lens
    for t, b in RUN_SHAPES:
        inputs = _packed_inputs(t, b, states, layers)
        with torch.no_grad():
            want = ref(*inputs)
        got = _run(proto, inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, **TOL)


@pytest.mark.parametrize("dynamo,bidirectional", [(False, True), (True, False)],
                         ids=["legacy-bidirectional", "dynamo"])
def test_packed_sequence_refusals_name_the_feature(dynamo, bidirectional):
    model = _Packed(rnnfast, "GRU", bidirectional=bidirectional).eval()
    with pytest.raises(Exception) as info:
        _export_plain(model, _packed_inputs(5, 2, 0, 1), dynamo)
    _assert_refusal(info.value, "PackedSequence")


def _export_plain(model, args, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, args, dynamo=True, verbose=False)
        else:
            torch.onnx.export(model, args, io.BytesIO(), dynamo=False)


def _assert_refusal(error: BaseException, feature: str) -> None:
    """The error (or the one the exporter wraps) is rnnfast's, naming the feature."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    ours = [e for e in chain if isinstance(e, rnnfast.OnnxExportError)]
    assert ours, f"not rnnfast's refusal: {error!r}"
    assert feature in str(ours[0]) and "instead" in str(ours[0])


def test_weight_check_sees_an_unfolded_reordering():
    """The check of :func:`_check_nodes` is not vacuous: without constant folding the
    legacy exporter leaves the Gather/Concat of the reordering in the graph."""
    fast, _ = _pair(_Model, "LSTM")
    proto = _export(fast, _inputs(fast, EXPORT_T, EXPORT_B, False), False,
                    do_constant_folding=False)
    with pytest.raises(AssertionError):
        _check_nodes(proto, "LSTM", 1)


# ------------------------------------------------------------- the exporter's flag elsewhere

def _eager_results(model, inputs) -> list:
    with torch.no_grad():
        out = model(*inputs)
    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        if isinstance(o, PackedSequence):
            flat.append(o.data)
        elif isinstance(o, tuple):
            flat.extend(o)
        else:
            flat.append(o)
    return flat


def test_eager_calls_while_the_dynamo_exporter_runs_elsewhere(monkeypatch):
    """``torch.onnx.export(..., dynamo=True)`` sets a process-wide flag. Eager calls on real
    tensors while it is set (another thread running the model during an export) compute
    the layer, not ONNX placeholders, and take packed input."""
    flags = pytest.importorskip("torch.onnx._internal.exporter._flags")
    x = torch.randn(5, 3, 6)
    packed = pack_padded_sequence(x, torch.tensor([5, 3, 2]))
    cases = [(rnnfast.LSTM(6, 5, num_layers=2, bidirectional=True), (x,)),
             (rnnfast.GRU(6, 5), (x,)), (rnnfast.RNN(6, 5, nonlinearity="relu"), (x,)),
             (rnnfast.LSTM(6, 5), (packed,)), (rnnfast.GRU(6, 5), (packed,)),
             (rnnfast.LSTMCell(6, 5), (x[0],)), (rnnfast.GRUCell(6, 5), (x[0],)),
             (rnnfast.RNNCell(6, 5), (x[0],))]
    want = [_eager_results(m, args) for m, args in cases]
    monkeypatch.setattr(flags, "_is_onnx_exporting", True)
    for (m, args), expected in zip(cases, want):
        got = _eager_results(m, args)
        assert all(g.abs().sum() > 0 for g in got)
        for g, w in zip(got, expected):
            torch.testing.assert_close(g, w, atol=0, rtol=0)

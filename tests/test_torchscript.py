"""TorchScript: torch.jit.trace and torch.jit.script of every rnnfast layer and cell, and of
a model containing them. Results are compared with torch.nn's at other sequence lengths and
batch sizes than traced, after a save/load round trip, and the graphs must call rnnfast's
operators (not torch.nn's kernels)."""
from __future__ import annotations

import io
import warnings
from typing import Optional, Tuple

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

TOL = dict(atol=1e-5, rtol=1e-4)

# (name, rnnfast class, torch.nn class, constructor keyword arguments)
LAYERS = [
    ("lstm", rnnfast.LSTM, nn.LSTM, {}),
    ("lstm-bi-bf", rnnfast.LSTM, nn.LSTM, dict(bidirectional=True, batch_first=True)),
    ("lstm-nobias", rnnfast.LSTM, nn.LSTM, dict(bias=False)),
    ("lstm-proj", rnnfast.LSTM, nn.LSTM, dict(proj_size=3, bidirectional=True)),
    ("gru", rnnfast.GRU, nn.GRU, {}),
    ("gru-bi-bf-nobias", rnnfast.GRU, nn.GRU, dict(bidirectional=True, batch_first=True,
                                                   bias=False)),
    ("rnn-tanh", rnnfast.RNN, nn.RNN, {}),
    ("rnn-relu-bi", rnnfast.RNN, nn.RNN, dict(nonlinearity="relu", bidirectional=True)),
]
CELLS = [
    ("lstmcell", rnnfast.LSTMCell, nn.LSTMCell, {}),
    ("grucell", rnnfast.GRUCell, nn.GRUCell, dict(bias=False)),
    ("rnncell-tanh", rnnfast.RNNCell, nn.RNNCell, {}),
    ("rnncell-relu", rnnfast.RNNCell, nn.RNNCell, dict(nonlinearity="relu")),
]
OP_NAMES = {rnnfast.LSTM: "rnnfast::lstm_forward", rnnfast.GRU: "rnnfast::gru_forward",
            rnnfast.RNN: "rnnfast::rnn_forward", rnnfast.LSTMCell: "rnnfast::lstm_forward",
            rnnfast.GRUCell: "rnnfast::gru_forward", rnnfast.RNNCell: "rnnfast::rnn_forward"}


def _pair(fast_cls, torch_cls, kwargs, *args):
    ref = torch_cls(*args, **kwargs)
    fast = fast_cls(*args, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return fast, ref


def _layer_pair(fast_cls, torch_cls, kwargs):
    return _pair(fast_cls, torch_cls, kwargs, 4, 5, 2)


def _seq(m: nn.Module, t: int, b: int) -> torch.Tensor:
    return torch.randn(b, t, 4) if m.batch_first else torch.randn(t, b, 4)


def _state(ref: nn.Module, b: int):
    d = 2 if ref.bidirectional else 1
    out = ref.proj_size if getattr(ref, "proj_size", 0) else ref.hidden_size
    h = torch.randn(ref.num_layers * d, b, out)
    if isinstance(ref, nn.LSTM):
        return (h, torch.randn(ref.num_layers * d, b, ref.hidden_size))
    return h


def _close(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    else:
        torch.testing.assert_close(a, b, **TOL)


def _ran_ops(fn) -> set:
    """Names of the operators ``fn`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def _roundtrip(m: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    buf.seek(0)
    return torch.jit.load(buf)


def _calls_rnnfast(m: torch.jit.ScriptModule, op: str) -> bool:
    return op in str(m.inlined_graph)


# ----------------------------------------------------------------------------- trace

@pytest.mark.parametrize("name,fast_cls,torch_cls,kwargs", LAYERS, ids=[x[0] for x in LAYERS])
@pytest.mark.parametrize("with_state", [False, True], ids=["nostate", "state"])
def test_trace_layer(name, fast_cls, torch_cls, kwargs, with_state):
    fast, ref = _layer_pair(fast_cls, torch_cls, kwargs)
    args = (_seq(ref, 5, 3),) + ((_state(ref, 3),) if with_state else ())
    traced = torch.jit.trace(fast, args)  # the default check_trace re-runs it: must agree
    assert _calls_rnnfast(traced, OP_NAMES[fast_cls])
    loaded = _roundtrip(traced)
    for t, b in ((7, 2), (3, 5)):
        x = _seq(ref, t, b)
        call = (x, _state(ref, b)) if with_state else (x,)
        want = ref(*call)
        _close(traced(*call), want)
        _close(loaded(*call), want)


@pytest.mark.parametrize("grad_mode", [False, True], ids=["traced-nograd", "traced-grad"])
def test_trace_trains_whatever_the_grad_mode_at_trace_time(grad_mode):
    """need_workspace is decided in the traced graph: a trace made under no_grad trains, and
    one made with grad on runs inference without the workspace."""
    fast, ref = _layer_pair(rnnfast.LSTM, nn.LSTM, dict(bidirectional=True))
    with torch.set_grad_enabled(grad_mode):
        traced = torch.jit.trace(fast, (torch.randn(4, 2, 4),))
    x = torch.randn(6, 3, 4)
    traced(x)[0].square().sum().backward()
    ref(x)[0].square().sum().backward()
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)
    with torch.no_grad():
        _close(traced(x), ref(x))


@pytest.mark.parametrize("name,fast_cls,torch_cls,kwargs", CELLS, ids=[x[0] for x in CELLS])
def test_trace_cell(name, fast_cls, torch_cls, kwargs):
    fast, ref = _pair(fast_cls, torch_cls, kwargs, 4, 5)
    traced = torch.jit.trace(fast, (torch.randn(3, 4),))
    assert _calls_rnnfast(traced, OP_NAMES[fast_cls])
    loaded = _roundtrip(traced)
    x = torch.randn(6, 4)
    _close(traced(x), ref(x))
    _close(loaded(x), ref(x))
    state = (torch.randn(3, 5), torch.randn(3, 5)) if fast_cls is rnnfast.LSTMCell \
        else torch.randn(3, 5)
    traced_state = torch.jit.trace(fast, (torch.randn(3, 4), state))
    x = torch.randn(2, 4)
    state = tuple(s[:2] for s in state) if isinstance(state, tuple) else state[:2]
    _close(traced_state(x, state), ref(x, state))


# ----------------------------------------------------------------------------- script

@pytest.mark.parametrize("name,fast_cls,torch_cls,kwargs", LAYERS, ids=[x[0] for x in LAYERS])
def test_script_layer(name, fast_cls, torch_cls, kwargs):
    fast, ref = _layer_pair(fast_cls, torch_cls, kwargs)
    scripted = torch.jit.script(fast)
    assert type(fast) is fast_cls  # scripting a layer on its own leaves it as it was
    assert _calls_rnnfast(scripted, OP_NAMES[fast_cls])
    ran = _ran_ops(lambda: scripted(_seq(ref, 3, 2)))
    assert OP_NAMES[fast_cls] in ran and not any(n.startswith("aten::" + name[:3]) for n in ran)
    loaded = _roundtrip(scripted)
    for t, b in ((5, 3), (2, 1)):
        x = _seq(ref, t, b)
        state = _state(ref, b)
        _close(scripted(x), ref(x))
        _close(scripted(x, state), ref(x, state))
        _close(loaded(x, state), ref(x, state))
    # unbatched
    x = torch.randn(4, 4)
    _close(scripted(x), ref(x))
    # the scripted layer trains: same gradients as torch.nn
    x = _seq(ref, 4, 2)
    scripted(x)[0].square().sum().backward()
    ref(x)[0].square().sum().backward()
    for (pname, p), q in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=pname)


@pytest.mark.parametrize("name,fast_cls,torch_cls,kwargs", CELLS, ids=[x[0] for x in CELLS])
def test_script_cell(name, fast_cls, torch_cls, kwargs):
    fast, ref = _pair(fast_cls, torch_cls, kwargs, 4, 5)
    scripted = torch.jit.script(fast)
    assert _calls_rnnfast(scripted, OP_NAMES[fast_cls])
    loaded = _roundtrip(scripted)
    for x in (torch.randn(3, 4), torch.randn(4)):
        shape = (3, 5) if x.dim() == 2 else (5,)
        state = (torch.randn(shape), torch.randn(shape)) if fast_cls is rnnfast.LSTMCell \
            else torch.randn(shape)
        _close(scripted(x), ref(x))
        _close(scripted(x, state), ref(x, state))
        _close(loaded(x, state), ref(x, state))


class _Model(nn.Module):
    """Linear -> 2-layer LSTM -> GRU -> RNN -> Linear, plus an LSTM cell and a packed run."""

    def __init__(self, lib):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.lstm = lib.LSTM(6, 5, num_layers=2, batch_first=True)
        self.gru = lib.GRU(5, 5, bidirectional=True, batch_first=True)
        self.rnn = lib.RNN(10, 4, nonlinearity="relu", batch_first=True)
        self.cell = lib.LSTMCell(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.inp(x))
        packed = pack_padded_sequence(y, lengths, batch_first=True, enforce_sorted=False)
        z, h = self.gru(packed)
        y, _ = self.rnn(torch.cat([h[0], h[1]], -1).unsqueeze(1).repeat(1, 2, 1))
        hc = self.cell(y[:, -1])
        return self.out(hc[0])


def test_script_model_containing_layers():
    ref = _Model(nn)
    fast = _Model(rnnfast)
    fast.load_state_dict(ref.state_dict())
    params = dict(fast.named_parameters())
    scripted = torch.jit.script(fast)
    graph = str(scripted.inlined_graph)
    for op in ("rnnfast::lstm_forward", "rnnfast::gru_forward", "rnnfast::rnn_forward"):
        assert op in graph
    loaded = _roundtrip(scripted)
    for b, t in ((3, 6), (2, 4)):
        x = torch.randn(b, t, 4)
        lengths = torch.randint(1, t + 1, (b,))
        want = ref(x, lengths)
        _close(scripted(x, lengths), want)
        _close(loaded(x, lengths), want)
        _close(fast(x, lengths), want)
    # Scripting leaves the eager model as it was: same classes, same parameters.
    assert type(fast.lstm) is rnnfast.LSTM and type(fast.cell) is rnnfast.LSTMCell
    for name, p in fast.named_parameters():
        assert p is params[name]


def test_trace_model_containing_layers():
    ref = _Model(nn)
    fast = _Model(rnnfast)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 2, 4])
    traced = _roundtrip(torch.jit.trace(fast, (x, lengths)))
    for b, t in ((3, 7), (5, 3)):
        x = torch.randn(b, t, 4)
        lengths = torch.randint(1, t + 1, (b,))
        _close(traced(x, lengths), ref(x, lengths))


@pytest.mark.parametrize("name,fast_cls,torch_cls,kwargs", [LAYERS[1], LAYERS[5], LAYERS[7]]
                         + CELLS, ids=[x[0] for x in [LAYERS[1], LAYERS[5], LAYERS[7]] + CELLS])
def test_script_float16_cpu_runs_torch_implementation(name, fast_cls, torch_cls, kwargs):
    """No rnnfast kernel for float16 on the CPU: the scripted module runs torch's, as the
    eager one does."""
    if fast_cls in (rnnfast.LSTMCell, rnnfast.GRUCell, rnnfast.RNNCell):
        fast, ref = _pair(fast_cls, torch_cls, kwargs, 4, 5)
        x = torch.randn(3, 4)
    else:
        fast, ref = _layer_pair(fast_cls, torch_cls, kwargs)
        x = _seq(ref, 5, 3)
    scripted = torch.jit.script(fast.half())
    ref = ref.half()
    x = x.half()
    torch.testing.assert_close(scripted(x), ref(x), atol=0, rtol=0)


@pytest.mark.parametrize("name,fast_cls,torch_cls,kwargs", [LAYERS[0], LAYERS[4], LAYERS[6]]
                         + CELLS, ids=[x[0] for x in [LAYERS[0], LAYERS[4], LAYERS[6]] + CELLS])
def test_script_under_cpu_autocast_matches_eager(name, fast_cls, torch_cls, kwargs):
    """Under CPU autocast a scripted module gives torch.nn's dtype and eager rnnfast's
    values."""
    if fast_cls in (rnnfast.LSTMCell, rnnfast.GRUCell, rnnfast.RNNCell):
        fast, ref = _pair(fast_cls, torch_cls, kwargs, 4, 5)
        x = torch.randn(3, 4)
    else:
        fast, ref = _layer_pair(fast_cls, torch_cls, kwargs)
        x = _seq(ref, 5, 3)
    scripted = torch.jit.script(fast_cls(4, 5, **kwargs) if fast_cls in
                                (rnnfast.LSTMCell, rnnfast.GRUCell, rnnfast.RNNCell)
                                else fast_cls(4, 5, 2, **kwargs))
    scripted.load_state_dict(ref.state_dict())
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        got, eager, want = scripted(x), fast(x), ref(x)
    first = (lambda r: r[0]) if isinstance(want, tuple) else (lambda r: r)
    assert first(got).dtype == first(want).dtype
    torch.testing.assert_close(got, eager, atol=0, rtol=0)


# ----------------------------------------------------------------------- script: subclasses

class _PlainSubclassLSTM(rnnfast.LSTM):
    """A subclass that adds nothing: scripted on its own like rnnfast.LSTM."""


class _PlainSubclassGRU(rnnfast.GRU):
    pass


@pytest.mark.parametrize("fast_cls,torch_cls", [(_PlainSubclassLSTM, nn.LSTM),
                                                (_PlainSubclassGRU, nn.GRU)],
                         ids=["lstm", "gru"])
def test_script_subclass_on_its_own(fast_cls, torch_cls):
    fast, ref = _layer_pair(fast_cls, torch_cls, {})
    scripted = torch.jit.script(fast)
    assert type(fast) is fast_cls
    for t, b in ((5, 3), (2, 1)):
        x = _seq(ref, t, b)
        state = _state(ref, b)
        _close(scripted(x), ref(x))
        _close(scripted(x, state), ref(x, state))


class _ScaledInputGRU(rnnfast.GRU):
    """A subclass with its own forward (tensor input only): scales the input first."""

    def forward(self, input: torch.Tensor, hx: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._forward_tensor(input * 2.0, hx)


class _ScaledInputLSTM(rnnfast.LSTM):
    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        return self._forward_tensor(input * 2.0, hx)


@pytest.mark.parametrize("fast_cls,torch_cls", [(_ScaledInputLSTM, nn.LSTM),
                                                (_ScaledInputGRU, nn.GRU)],
                         ids=["lstm", "gru"])
def test_script_subclass_keeps_its_own_forward(fast_cls, torch_cls):
    """Scripted on its own, a subclass that defines forward runs that forward."""
    fast, ref = _layer_pair(fast_cls, torch_cls, {})
    scripted = torch.jit.script(fast)
    x = _seq(ref, 4, 3)
    _close(fast(x), ref(2.0 * x))
    _close(scripted(x), ref(2.0 * x))


def test_missing_script_pass_warns_once(monkeypatch):
    """When torch.jit.script's preparation pass is not among the calling frames, rnnfast
    cannot tell a layer scripted on its own from one inside a model: it says so (once)."""
    from rnnfast import _torchscript

    monkeypatch.setattr(_torchscript, "_warned_no_pass", False)
    layer = rnnfast.GRU(4, 5)
    with pytest.warns(UserWarning, match="preparation pass"):
        assert layer.__prepare_scriptable__() is layer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert layer.__prepare_scriptable__() is layer

"""Dynamic quantization (``torch.ao.quantization.quantize_dynamic``) of models converted
with ``rnnfast.convert``: the rnnfast layers become torch's dynamic quantized modules when
the spec names torch.nn's class, rnnfast's, a module name, or nothing (torch's default
spec); the quantized model's outputs are bitwise those of the quantized torch.nn model
(same weights, same observers, same quantized kernels); what torch leaves in float
(``nn.RNN``, layers the spec does not name) rnnfast leaves in float too.
"""
from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

import rnnfast


@pytest.fixture(autouse=True)
def _quiet():
    """quantize_dynamic is deprecated in torch 2.13 (in favour of torchao) and says so."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        yield


class Model(nn.Module):
    """Linear -> 2-layer LSTM -> bidirectional GRU -> RNN -> Linear."""

    def __init__(self, batch_first: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.lstm = nn.LSTM(8, 6, num_layers=2, batch_first=batch_first)
        self.gru = nn.GRU(6, 5, bidirectional=True, batch_first=batch_first)
        self.rnn = nn.RNN(10, 3, batch_first=batch_first)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lstm(self.inp(x))[0]
        y = self.gru(y)[0]
        return self.out(self.rnn(y)[0])


class CellModel(nn.Module):
    """One step of each cell."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(4, 6)
        self.gru = nn.GRUCell(6, 5)
        self.rnn = nn.RNNCell(5, 3, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _c = self.lstm(x)
        return self.rnn(self.gru(h))


def pair(make=Model):
    """A torch.nn model in eval mode and its rnnfast conversion (same weights)."""
    ref = make().eval()
    return ref, rnnfast.convert(copy.deepcopy(ref))


def kinds(model: nn.Module) -> dict[str, type]:
    """Child name -> class, rnnfast's float classes named by the torch.nn class they replace."""
    torch_class = rnnfast.quantization.TORCH_CLASSES
    return {name: torch_class.get(type(m), type(m)) for name, m in model.named_children()}


#: spec given to the rnnfast model -> spec given to the torch.nn model.
SPECS = {
    "torch_classes": ({nn.LSTM, nn.GRU, nn.Linear},) * 2,
    "dict_of_torch_classes": ({nn.LSTM: default_dynamic_qconfig, nn.GRU: default_dynamic_qconfig,
                               nn.Linear: default_dynamic_qconfig},) * 2,
    "rnnfast_classes": ({rnnfast.LSTM, rnnfast.GRU, nn.Linear}, {nn.LSTM, nn.GRU, nn.Linear}),
    "both_classes": ({rnnfast.LSTM, nn.GRU, nn.Linear}, {nn.LSTM, nn.GRU, nn.Linear}),
    "module_names": ({"lstm", "gru", "inp", "out"},) * 2,
    "default_spec": (None, None),
}


@pytest.mark.parametrize("spec", SPECS)
def test_layers_quantize_like_torch(spec):
    ref, fast = pair()
    x = torch.randn(7, 3, 4)
    spec_fast, spec_ref = SPECS[spec]
    q_ref = quantize_dynamic(ref, spec_ref)
    q_fast = quantize_dynamic(fast, spec_fast)
    assert kinds(q_fast) == kinds(q_ref)
    assert type(q_fast.lstm) is nnqd.LSTM and type(q_fast.gru) is nnqd.GRU
    # torch has no dynamic quantized nn.RNN: it stays in float, in both models.
    assert type(q_ref.rnn) is nn.RNN and type(q_fast.rnn) is rnnfast.RNN
    z = q_ref.inp(x)
    assert torch.equal(q_fast.lstm(z)[0], q_ref.lstm(z)[0])
    y = q_ref.lstm(z)[0]
    assert torch.equal(q_fast.gru(y)[0], q_ref.gru(y)[0])
    # Whole model: only the float RNN (rnnfast's kernel against torch's) differs, by float
    # rounding.
    torch.testing.assert_close(q_fast(x), q_ref(x), atol=1e-5, rtol=1e-4)
    # Quantization changed the numbers (int8 weights): the layers did not stay in float.
    assert not torch.allclose(q_fast.lstm(z)[0], fast.lstm(z)[0], atol=1e-6, rtol=0)
    # The float model is untouched, and no qconfig is left anywhere.
    assert type(fast.lstm) is rnnfast.LSTM
    assert not any(hasattr(m, "qconfig") for m in (*fast.modules(), *q_fast.modules()))


def test_only_what_the_spec_names_is_quantized():
    ref, fast = pair()
    y = torch.randn(7, 3, 6)
    q_ref = quantize_dynamic(ref, {nn.GRU})
    q_fast = quantize_dynamic(fast, {nn.GRU})
    assert kinds(q_fast) == kinds(q_ref)
    assert type(q_fast.lstm) is rnnfast.LSTM and type(q_fast.inp) is nn.Linear
    assert torch.equal(q_fast.gru(y)[0], q_ref.gru(y)[0])
    # Naming the plain RNN changes nothing, in torch as in rnnfast.
    for spec in ({nn.RNN}, {rnnfast.RNN}):
        q_fast = quantize_dynamic(fast, spec)
        assert kinds(q_fast) == kinds(quantize_dynamic(ref, {nn.RNN})) == kinds(ref)
        assert type(q_fast.rnn) is rnnfast.RNN


def test_batch_first_and_inplace():
    ref, fast = pair(lambda: Model(batch_first=True))
    y = torch.randn(3, 7, 8)
    q_ref = quantize_dynamic(ref, {nn.LSTM, nn.GRU}, inplace=True)
    q_fast = quantize_dynamic(fast, {nn.LSTM, nn.GRU}, inplace=True)
    assert q_fast is fast and type(fast.lstm) is nnqd.LSTM and fast.lstm.batch_first
    out_fast, (h_fast, c_fast) = q_fast.lstm(y)
    out_ref, (h_ref, c_ref) = q_ref.lstm(y)
    assert torch.equal(out_fast, out_ref) and torch.equal(h_fast, h_ref)
    assert torch.equal(c_fast, c_ref)


@pytest.mark.parametrize("spec", [{nn.LSTMCell, nn.GRUCell, nn.RNNCell},
                                  {rnnfast.LSTMCell, rnnfast.GRUCell, rnnfast.RNNCell}, None],
                         ids=["torch_classes", "rnnfast_classes", "default_spec"])
def test_cells_quantize_like_torch(spec):
    ref, fast = pair(CellModel)
    x = torch.randn(3, 4)
    q_ref = quantize_dynamic(ref, {nn.LSTMCell, nn.GRUCell, nn.RNNCell})
    q_fast = quantize_dynamic(fast, spec)
    assert kinds(q_fast) == kinds(q_ref) == {
        "lstm": nnqd.LSTMCell, "gru": nnqd.GRUCell, "rnn": nnqd.RNNCell}
    assert q_fast.rnn.nonlinearity == "relu"
    assert torch.equal(q_fast(x), q_ref(x))  # every cell quantized: bitwise


def test_float16_dynamic_quantization():
    ref, fast = pair()
    y = torch.randn(7, 3, 8)
    q_ref = quantize_dynamic(ref, {nn.LSTM, nn.GRU}, dtype=torch.float16)
    q_fast = quantize_dynamic(fast, {nn.LSTM, nn.GRU}, dtype=torch.float16)
    assert type(q_fast.lstm) is nnqd.LSTM and type(q_fast.gru) is nnqd.GRU
    assert torch.equal(q_fast.lstm(y)[0], q_ref.lstm(y)[0])


def test_subclasses_are_matched_by_their_own_type():
    """torch matches specs by exact type: a subclass of nn.LSTM is not quantized by
    {nn.LSTM}; neither is a subclass of rnnfast.LSTM."""
    class TorchSub(nn.LSTM):
        pass

    class FastSub(rnnfast.LSTM):
        pass

    class Holder(nn.Module):
        def __init__(self, cls):
            super().__init__()
            self.lstm = cls(4, 6)

    for cls in (TorchSub, FastSub):
        assert type(quantize_dynamic(Holder(cls), {nn.LSTM, rnnfast.LSTM}).lstm) is cls


def test_layer_without_bias_fails_as_torch_does():
    """torch's from_float asserts on bias=False; the same error, not a silent float layer."""
    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, bias=False)

    ref, fast = pair(NoBias)
    errors = []
    for model in (ref, fast):
        with pytest.raises(AssertionError) as info:
            quantize_dynamic(model, {nn.LSTM})
        errors.append(str(info.value))
    assert errors[0] == errors[1] == "mod.bias must be True"


def test_projection_is_refused_by_name():
    """torch.nn's LSTM with proj_size quantizes to a module that fails when run; rnnfast
    refuses at quantization time, naming the feature and the way out (leave it in float)."""
    class Proj(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, proj_size=3)
            self.gru = nn.GRU(3, 5)

    ref, fast = pair(Proj)
    with pytest.raises(RuntimeError, match="proj_size > 0 is not supported"):
        quantize_dynamic(fast, {nn.LSTM})
    q_ref = quantize_dynamic(ref, {nn.LSTM})
    with pytest.raises(RuntimeError):  # torch.nn's quantized projection LSTM cannot run
        q_ref.lstm(torch.randn(5, 2, 4))
    q_fast = quantize_dynamic(fast, {"gru"})  # the way out: leave the LSTM in float
    assert type(q_fast.lstm) is rnnfast.LSTM and type(q_fast.gru) is nnqd.GRU


def test_qconfig_attribute_exists_only_during_quantize_dynamic():
    """Outside quantize_dynamic, qconfig propagation (static prepare, QAT) sees rnnfast's
    classes as themselves: a spec naming torch.nn's class does not reach them."""
    m = rnnfast.LSTM(4, 6)
    assert not hasattr(m, "qconfig")
    torch.ao.quantization.propagate_qconfig_(m, {nn.LSTM: default_dynamic_qconfig})
    assert m.qconfig is None  # torch's answer for a class the spec does not name
    del m.qconfig
    assert not hasattr(m, "qconfig")
    torch.ao.quantization.propagate_qconfig_(m, {rnnfast.LSTM: default_dynamic_qconfig})
    assert m.qconfig is not None


def test_to_torch_shares_parameters():
    fast = rnnfast.LSTM(4, 6, num_layers=2, proj_size=3, bidirectional=True).eval()
    twin = rnnfast.quantization.to_torch(fast)
    assert type(twin) is nn.LSTM and not twin.training
    assert all(a is b for a, b in zip(fast.parameters(), twin.parameters()))
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(twin(x)[0], fast(x)[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(TypeError, match="rnnfast layer or cell"):
        rnnfast.quantization.to_torch(nn.LSTM(4, 6))


def test_unknown_propagation_step_warns_and_leaves_float(monkeypatch):
    """If torch's propagation step cannot be identified (another torch), a spec naming
    torch.nn's classes cannot reach rnnfast's layers: they stay in float, with a warning
    that says how to name them instead; a spec naming rnnfast's classes still works."""
    monkeypatch.setattr(rnnfast.quantization, "_PROPAGATE_STEP", None)
    monkeypatch.setattr(rnnfast.quantization, "_warned_no_step", False)
    _, fast = pair()
    with pytest.warns(UserWarning, match="Name rnnfast's classes"):
        q_fast = quantize_dynamic(fast, {nn.LSTM})
    assert type(q_fast.lstm) is rnnfast.LSTM
    q_fast = quantize_dynamic(fast, {rnnfast.LSTM})
    assert type(q_fast.lstm) is nnqd.LSTM


_HIDE_TORCH_INTERNALS = """
import functools
import importlib
import torch
q = importlib.import_module("torch.ao.quantization.quantize")
# torch calls it by this name; rnnfast no longer recognises its code object
q._propagate_qconfig_helper = functools.partial(q._propagate_qconfig_helper)
del torch._jit_internal._overload_method
del torch._C._functorch.peek_interpreter_stack
del torch._C._functorch.get_interpreter_stack
"""


def test_import_survives_renamed_torch_internals():
    """``import rnnfast`` does not depend on the torch internals it reads: with them gone,
    it imports, its layers run, and what needed them says so when used."""
    code = _HIDE_TORCH_INTERNALS + """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import rnnfast
    x = torch.randn(5, 2, 4)
    m = rnnfast.LSTM(4, 6)
    ref = torch.nn.LSTM(4, 6)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x)[0], ref(x)[0], atol=1e-5, rtol=1e-4)
    torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(m), {torch.nn.LSTM})
messages = " | ".join(str(w.message) for w in caught)
assert "transform" in messages and "qconfig propagation" in messages, messages
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]

"""rnnfast.convert(model): every torch.nn.LSTM/GRU/RNN/LSTMCell/GRUCell/RNNCell inside a
model, however deeply nested, becomes its rnnfast equivalent with the same weights, dtype,
device, requires_grad flags and train/eval mode, so the model computes the same outputs;
torch.nn subclasses with their own forward are left alone, with a warning.

Then the real use: PyTorch's word_language_model example (Embedding, 2-layer LSTM/GRU/RNN,
Linear decoder, truncated BPTT with the hidden state carried across batches, gradient
clipping, SGD), trained with torch.nn and converted to rnnfast: same losses, same weights.

The extension is required: these tests fail (not skip) when rnnfast cannot be imported.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnfast
from conftest import TOLERANCES, assert_close, torch_native_cpu_rnn

#: torch.nn class -> name of the rnnfast class that replaces it
TARGETS = {
    nn.LSTM: "LSTM", nn.GRU: "GRU", nn.RNN: "RNN",
    nn.LSTMCell: "LSTMCell", nn.GRUCell: "GRUCell", nn.RNNCell: "RNNCell",
}
TORCH_TYPES = tuple(TARGETS)


def fast_class(torch_cls):
    return getattr(rnnfast, TARGETS[torch_cls])


def convert_quietly(model):
    """rnnfast.convert, failing on any warning (only skipped subclasses may warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return rnnfast.convert(model)


def torch_modules(model):
    """Names of the modules in ``model`` that are exactly torch.nn recurrent classes."""
    return [name for name, m in model.named_modules() if type(m) in TORCH_TYPES]


def assert_same_parameters(got: nn.Module, expected: nn.Module):
    """Same parameter names, in the same order, with equal values, dtype, device and
    requires_grad flags."""
    got_p = list(got.named_parameters())
    exp_p = list(expected.named_parameters())
    assert [n for n, _ in got_p] == [n for n, _ in exp_p]
    for (name, p), (_, q) in zip(got_p, exp_p):
        assert isinstance(p, nn.Parameter), name
        assert p.dtype == q.dtype and p.device == q.device, name
        assert p.requires_grad == q.requires_grad, name
        assert torch.equal(p, q), name
    assert [(n, b.dtype) for n, b in got.named_buffers()] == \
        [(n, b.dtype) for n, b in expected.named_buffers()]


# ------------------------------------------------------------------- single modules

SINGLE = {
    "lstm": lambda dt: nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3,
                               batch_first=True, dtype=dt),
    "lstm_plain": lambda dt: nn.LSTM(5, 7, dtype=dt),
    "gru": lambda dt: nn.GRU(5, 7, num_layers=2, bidirectional=True, bias=False, dtype=dt),
    "rnn_tanh": lambda dt: nn.RNN(5, 7, num_layers=3, dropout=0.25, dtype=dt),
    "rnn_relu": lambda dt: nn.RNN(5, 7, nonlinearity="relu", batch_first=True, dtype=dt),
    "lstm_cell": lambda dt: nn.LSTMCell(5, 7, dtype=dt),
    "gru_cell": lambda dt: nn.GRUCell(5, 7, bias=False, dtype=dt),
    "rnn_cell_tanh": lambda dt: nn.RNNCell(5, 7, dtype=dt),
    "rnn_cell_relu": lambda dt: nn.RNNCell(5, 7, nonlinearity="relu", dtype=dt),
}

#: constructor attributes that must carry over
ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
         "bidirectional", "proj_size", "mode", "nonlinearity")


def _call(m, dtype):
    """Forward (and backward) a recurrent module on a fixed input; returns the output
    tensors and the parameter gradients."""
    m.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(3)
    if hasattr(m, "num_layers"):  # a layer: (T, B, I); a cell: (B, I)
        shape = (3, 4, m.input_size)
    else:
        shape = (3, m.input_size)
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    with torch_native_cpu_rnn():
        out = m(x)
    flat = []
    for t in (out if isinstance(out, tuple) else (out,)):
        flat.extend(t if isinstance(t, tuple) else (t,))
    sum((t * (i + 1)).sum() for i, t in enumerate(flat)).backward()
    return flat, [p.grad for p in m.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("which", list(SINGLE))
def test_convert_single_module(which, training, dtype):
    """A recurrent module passed directly: convert returns its replacement."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's dropout-with-one-layer warning
        original = SINGLE[which](dtype).train(training)
    reference = copy.deepcopy(original)
    converted = convert_quietly(original)
    assert type(converted) is fast_class(type(reference))
    assert converted.training == training
    for attr in ATTRS:
        if hasattr(reference, attr):
            assert getattr(converted, attr) == getattr(reference, attr), attr
    assert_same_parameters(converted, reference)
    if training and getattr(reference, "dropout", 0):
        reference.eval(), converted.eval()  # dropout masks are tested elsewhere
    exp_out, exp_grads = _call(reference, dtype)
    got_out, got_grads = _call(converted, dtype)
    assert len(got_out) == len(exp_out)
    for a, b in zip(got_out + got_grads, exp_out + exp_grads):
        assert_close(a, b)


# ------------------------------------------------------------------- nested models

class Wrapper(nn.Module):
    """A custom module holding a recurrent layer as an attribute."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[0]


class Zoo(nn.Module):
    """Every kind of recurrent module, in every kind of container, several levels deep."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True)             # attribute
        self.seq = nn.Sequential(nn.Linear(12, 5), nn.Tanh(),
                                 Wrapper(nn.GRU(5, 6, batch_first=True)))   # Sequential
        self.cells = nn.ModuleList([nn.LSTMCell(6, 3), nn.GRUCell(3, 3),
                                    nn.RNNCell(3, 3, nonlinearity="relu")])  # ModuleList
        self.heads = nn.ModuleDict({
            "rnn": nn.RNN(6, 4, num_layers=2, nonlinearity="relu"),              # ModuleDict
            "deep": nn.Sequential(nn.Sequential(Wrapper(nn.RNN(6, 2, bias=False)))),
            "cell": nn.RNNCell(6, 2),
        })

    def forward(self, x):                                   # x: (T, B, 4)
        y, _ = self.lstm(x)                                 # (T, B, 12)
        y = self.seq(y.transpose(0, 1))                     # (B, T, 6)
        last = y[:, -1]                                     # (B, 6)
        h, c = self.cells[0](last)
        h = self.cells[1](h)
        h = self.cells[2](h, h)
        r, _ = self.heads["rnn"](y.transpose(0, 1))         # (T, B, 4)
        d = self.heads["deep"](y.transpose(0, 1))           # (T, B, 2)
        e = self.heads["cell"](last)
        return torch.cat([h, c, r[-1], d[-1], e], dim=-1)


def _outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch_native_cpu_rnn():
        out = model(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_convert_nested_model(dtype):
    model = Zoo().to(dtype)
    model.heads.eval()          # mixed modes must be kept module by module
    model.cells[1].eval()
    reference = copy.deepcopy(model)
    expected_names = torch_modules(reference)
    assert len(expected_names) == 8

    converted = convert_quietly(model)
    assert isinstance(converted, Zoo)
    assert torch_modules(converted) == []
    got = dict(converted.named_modules())
    for name, old in reference.named_modules():
        new = got[name]  # same module tree, same names
        if type(old) in TORCH_TYPES:
            assert type(new) is fast_class(type(old)), name
        else:
            assert type(new) is type(old), name
        assert new.training == old.training, name
    assert_same_parameters(converted, reference)

    x = torch.randn(5, 3, 4, dtype=dtype)
    for a, b in zip(_outputs_and_grads(converted, x), _outputs_and_grads(reference, x)):
        assert_close(a, b)


def test_convert_keeps_requires_grad_and_shared_modules():
    """A frozen layer stays frozen; a layer reachable under two names stays one layer
    (its parameters shared), as in the original."""
    shared = nn.GRU(4, 5)
    model = nn.ModuleDict({"a": Wrapper(shared), "b": Wrapper(shared),
                           "frozen": nn.LSTM(4, 5)})
    for p in model["frozen"].parameters():
        p.requires_grad_(False)
    reference = copy.deepcopy(model)
    n_params = len(list(model.parameters()))
    converted = convert_quietly(model)
    assert converted["a"].inner is converted["b"].inner
    assert type(converted["a"].inner) is rnnfast.GRU
    assert len(list(converted.parameters())) == n_params
    assert all(not p.requires_grad for p in converted["frozen"].parameters())
    assert_same_parameters(converted, reference)


class CustomLSTM(nn.LSTM):
    """A torch.nn.LSTM subclass with its own forward: rnnfast cannot know what it does."""

    def forward(self, input, hx=None):
        out, state = super().forward(input, hx)
        return out * 2, state


def test_custom_subclass_left_alone_with_warning():
    model = nn.Sequential(CustomLSTM(4, 5), Wrapper(nn.LSTM(5, 5)))
    custom = model[0]
    with pytest.warns(UserWarning, match="CustomLSTM") as record:
        converted = rnnfast.convert(model)
    assert converted[0] is custom and type(converted[0]) is CustomLSTM
    assert type(converted[1].inner) is rnnfast.LSTM  # its siblings are still converted
    assert any("CustomLSTM" in str(w.message) for w in record)


def test_custom_subclass_as_root_left_alone_with_warning():
    model = CustomLSTM(4, 5)
    with pytest.warns(UserWarning, match="CustomLSTM"):
        converted = rnnfast.convert(model)
    assert converted is model


def test_nothing_to_convert():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    reference = copy.deepcopy(model)
    converted = convert_quietly(model)
    assert [type(m) for m in converted.modules()] == [type(m) for m in reference.modules()]
    assert_same_parameters(converted, reference)


def test_convert_is_idempotent():
    """Converting a converted model (or an rnnfast module) changes nothing and warns
    about nothing."""
    model = convert_quietly(Zoo())
    types = [(n, type(m)) for n, m in model.named_modules()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    again = convert_quietly(model)
    assert [(n, type(m)) for n, m in again.named_modules()] == types
    for n, p in again.named_parameters():
        assert torch.equal(p, params[n]), n
    fast = rnnfast.GRU(3, 4)
    assert convert_quietly(fast) is fast


def test_converted_model_state_dict_interchangeable():
    """A checkpoint of the torch.nn model loads into the converted one and back."""
    model = Zoo()
    state = copy.deepcopy(model.state_dict())
    converted = convert_quietly(copy.deepcopy(model))
    assert list(converted.state_dict()) == list(state)
    converted.load_state_dict(state)
    Zoo().load_state_dict(converted.state_dict())


# ------------------------------------------------- word_language_model (PyTorch example)

class RNNModel(nn.Module):
    """PyTorch's examples/word_language_model/model.py RNNModel: an encoder (Embedding),
    a recurrent stack, a decoder (Linear), dropout on the embedding and on the output.
    ``rnn_dropout`` is the recurrent layer's own inter-layer dropout (the example passes
    ``dropout`` there too)."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, rnn_dropout=0.0,
                 tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=rnn_dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity,
                              dropout=rnn_dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            assert nhid == ninp
            self.decoder.weight = self.encoder.weight
        self.init_weights()
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    """Detach the hidden state from its history (truncated BPTT), as in the example."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


def batchify(data, bsz):
    """(N,) tokens -> (N // bsz, bsz) columns, as in the example."""
    nbatch = data.size(0) // bsz
    return data[: nbatch * bsz].view(bsz, -1).t().contiguous()


def get_batch(source, i, bptt):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def train_epoch(model, data, bsz, bptt, lr, clip, seed):
    """The example's train(): truncated BPTT, clip_grad_norm_, plain SGD updates. Returns
    the per-batch training losses, the final hidden state and the loss of an evaluation
    pass over ``data`` afterwards."""
    torch.manual_seed(seed)  # nn.Dropout draws its masks from this stream
    criterion = nn.NLLLoss()
    model.train()
    hidden = model.init_hidden(bsz)
    losses = []
    for i in range(0, data.size(0) - 1, bptt):
        x, targets = get_batch(data, i, bptt)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(x, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-lr)
        losses.append(loss.detach())
    model.eval()
    with torch.no_grad():
        hidden = model.init_hidden(bsz)
        total = 0.0
        for i in range(0, data.size(0) - 1, bptt):
            x, targets = get_batch(data, i, bptt)
            output, hidden = model(x, hidden)
            total = total + len(x) * criterion(output, targets)
        eval_loss = total / (data.size(0) - 1)
    final = hidden if isinstance(hidden, tuple) else (hidden,)
    return torch.stack(losses), final, eval_loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("rnn_dropout", [0.0, 0.2], ids=["rnndrop0", "rnndrop0.2"])
@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
def test_word_language_model_training_matches(rnn_type, rnn_dropout, dtype):
    """Train a torch.nn model and a converted copy for 4 truncated-BPTT batches with the
    example's defaults (lr 20, clip 0.25, dropout 0.2): same losses and final weights.

    Dropout: nn.Dropout (embedding and output) consumes the RNG identically in both models.
    With ``rnn_dropout`` > 0 the recurrent layer's inter-layer masks must also be drawn like
    torch's (at::dropout on each layer's output, layer order; see test_reference.py).

    Tolerance (float32): the project's float32 tolerance (atol 1e-5, rtol 1e-4). What it
    must absorb: each implementation's float32 rounding, accumulated through 4 SGD steps.
    Clipping bounds every step to lr * clip = 5 in norm, so a relative gradient error e
    moves the weights by at most ~5e; torch's own float32 run of this very test deviates
    from its float64 run by < 1e-6 in losses and weights (measured: 2e-7 .. 5e-7), so
    1e-5 leaves a 20x margin for a second float32 implementation. float64: 1e-10.
    """
    ntoken, ninp, nhid, bsz, bptt = 50, 16, 16, 8, 10
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, ntoken, (bsz * 41,), generator=gen)
    data = batchify(tokens, bsz)  # (41, 8): 4 batches of 10 steps

    torch.manual_seed(0)
    tie = rnn_type.startswith("RNN")
    model = RNNModel(rnn_type, ntoken, ninp, nhid, 2, dropout=0.2, rnn_dropout=rnn_dropout,
                     tie_weights=tie).to(dtype)
    fast = convert_quietly(copy.deepcopy(model))
    assert type(fast.rnn) is fast_class(type(model.rnn))
    assert torch_modules(fast) == []
    assert_same_parameters(fast, model)
    if tie:
        assert fast.decoder.weight is fast.encoder.weight

    initial_w_hh = model.rnn.weight_hh_l0.detach().clone()
    with torch_native_cpu_rnn():
        exp_losses, exp_hidden, exp_eval = train_epoch(model, data, bsz, bptt, 20.0, 0.25, 5)
    got_losses, got_hidden, got_eval = train_epoch(fast, data, bsz, bptt, 20.0, 0.25, 5)

    tol = TOLERANCES[dtype]
    assert len(got_losses) == 4
    torch.testing.assert_close(got_losses, exp_losses, **tol, msg=lambda m: "losses: " + m)
    torch.testing.assert_close(got_eval, exp_eval, **tol, msg=lambda m: "eval loss: " + m)
    for a, b in zip(got_hidden, exp_hidden):
        assert_close(a, b, dtype, msg="final hidden state")
    got_params = dict(fast.named_parameters())
    for name, p in model.named_parameters():
        assert_close(got_params[name].detach(), p.detach(), dtype, msg=name)
    # and the training really moved the weights
    assert not torch.allclose(got_params["rnn.weight_hh_l0"], initial_w_hh)


def test_convert_keeps_hooks_and_their_handles():
    """Forward hooks registered before convert keep firing, and their handles still
    remove them."""
    model = torch.nn.Sequential(torch.nn.GRU(4, 5))
    calls = []
    handle = model[0].register_forward_hook(lambda mod, inp, out: calls.append(type(mod)))
    rnnfast.convert(model)
    assert isinstance(model[0], rnnfast.GRU)
    model(torch.randn(3, 2, 4))
    assert calls == [rnnfast.GRU]
    handle.remove()
    model(torch.randn(3, 2, 4))
    assert calls == [rnnfast.GRU]

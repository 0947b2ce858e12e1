"""The reference (rnnfast/reference.py) against torch.nn.LSTM, GRU, RNN (tanh and relu) and
the three cells: outputs, final states and every gradient. This validates the executable
spec itself; it needs only torch, not the compiled extension (the reference is loaded by
file path)."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from conftest import (
    FORMS,
    assert_close,
    assert_results_close,
    load_reference,
    make_h0,
    make_hx,
    make_input,
    run_rnn,
)

ref = load_reference()


class ReferenceLSTM(nn.LSTM):
    """torch.nn.LSTM's parameters and input handling, with the maths of the reference.

    Only the PackedSequence bookkeeping is done here (permuting hx into the packed batch
    order and back), as torch.nn.LSTM does around its kernel."""

    def forward(self, input, hx=None):
        args = (ref.params_from_module(self), self.num_layers, self.bidirectional,
                self.batch_first, self.dropout, self.training)
        if not isinstance(input, PackedSequence):
            return ref.lstm(input, hx, *args)
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None and sorted_indices is not None:
            hx = tuple(s.index_select(1, sorted_indices) for s in hx)
        out, (h_n, c_n) = ref.lstm(data, hx, *args, batch_sizes=batch_sizes)
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
            c_n = c_n.index_select(1, unsorted_indices)
        return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)


def _pair(input_size, hidden_size, dtype, **kwargs):
    """A torch.nn.LSTM and a ReferenceLSTM with identical weights."""
    torch_lstm = nn.LSTM(input_size, hidden_size, dtype=dtype, **kwargs)
    ref_lstm = ReferenceLSTM(input_size, hidden_size, dtype=dtype, **kwargs)
    ref_lstm.load_state_dict(torch_lstm.state_dict())
    return torch_lstm, ref_lstm


def _compare(num_layers, bidirectional, proj_size, bias, batch_first, form, with_hx, dtype,
             steps=4, batch=3, input_size=5, hidden_size=6, **extra):
    torch_lstm, ref_lstm = _pair(
        input_size, hidden_size, dtype, num_layers=num_layers, bias=bias,
        batch_first=batch_first, bidirectional=bidirectional, proj_size=proj_size, **extra,
    )
    x, lengths = make_input(form, steps, batch, input_size, batch_first, dtype)
    hx = None
    if with_hx:
        d = 2 if bidirectional else 1
        hx = make_hx(form, num_layers * d, batch, proj_size or hidden_size, hidden_size, dtype)
    expected, grads = run_rnn(torch_lstm, x, hx, form, batch_first, lengths)
    got, _ = run_rnn(ref_lstm, x, hx, form, batch_first, lengths, grads)
    assert_results_close(got, expected, dtype)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize(
    "num_layers,bidirectional,proj_size,bias,batch_first",
    list(itertools.product([1, 2], [False, True], [0, 3], [True, False], [False, True])),
)
def test_matches_torch_float64(num_layers, bidirectional, proj_size, bias, batch_first,
                               form, with_hx):
    _compare(num_layers, bidirectional, proj_size, bias, batch_first, form, with_hx,
             torch.float64)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch_float32(form, bidirectional):
    _compare(2, bidirectional, 0, True, False, form, True, torch.float32)


@pytest.mark.parametrize(
    "steps,batch,hidden_size",
    [(1, 3, 6), (4, 1, 6), (4, 3, 1), (5, 4, 7), (1, 1, 1)],
)
@pytest.mark.parametrize("form", FORMS)
def test_odd_sizes(steps, batch, hidden_size, form):
    _compare(2, True, 0, True, False, form, True, torch.float64,
             steps=steps, batch=batch, hidden_size=hidden_size)


def test_empty_batch():
    _compare(2, True, 0, True, False, "batched", True, torch.float64, batch=0)


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
def test_dropout_train_mode_matches_torch_rng(form):
    """torch's CPU LSTM draws its inter-layer dropout masks with at::dropout on each layer's
    (time-major or packed) output, in layer order; the reference does the same through
    F.dropout, so under the same seed even training-mode dropout agrees."""
    torch_lstm, ref_lstm = _pair(5, 6, torch.float64, num_layers=3, dropout=0.5,
                                 bidirectional=True)
    torch_lstm.train()
    ref_lstm.train()
    x, lengths = make_input(form, 4, 3, 5, False, torch.float64)
    torch.manual_seed(123)
    expected, grads = run_rnn(torch_lstm, x, None, form, False, lengths)
    torch.manual_seed(123)
    got, _ = run_rnn(ref_lstm, x, None, form, False, lengths, grads)
    assert_results_close(got, expected, torch.float64)


def test_lstm_cell_matches_torch_cell():
    cell = nn.LSTMCell(5, 6, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    h = torch.randn(3, 6, dtype=torch.float64)
    c = torch.randn(3, 6, dtype=torch.float64)
    h_exp, c_exp = cell(x, (h, c))
    h_got, c_got = ref.lstm_cell(x, h, c, cell.weight_ih, cell.weight_hh,
                                 cell.bias_ih, cell.bias_hh)
    assert_close(h_got, h_exp)
    assert_close(c_got, c_exp)


def test_lstm_cell_projection():
    """h_new = w_hr @ (o * tanh(c_new)), the cell state is not projected."""
    H, P = 6, 3
    x = torch.randn(2, 5, dtype=torch.float64)
    h = torch.randn(2, P, dtype=torch.float64)
    c = torch.randn(2, H, dtype=torch.float64)
    w_ih = torch.randn(4 * H, 5, dtype=torch.float64)
    w_hh = torch.randn(4 * H, P, dtype=torch.float64)
    w_hr = torch.randn(P, H, dtype=torch.float64)
    h_unproj, c_unproj = ref.lstm_cell(x, h, c, w_ih, w_hh, None, None)
    h_proj, c_proj = ref.lstm_cell(x, h, c, w_ih, w_hh, None, None, w_hr)
    assert h_proj.shape == (2, P)
    assert_close(c_proj, c_unproj)
    assert_close(h_proj, h_unproj @ w_hr.T)


def test_packed_layer_reverse_semantics():
    """Packed reverse direction: each sequence starts at its own last step from h0/c0.
    Running each sequence alone (unpacked) must give the same outputs and final states."""
    H, I = 4, 3
    lengths = [4, 2, 2, 1]
    batch_sizes = torch.tensor([4, 3, 1, 1])
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in lengths]
    data = torch.cat([torch.stack([s[t] for s in seqs if len(s) > t])
                      for t in range(len(batch_sizes))])
    w = (torch.randn(4 * H, I, dtype=torch.float64), torch.randn(4 * H, H, dtype=torch.float64),
         torch.randn(4 * H, dtype=torch.float64), torch.randn(4 * H, dtype=torch.float64))
    h0 = torch.randn(4, H, dtype=torch.float64)
    c0 = torch.randn(4, H, dtype=torch.float64)
    for reverse in (False, True):
        y, h_n, c_n = ref.lstm_layer(data, h0, c0, *w, batch_sizes=batch_sizes, reverse=reverse)
        assert y.shape == (sum(lengths), H)
        for b, s in enumerate(seqs):
            y_b, h_b, c_b = ref.lstm_layer(s.unsqueeze(1), h0[b:b + 1], c0[b:b + 1], *w,
                                           reverse=reverse)
            rows = [int(batch_sizes[:t].sum()) + b for t in range(len(s))]
            assert_close(y[rows], y_b[:, 0])
            assert_close(h_n[b], h_b[0])
            assert_close(c_n[b], c_b[0])


def test_params_from_module_order_and_names():
    m = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, bias=False)
    params = ref.params_from_module(m)
    assert len(params) == 4
    assert params[1][0] is m.weight_ih_l0_reverse
    assert params[2][1] is m.weight_hh_l1
    assert params[3][4] is m.weight_hr_l1_reverse
    assert all(p[2] is None and p[3] is None for p in params)
    m = nn.LSTM(3, 4)
    ((w_ih, w_hh, b_ih, b_hh, w_hr),) = ref.params_from_module(m)
    assert (w_ih, w_hh, b_ih, b_hh) == (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    assert w_hr is None


# ----------------------------------------------------------------------- GRU and RNN

def _single_state_forward(self, input, hx, fn, **extra):
    """forward() of ReferenceGRU/ReferenceRNN: torch.nn's bookkeeping around ``fn``
    (ref.gru or ref.rnn), which does the maths."""
    args = (ref.params_from_module(self), self.num_layers, self.bidirectional,
            self.batch_first, self.dropout, self.training)
    if not isinstance(input, PackedSequence):
        return fn(input, hx, *args, **extra)
    data, batch_sizes, sorted_indices, unsorted_indices = input
    if hx is not None and sorted_indices is not None:
        hx = hx.index_select(1, sorted_indices)
    out, h_n = fn(data, hx, *args, batch_sizes=batch_sizes, **extra)
    if unsorted_indices is not None:
        h_n = h_n.index_select(1, unsorted_indices)
    return PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices), h_n


class ReferenceGRU(nn.GRU):
    """torch.nn.GRU's parameters, with the maths of ref.gru."""

    def forward(self, input, hx=None):
        return _single_state_forward(self, input, hx, ref.gru)


class ReferenceRNN(nn.RNN):
    """torch.nn.RNN's parameters (and nonlinearity), with the maths of ref.rnn."""

    def forward(self, input, hx=None):
        return _single_state_forward(self, input, hx, ref.rnn, nonlinearity=self.nonlinearity)


#: kind -> (torch.nn class, reference class, extra constructor kwargs)
KINDS = {
    "gru": (nn.GRU, ReferenceGRU, {}),
    "rnn_tanh": (nn.RNN, ReferenceRNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, ReferenceRNN, {"nonlinearity": "relu"}),
}


def _compare_single(kind, num_layers, bidirectional, bias, batch_first, form, with_hx, dtype,
                    steps=4, batch=3, input_size=5, hidden_size=6, **extra):
    torch_cls, ref_cls, kind_kwargs = KINDS[kind]
    kwargs = dict(num_layers=num_layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional, dtype=dtype, **kind_kwargs, **extra)
    torch_m = torch_cls(input_size, hidden_size, **kwargs)
    ref_m = ref_cls(input_size, hidden_size, **kwargs)
    ref_m.load_state_dict(torch_m.state_dict())
    x, lengths = make_input(form, steps, batch, input_size, batch_first, dtype)
    hx = None
    if with_hx:
        d = 2 if bidirectional else 1
        hx = make_h0(form, num_layers * d, batch, hidden_size, dtype)
    expected, grads = run_rnn(torch_m, x, hx, form, batch_first, lengths)
    got, _ = run_rnn(ref_m, x, hx, form, batch_first, lengths, grads)
    assert_results_close(got, expected, dtype)
    return got


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize(
    "num_layers,bidirectional,bias,batch_first",
    list(itertools.product([1, 2], [False, True], [True, False], [False, True])),
)
@pytest.mark.parametrize("kind", list(KINDS))
def test_gru_rnn_match_torch_float64(kind, num_layers, bidirectional, bias, batch_first, form,
                                     with_hx):
    _compare_single(kind, num_layers, bidirectional, bias, batch_first, form, with_hx,
                    torch.float64)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gru_rnn_match_torch_float32(kind, form, bidirectional):
    _compare_single(kind, 2, bidirectional, True, False, form, True, torch.float32)


@pytest.mark.parametrize(
    "steps,batch,hidden_size",
    [(1, 3, 6), (4, 1, 6), (4, 3, 1), (5, 4, 7), (1, 1, 1)],
)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_gru_rnn_odd_sizes(kind, steps, batch, hidden_size, form):
    _compare_single(kind, 2, True, True, False, form, True, torch.float64,
                    steps=steps, batch=batch, hidden_size=hidden_size)


@pytest.mark.parametrize("kind", list(KINDS))
def test_gru_rnn_empty_batch(kind):
    got = _compare_single(kind, 2, True, True, False, "batched", True, torch.float64, batch=0)
    assert got["output"].shape == (4, 0, 12)


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_gru_rnn_dropout_train_mode_matches_torch_rng(kind, form):
    """As for the LSTM: torch draws the inter-layer masks with at::dropout on each layer's
    output in layer order, for every mode of its RNN implementation."""
    torch_cls, ref_cls, kind_kwargs = KINDS[kind]
    kwargs = dict(num_layers=3, dropout=0.5, bidirectional=True, dtype=torch.float64,
                  **kind_kwargs)
    torch_m = torch_cls(5, 6, **kwargs).train()
    ref_m = ref_cls(5, 6, **kwargs).train()
    ref_m.load_state_dict(torch_m.state_dict())
    x, lengths = make_input(form, 4, 3, 5, False, torch.float64)
    torch.manual_seed(123)
    expected, grads = run_rnn(torch_m, x, None, form, False, lengths)
    torch.manual_seed(123)
    got, _ = run_rnn(ref_m, x, None, form, False, lengths, grads)
    assert_results_close(got, expected, torch.float64)
    # and the masks were really drawn: eval mode gives other outputs
    ref_m.eval()
    plain, _ = run_rnn(ref_m, x, None, form, False, lengths, grads)
    assert not torch.allclose(plain["output"], got["output"])


# ----------------------------------------------------------------------------- cells

def _cell_case(cell_cls, bias, dtype, **kwargs):
    cell = cell_cls(5, 6, bias=bias, dtype=dtype, **kwargs)
    x = torch.randn(3, 5, dtype=dtype, requires_grad=True)
    h = torch.randn(3, 6, dtype=dtype, requires_grad=True)
    return cell, x, h


def _grads(out, leaves):
    g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
    return torch.autograd.grad(out, leaves, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_cell_matches_torch_cell(bias, dtype):
    cell, x, h = _cell_case(nn.GRUCell, bias, dtype)
    params = ref.cell_params_from_module(cell)
    leaves = [x, h] + [p for p in params if p is not None]
    expected = cell(x, h)
    got = ref.gru_cell(x, h, *params)
    assert_close(got, expected)
    for a, b in zip(_grads(got, leaves), _grads(expected, leaves)):
        assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_matches_torch_cell(nonlinearity, bias, dtype):
    cell, x, h = _cell_case(nn.RNNCell, bias, dtype, nonlinearity=nonlinearity)
    params = ref.cell_params_from_module(cell)
    leaves = [x, h] + [p for p in params if p is not None]
    expected = cell(x, h)
    got = ref.rnn_cell(x, h, *params, nonlinearity=nonlinearity)
    assert_close(got, expected)
    for a, b in zip(_grads(got, leaves), _grads(expected, leaves)):
        assert_close(a, b)


def test_lstm_cell_params_from_module():
    cell = nn.LSTMCell(5, 6, dtype=torch.float64)
    x, h, c = (torch.randn(3, n, dtype=torch.float64) for n in (5, 6, 6))
    h_exp, c_exp = cell(x, (h, c))
    h_got, c_got = ref.lstm_cell(x, h, c, *ref.cell_params_from_module(cell))
    assert_close(h_got, h_exp)
    assert_close(c_got, c_exp)


def test_cell_params_from_module_no_bias():
    cell = nn.GRUCell(3, 4, bias=False)
    assert ref.cell_params_from_module(cell) == (cell.weight_ih, cell.weight_hh, None, None)


def test_gru_cell_reset_gate_after_matmul():
    """PyTorch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)). With b_hn != 0 this
    differs from the original formulation tanh(W_in x + b_in + W_hn (r * h) + b_hn); the
    reference must be PyTorch's."""
    H = 4
    x = torch.randn(2, 3, dtype=torch.float64)
    h = torch.randn(2, H, dtype=torch.float64)
    w_ih = torch.randn(3 * H, 3, dtype=torch.float64)
    w_hh = torch.randn(3 * H, H, dtype=torch.float64)
    b_ih = torch.randn(3 * H, dtype=torch.float64)
    b_hh = torch.randn(3 * H, dtype=torch.float64)
    gi, gh = x @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    assert_close(ref.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh), (1 - z) * n + z * h)
    n_other = torch.tanh(gi[:, 2 * H:] + (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:])
    assert not torch.allclose((1 - z) * n_other + z * h, (1 - z) * n + z * h)


def test_rnn_unknown_nonlinearity():
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    w_ih, w_hh = torch.randn(4, 3), torch.randn(4, 4)
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        ref.rnn_cell(x, h, w_ih, w_hh, None, None, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        ref.rnn(x.unsqueeze(0), None, [(w_ih, w_hh, None, None, None)], 1, False, False,
                nonlinearity="sigmoid")


@pytest.mark.parametrize("layer", ["gru", "rnn_tanh", "rnn_relu"])
def test_packed_single_state_layer_reverse_semantics(layer):
    """As test_packed_layer_reverse_semantics, for gru_layer and rnn_layer."""
    H, I = 4, 3
    gates = 3 if layer == "gru" else 1
    lengths = [4, 2, 2, 1]
    batch_sizes = torch.tensor([4, 3, 1, 1])
    seqs = [torch.randn(n, I, dtype=torch.float64) for n in lengths]
    data = torch.cat([torch.stack([s[t] for s in seqs if len(s) > t])
                      for t in range(len(batch_sizes))])
    w = (torch.randn(gates * H, I, dtype=torch.float64),
         torch.randn(gates * H, H, dtype=torch.float64),
         torch.randn(gates * H, dtype=torch.float64), torch.randn(gates * H, dtype=torch.float64))
    if layer == "gru":
        fn = ref.gru_layer
    else:
        def fn(*args, **kwargs):
            return ref.rnn_layer(*args, nonlinearity=layer[4:], **kwargs)
    h0 = torch.randn(4, H, dtype=torch.float64)
    for reverse in (False, True):
        y, h_n = fn(data, h0, *w, batch_sizes=batch_sizes, reverse=reverse)
        assert y.shape == (sum(lengths), H)
        for b, s in enumerate(seqs):
            y_b, h_b = fn(s.unsqueeze(1), h0[b:b + 1], *w, reverse=reverse)
            rows = [int(batch_sizes[:t].sum()) + b for t in range(len(s))]
            assert_close(y[rows], y_b[:, 0])
            assert_close(h_n[b], h_b[0])


@pytest.mark.parametrize("layer", ["gru", "rnn"])
def test_single_state_layer_zero_steps(layer):
    """T = 0 (the layer functions accept it, torch.nn's modules refuse it): empty output,
    the final state is the initial state."""
    gates = 3 if layer == "gru" else 1
    fn = ref.gru_layer if layer == "gru" else ref.rnn_layer
    w = (torch.randn(gates * 4, 3), torch.randn(gates * 4, 4), None, None)
    h0 = torch.randn(2, 4)
    y, h_n = fn(torch.randn(0, 2, 3), h0, *w)
    assert y.shape == (0, 2, 4) and torch.equal(h_n, h0)
    y, h_n = fn(torch.randn(0, 3), h0, *w, batch_sizes=torch.zeros(0, dtype=torch.int64))
    assert y.shape == (0, 4) and torch.equal(h_n, h0)


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
def test_params_from_single_state_modules(cls):
    m = cls(3, 4, num_layers=2, bidirectional=True)
    params = ref.params_from_module(m)
    assert len(params) == 4
    assert params[1][0] is m.weight_ih_l0_reverse
    assert params[2][1] is m.weight_hh_l1
    assert params[3][2] is m.bias_ih_l1_reverse
    assert params[3][3] is m.bias_hh_l1_reverse
    assert all(p[4] is None for p in params)
    m = cls(3, 4, bias=False)
    assert ref.params_from_module(m) == [(m.weight_ih_l0, m.weight_hh_l0, None, None, None)]

"""The reference (rnnfast/reference.py) against torch.nn.LSTM: outputs, final states and
every gradient. This validates the executable spec itself; it needs only torch, not the
compiled extension (the reference is loaded by file path)."""

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
    make_hx,
    make_input,
    run_lstm,
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
    expected, grads = run_lstm(torch_lstm, x, hx, form, batch_first, lengths)
    got, _ = run_lstm(ref_lstm, x, hx, form, batch_first, lengths, grads)
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
    expected, grads = run_lstm(torch_lstm, x, None, form, False, lengths)
    torch.manual_seed(123)
    got, _ = run_lstm(ref_lstm, x, None, form, False, lengths, grads)
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

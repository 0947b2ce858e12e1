"""rnnfast.init: orthogonal recurrent blocks and the LSTM forget-gate bias, on rnnfast's and
torch.nn's layers and cells."""

import pytest
import torch
from torch import nn

import rnnfast
from rnnfast.init import forget_bias_, orthogonal_recurrent_

LAYERS = [
    ("torch-lstm", lambda **kw: nn.LSTM(3, 6, **kw), 4),
    ("rnnfast-lstm", lambda **kw: rnnfast.LSTM(3, 6, **kw), 4),
    ("torch-gru", lambda **kw: nn.GRU(3, 6, **kw), 3),
    ("rnnfast-gru", lambda **kw: rnnfast.GRU(3, 6, **kw), 3),
    ("torch-rnn", lambda **kw: nn.RNN(3, 6, **kw), 1),
    ("rnnfast-rnn-relu", lambda **kw: rnnfast.RNN(3, 6, nonlinearity="relu", **kw), 1),
]
CELLS = [
    ("torch-lstmcell", lambda **kw: nn.LSTMCell(3, 6, **kw), 4),
    ("rnnfast-lstmcell", lambda **kw: rnnfast.LSTMCell(3, 6, **kw), 4),
    ("torch-grucell", lambda **kw: nn.GRUCell(3, 6, **kw), 3),
    ("rnnfast-grucell", lambda **kw: rnnfast.GRUCell(3, 6, **kw), 3),
    ("torch-rnncell", lambda **kw: nn.RNNCell(3, 6, **kw), 1),
    ("rnnfast-rnncell", lambda **kw: rnnfast.RNNCell(3, 6, **kw), 1),
]


def _ids(cases):
    return [c[0] for c in cases]


def _assert_orthogonal_blocks(w: torch.Tensor, gates: int, hidden: int) -> None:
    assert w.shape[0] == gates * hidden
    for block in w.split(hidden, dim=0):
        # columns orthonormal (rows too when square)
        eye = torch.eye(block.shape[1], dtype=w.dtype)
        torch.testing.assert_close(block.T @ block, eye, atol=1e-5, rtol=0)


def _snapshot(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("name,make,gates", LAYERS, ids=_ids(LAYERS))
def test_orthogonal_recurrent_layers(name, make, gates):
    m = make(num_layers=2, bidirectional=True)
    before = _snapshot(m)
    assert orthogonal_recurrent_(m) is m
    hh = [n for n in before if n.startswith("weight_hh")]
    assert len(hh) == 4
    for n, p in m.named_parameters():
        if n.startswith("weight_hh"):
            _assert_orthogonal_blocks(p.detach(), gates, 6)
            assert not torch.equal(p, before[n])
        else:
            assert torch.equal(p, before[n]), n  # nothing else touched
        assert p.grad is None and p.requires_grad


@pytest.mark.parametrize("name,make,gates", CELLS, ids=_ids(CELLS))
def test_orthogonal_recurrent_cells(name, make, gates):
    m = make()
    before = _snapshot(m)
    orthogonal_recurrent_(m, gain=1.0)
    _assert_orthogonal_blocks(m.weight_hh.detach(), gates, 6)
    assert torch.equal(m.weight_ih, before["weight_ih"])


def test_orthogonal_recurrent_projection_gain_generator():
    m = rnnfast.LSTM(3, 6, proj_size=4, num_layers=2)
    orthogonal_recurrent_(m, generator=torch.Generator().manual_seed(3))
    for k in range(2):
        w = getattr(m, f"weight_hh_l{k}").detach()
        assert w.shape == (24, 4)
        _assert_orthogonal_blocks(w, 4, 6)  # (6, 4) blocks: orthonormal columns
    other = rnnfast.LSTM(3, 6, proj_size=4, num_layers=2)
    orthogonal_recurrent_(other, generator=torch.Generator().manual_seed(3))
    assert torch.equal(other.weight_hh_l1, m.weight_hh_l1)  # reproducible
    g = nn.GRU(3, 5, dtype=torch.float64)
    orthogonal_recurrent_(g, gain=2.0)
    for block in g.weight_hh_l0.detach().split(5):
        torch.testing.assert_close(block.T @ block, 4 * torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize("name,make,gates", [c for c in LAYERS + CELLS if c[2] == 4],
                         ids=_ids([c for c in LAYERS + CELLS if c[2] == 4]))
@pytest.mark.parametrize("value", [1.0, 2.5, 0.0])
def test_forget_bias(name, make, gates, value):
    layer = not name.endswith("cell")
    m = make(num_layers=2, bidirectional=True) if layer else make()
    before = _snapshot(m)
    assert forget_bias_(m, value) is m
    H = 6
    suffixes = ["_l0", "_l0_reverse", "_l1", "_l1_reverse"] if layer else [""]
    for sfx in suffixes:
        b_ih, b_hh = getattr(m, "bias_ih" + sfx), getattr(m, "bias_hh" + sfx)
        assert torch.all(b_ih[H:2 * H] == value)
        assert torch.all(b_hh[H:2 * H] == 0)
        assert torch.equal((b_ih + b_hh)[H:2 * H], torch.full((H,), value))
        for b, n in ((b_ih, "bias_ih" + sfx), (b_hh, "bias_hh" + sfx)):
            assert torch.equal(b[:H], before[n][:H])  # other gates untouched
            assert torch.equal(b[2 * H:], before[n][2 * H:])
    for n, p in m.named_parameters():
        if n.startswith("weight"):
            assert torch.equal(p, before[n])


def test_forget_bias_changes_the_output():
    """The rnnfast kernels see the new bias: the forget gate opens (sigmoid(20) ~ 1), so
    the cell state keeps what it had."""
    m = rnnfast.LSTM(3, 6)
    with torch.no_grad():
        m.weight_hh_l0.zero_()
        m.weight_ih_l0.zero_()
    forget_bias_(m, 20.0)
    c0 = torch.randn(1, 2, 6)
    _, (_, c) = m(torch.randn(4, 2, 3), (torch.zeros(1, 2, 6), c0))
    # c = f*c + i*g with f ~ 1, so c grows only by i*g each step (bounded by 4 steps)
    assert torch.allclose(c - c0, 4 * torch.sigmoid(m.bias_ih_l0[:6] + m.bias_hh_l0[:6])
                          * torch.tanh(m.bias_ih_l0[12:18] + m.bias_hh_l0[12:18]), atol=1e-5)


@pytest.mark.parametrize("make", [lambda: nn.GRU(3, 4), lambda: rnnfast.GRUCell(3, 4),
                                  lambda: rnnfast.RNN(3, 4), lambda: nn.RNNCell(3, 4)])
def test_forget_bias_refuses_non_lstm(make):
    m = make()
    with pytest.raises(TypeError, match=r"forget_bias_\(\): only an LSTM has a forget gate"):
        forget_bias_(m)


@pytest.mark.parametrize("make", [lambda: nn.LSTM(3, 4, bias=False),
                                  lambda: rnnfast.LSTM(3, 4, bias=False),
                                  lambda: rnnfast.LSTMCell(3, 4, bias=False)])
def test_forget_bias_refuses_no_bias(make):
    with pytest.raises(ValueError, match=r"has no biases \(built with bias=False\)"):
        forget_bias_(make())


@pytest.mark.parametrize("fn", [orthogonal_recurrent_, forget_bias_])
def test_refuses_other_modules(fn):
    with pytest.raises(TypeError, match=r"expected an LSTM, GRU or RNN layer or cell .* "
                                        r"got Linear"):
        fn(nn.Linear(3, 4))


def test_exposed_as_rnnfast_init():
    assert rnnfast.init.orthogonal_recurrent_ is orthogonal_recurrent_
    assert rnnfast.init.forget_bias_ is forget_bias_
    assert "init" in rnnfast.__all__

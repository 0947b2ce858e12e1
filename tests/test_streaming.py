"""rnnfast.StreamingState: single steps and chunks against one call of the wrapped layer
on the whole sequence, reset of rows, state swaps, autograd, and errors that leave the
object usable; rnnfast's and torch.nn's layers."""

import pytest
import torch
from torch import nn

import rnnfast
from rnnfast import StreamingState

from conftest import torch_native_cpu_rnn

#: name -> (layer factory (input 4, hidden 6, 2 layers), has a cell state)
LAYERS = {
    "rnnfast-lstm": (lambda **kw: rnnfast.LSTM(4, 6, num_layers=2, **kw), True),
    "rnnfast-lstm-proj": (lambda **kw: rnnfast.LSTM(4, 6, num_layers=2, proj_size=3, **kw),
                          True),
    "rnnfast-gru": (lambda **kw: rnnfast.GRU(4, 6, num_layers=2, **kw), False),
    "rnnfast-rnn-relu": (lambda **kw: rnnfast.RNN(4, 6, num_layers=2, nonlinearity="relu",
                                                  **kw), False),
    "torch-lstm": (lambda **kw: nn.LSTM(4, 6, num_layers=2, **kw), True),
    "torch-lstm-proj": (lambda **kw: nn.LSTM(4, 6, num_layers=2, proj_size=3, **kw), True),
    "torch-gru": (lambda **kw: nn.GRU(4, 6, num_layers=2, **kw), False),
    "torch-rnn": (lambda **kw: nn.RNN(4, 6, num_layers=2, **kw), False),
}


@pytest.fixture(autouse=True)
def _native_torch_rnn():
    with torch_native_cpu_rnn():
        yield


def make(name, **kw):
    factory, _ = LAYERS[name]
    return factory(dtype=torch.float64, **kw).eval()


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def assert_state_close(got, expected):
    got, expected = as_tuple(got), as_tuple(expected)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def random_state(name, batch, unbatched=False):
    _, has_c = LAYERS[name]
    width = 3 if name.endswith("proj") else 6
    lead = (2,) if unbatched else (2, batch)
    h = torch.randn(*lead, width, dtype=torch.float64)
    return (h, torch.randn(*lead, 6, dtype=torch.float64)) if has_c else h


@pytest.mark.parametrize("name", list(LAYERS))
def test_single_steps_equal_full_call(name):
    m = make(name)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    hx = random_state(name, 3)
    s = StreamingState(m)
    s.state = hx
    ys = torch.stack([s.step(x[t]) for t in range(7)])
    with torch.no_grad():
        full, final = m(x, hx)
    torch.testing.assert_close(ys, full, atol=1e-12, rtol=1e-10)
    assert_state_close(s.state, final)
    assert not ys.requires_grad


@pytest.mark.parametrize("name", list(LAYERS))
def test_chunks_equal_full_call(name):
    m = make(name)
    x = torch.randn(8, 2, 4, dtype=torch.float64)
    s = StreamingState(m)
    ys = [s.step(x[0:3]), s.step(x[3:4]), s.step(x[4])[None], s.step(x[5:8])]
    with torch.no_grad():
        full, final = m(x)
    torch.testing.assert_close(torch.cat(ys), full, atol=1e-12, rtol=1e-10)
    assert_state_close(s.state, final)


@pytest.mark.parametrize("name", ["rnnfast-lstm", "torch-gru"])
def test_batch_first_chunks_and_unbatched(name):
    m = make(name, batch_first=True)
    x = torch.randn(2, 6, 4, dtype=torch.float64)  # (B, T, I)
    s = StreamingState(m)
    y1, y2, y3 = s.step(x[:, :2]), s.step(x[:, 2]), s.step(x[:, 3:])
    assert y1.shape[:2] == (2, 2) and y2.shape[0] == 2
    with torch.no_grad():
        full, final = m(x)
    torch.testing.assert_close(torch.cat([y1, y2[:, None], y3], dim=1), full)
    assert_state_close(s.state, final)
    # unbatched single steps [I]: the state keeps a batch of one
    s.reset()
    u = torch.randn(5, 4, dtype=torch.float64)
    ys = torch.stack([s.step(u[t]) for t in range(5)])
    with torch.no_grad():
        full, final = m(u)
    torch.testing.assert_close(ys, full)
    assert as_tuple(s.state)[0].shape[1] == 1
    assert_state_close(tuple(t[:, 0] for t in as_tuple(s.state)), final)


@pytest.mark.parametrize("name", ["rnnfast-lstm", "rnnfast-lstm-proj", "rnnfast-gru",
                                  "rnnfast-rnn-relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_operator_path_equals_layer_call(name, dtype, batch_first):
    """rnnfast layers step through the operators directly: bit for bit the layer's call."""
    m = LAYERS[name][0](dtype=dtype, batch_first=batch_first).eval()
    x = torch.randn(6, 3, 4, dtype=dtype)
    direct, layer = StreamingState(m), StreamingState(m)
    layer.direct = False
    for t in range(6):
        assert torch.equal(direct.step(x[t]), layer.step(x[t]))
    for a, b in zip(as_tuple(direct.state), as_tuple(layer.state)):
        assert torch.equal(a, b)
    chunk = x[:2].transpose(0, 1) if batch_first else x[:2]
    assert torch.equal(direct.step(chunk), layer.step(chunk))


@pytest.mark.parametrize("name", ["rnnfast-lstm", "torch-lstm", "rnnfast-gru", "torch-rnn"])
def test_reset_rows(name):
    m = make(name)
    x = torch.randn(6, 4, 4, dtype=torch.float64)
    s, ref = StreamingState(m), StreamingState(m)
    for t in range(3):
        s.step(x[t])
        ref.step(x[t])
    s.reset(rows=[1, -1])  # rows 1 and 3
    later = s.step(x[3:])
    cont = ref.step(x[3:])
    with torch.no_grad():
        fresh, _ = m(x[3:])
    torch.testing.assert_close(later[:, [0, 2]], cont[:, [0, 2]])
    torch.testing.assert_close(later[:, [1, 3]], fresh[:, [1, 3]])
    # a boolean mask, an int, a tensor of indices
    s.reset(torch.tensor([True, False, False, False]))
    assert all(torch.all(t[:, 0] == 0) for t in as_tuple(s.state))
    s.reset(2)
    s.reset(torch.tensor([3]))
    assert all(torch.all(t[:, 1] != 0) for t in as_tuple(s.state))
    # reset() forgets the state: another batch size is fine then
    s.reset()
    assert s.state is None and s.batch_size is None
    assert s.step(x[0, :2]).shape[0] == 2
    assert s.batch_size == 2


def test_reset_rows_does_not_write_given_state():
    m = make("rnnfast-lstm")
    h, c = random_state("rnnfast-lstm", 3)
    s = StreamingState(m)
    s.state = (h, c)
    h_copy = h.clone()
    s.reset([0])
    assert torch.equal(h, h_copy)
    assert torch.all(s.state[0][:, 0] == 0) and torch.equal(s.state[0][:, 1:], h[:, 1:])


@pytest.mark.parametrize("name", ["rnnfast-lstm-proj", "torch-gru"])
def test_state_swap(name):
    """A server swaps sessions: A, then B, then A again = A uninterrupted."""
    m = make(name)
    xa = torch.randn(6, 1, 4, dtype=torch.float64)
    xb = torch.randn(4, 1, 4, dtype=torch.float64)
    s = StreamingState(m)
    ya = [s.step(xa[t]) for t in range(3)]
    saved = s.state
    s.reset()
    [s.step(xb[t]) for t in range(4)]
    s.state = saved
    ya += [s.step(xa[t]) for t in range(3, 6)]
    with torch.no_grad():
        full, final = m(xa)
    torch.testing.assert_close(torch.stack(ya), full)
    assert_state_close(s.state, final)
    # a 2-D state is one row
    s.state = tuple(t[:, 0] for t in as_tuple(final)) if isinstance(final, tuple) else final[:, 0]
    assert s.batch_size == 1


@pytest.mark.parametrize("name", ["rnnfast-lstm", "torch-lstm", "rnnfast-gru"])
def test_bad_state_keeps_object_usable(name):
    m = make(name)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    s = StreamingState(m)
    s.step(x[0])
    before = tuple(t.clone() for t in as_tuple(s.state))
    is_lstm = LAYERS[name][1]
    good = random_state(name, 2)
    h = as_tuple(good)[0]
    wrong_layers = (torch.zeros(3, 2, 6, dtype=torch.float64),) + as_tuple(good)[1:]
    with pytest.raises(RuntimeError, match=r"StreamingState.state: expected h \(state\[0\]\) "
                                           r"of size \(2, 2, 6\), got \[3, 2, 6\]"):
        s.state = wrong_layers if is_lstm else wrong_layers[0]
    with pytest.raises(RuntimeError, match="expected 3-D states"):
        s.state = (h[0, 0], as_tuple(good)[-1]) if is_lstm else h[0, 0]
    with pytest.raises(RuntimeError, match="of dtype torch.float64"):
        s.state = tuple(t.float() for t in as_tuple(good)) if is_lstm else h.float()
    if is_lstm:
        with pytest.raises(RuntimeError, match=r"expected c \(state\[1\]\) of size "
                                               r"\(2, 2, 6\), got \[2, 3, 6\]"):
            s.state = (h, torch.zeros(2, 3, 6, dtype=torch.float64))
        with pytest.raises(TypeError, match=r"an LSTM's state must be a tuple \(h, c\) of "
                                            r"Tensors, got Tensor"):
            s.state = h
        with pytest.raises(TypeError, match="c must be a Tensor, got int"):
            s.state = (h, 3)
    else:
        with pytest.raises(TypeError, match="h must be a Tensor, got tuple"):
            s.state = (h, h)
    with pytest.raises(RuntimeError, match="x has batch size 3, the state has 2 rows"):
        s.step(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected x of shape \[I\] or \[B, I\]"):
        s.step(torch.randn(1, 1, 2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="argument 'x' must be a Tensor, not list"):
        s.step([1.0, 2.0])
    with pytest.raises(RuntimeError):  # the layer's own error: wrong input size
        s.step(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(IndexError, match="row 2 is out of range for a state of 2 rows"):
        s.reset([0, 2])
    with pytest.raises(TypeError, match="rows must be integers"):
        s.reset(torch.tensor([0.5]))
    with pytest.raises(IndexError, match=r"boolean rows mask must have shape \[2\]"):
        s.reset(torch.tensor([True]))
    for a, b in zip(as_tuple(s.state), before):
        assert torch.equal(a, b)  # nothing changed
    # still usable: the rest of the sequence gives the full call's results
    y = s.step(x[1:])
    with torch.no_grad():
        full, _ = m(x)
    torch.testing.assert_close(y, full[1:])


@pytest.mark.parametrize("layer", [nn.LSTM(4, 6, bidirectional=True),
                                   rnnfast.GRU(4, 6, num_layers=2, bidirectional=True)],
                         ids=["torch-lstm", "rnnfast-gru"])
def test_bidirectional_refused(layer):
    with pytest.raises(ValueError, match="a bidirectional layer cannot be streamed"):
        StreamingState(layer)


@pytest.mark.parametrize("module", [nn.LSTMCell(4, 6), rnnfast.GRUCell(4, 6), nn.Linear(4, 6)],
                         ids=["torch-lstmcell", "rnnfast-grucell", "linear"])
def test_not_a_layer_refused(module):
    with pytest.raises(TypeError, match="expected an LSTM, GRU or RNN layer"):
        StreamingState(module)


@pytest.mark.parametrize("name", ["rnnfast-lstm", "torch-gru"])
def test_grad_mode(name):
    """grad=True: the steps record history and give the full call's gradients; detach()
    cuts it."""
    m = make(name)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    s = StreamingState(m, grad=True)
    ys = torch.cat([s.step(x[:2]), s.step(x[2])[None], s.step(x[3:])])
    assert ys.requires_grad
    g = torch.randn_like(ys)
    got = torch.autograd.grad(ys, list(m.parameters()), g)
    full, _ = m(x)
    expected = torch.autograd.grad(full, list(m.parameters()), g)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    s.detach()
    assert not any(t.requires_grad for t in as_tuple(s.state))
    # default: no history even with parameters that require grad
    assert not StreamingState(m).step(x[0]).requires_grad


def test_training_dropout_falls_back_to_layer():
    """Inter-layer dropout in training mode: the layer's own call (same draws)."""
    m = rnnfast.LSTM(4, 6, num_layers=2, dropout=0.5, dtype=torch.float64).train()
    x = torch.randn(4, 2, 4, dtype=torch.float64)
    s = StreamingState(m)
    torch.manual_seed(3)
    y = s.step(x)
    torch.manual_seed(3)
    with torch.no_grad():
        full, _ = m(x)
    torch.testing.assert_close(y, full)
    m.eval()
    assert not torch.allclose(StreamingState(m).step(x), y)


def test_exposed_and_repr():
    assert rnnfast.StreamingState is StreamingState
    assert "StreamingState" in rnnfast.__all__
    s = StreamingState(rnnfast.GRU(4, 6))
    assert "no state" in repr(s)
    s.step(torch.randn(3, 4))
    assert "batch 3" in repr(s)

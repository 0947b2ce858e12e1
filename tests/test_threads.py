"""The multi-threaded step loop: shapes large enough that every layer call splits its
hidden units over threads (csrc/cpu/layer.cpp runs one parallel region per call and
falls back to one thread for tiny steps), checked against torch.nn at 2 threads and
at 1 thread. Odd sizes so that the split leaves ragged ranges."""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

CASES = [
    # (name, torch class, rnnfast class, kwargs)
    ("lstm", torch.nn.LSTM, rnnfast.LSTM, {}),
    ("lstm_proj", torch.nn.LSTM, rnnfast.LSTM, {"proj_size": 37}),
    ("gru", torch.nn.GRU, rnnfast.GRU, {}),
    ("rnn_tanh", torch.nn.RNN, rnnfast.RNN, {"nonlinearity": "tanh"}),
    ("rnn_relu", torch.nn.RNN, rnnfast.RNN, {"nonlinearity": "relu"}),
]


@pytest.fixture
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-8)}


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name,ref_cls,cls,kwargs", CASES, ids=[c[0] for c in CASES])
def test_split_step_loop_matches_torch(name, ref_cls, cls, kwargs, packed, dtype, threads):
    torch.manual_seed(0)
    T, B, I, H = 6, 9, 50, 97
    ref = ref_cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, **kwargs)
    m = cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, **kwargs)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([6, 6, 5, 5, 4, 3, 3, 2, 1])
    results = []
    for mod in (ref, m):
        inp = pack_padded_sequence(x, lengths) if packed else x
        out, state = mod(inp)
        out = out.data if packed else out
        states = state if isinstance(state, tuple) else (state,)
        grads_out = [torch.linspace(-1, 1, t.numel(), dtype=dtype).reshape(t.shape)
                     for t in (out, *states)]
        grads = torch.autograd.grad((out, *states), [x, *mod.parameters()], grads_out)
        results.append([out, *states, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **TOL[dtype])

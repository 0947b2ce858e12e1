"""Determinism: forward and backward are bitwise identical from run to
run on the same machine with the same thread count -- LSTM (with projection), GRU, RNN
tanh/relu, bidirectional and multi-layer, padded and packed, at sizes that run the step
loop on one thread and at sizes that split it over threads -- both within a process and
across processes (a fresh process allocates differently, so a result that depended on
uninitialised memory or on allocation addresses would differ); with dropout, identical
under the same seed (and different under another seed, so dropout is really on).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

# name -> (class, kwargs, (T, B, I)). "split" sizes carry >= 64 KFLOP per step (the
# multi-threaded step loop, csrc/cpu/layer.cpp); the others run on one thread.
CASES = {
    "lstm_proj_bi3": (rnnfast.LSTM, dict(input_size=6, hidden_size=9, num_layers=3,
                                         bidirectional=True, proj_size=4), (6, 5, 6)),
    "gru_bi3": (rnnfast.GRU, dict(input_size=6, hidden_size=9, num_layers=3,
                                  bidirectional=True), (6, 5, 6)),
    "rnn_tanh_bi3": (rnnfast.RNN, dict(input_size=6, hidden_size=9, num_layers=3,
                                       bidirectional=True), (6, 5, 6)),
    "rnn_relu_bi2": (rnnfast.RNN, dict(input_size=6, hidden_size=9, num_layers=2,
                                       bidirectional=True, nonlinearity="relu"), (6, 5, 6)),
    "lstm_split_bi2": (rnnfast.LSTM, dict(input_size=40, hidden_size=72, num_layers=2,
                                          bidirectional=True, proj_size=40), (5, 9, 40)),
    "gru_split_bi2": (rnnfast.GRU, dict(input_size=40, hidden_size=72, num_layers=2,
                                        bidirectional=True), (5, 9, 40)),
    "rnn_split_bi2": (rnnfast.RNN, dict(input_size=64, hidden_size=130, num_layers=2,
                                        bidirectional=True), (5, 9, 64)),
}


def run_case(name, packed, dtype=torch.float32, dropout=0.0, seed=None):
    """Build the module and data from fixed seeds, run forward+backward; return every
    output and gradient. With ``seed``, reseed right before the forward (dropout masks)."""
    cls, kwargs, (T, B, I) = CASES[name]
    torch.manual_seed(1234)
    m = cls(**kwargs, dropout=dropout, dtype=dtype).train()
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    grad_seed = torch.randn(1).item()
    if seed is not None:
        torch.manual_seed(seed)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
    out, state = m(inp)
    out = out.data if packed else out
    states = state if isinstance(state, tuple) else (state,)
    g = torch.Generator().manual_seed(int(abs(grad_seed) * 1e6))
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=dtype)).sum()
               for t in (out, *states))
    grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return [out.detach(), *(s.detach() for s in states), *grads]


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", list(CASES))
def test_bitwise_identical_runs(name, packed):
    first = run_case(name, packed)
    for _ in range(2):
        again = run_case(name, packed)
        for i, (a, b) in enumerate(zip(first, again)):
            assert torch.equal(a, b), f"tensor {i} differs between identical runs"


@pytest.mark.parametrize("name", ["lstm_proj_bi3", "gru_split_bi2", "rnn_relu_bi2"])
def test_bitwise_identical_runs_float64(name):
    a, b = run_case(name, True, torch.float64), run_case(name, True, torch.float64)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("name", ["lstm_proj_bi3", "gru_bi3", "rnn_tanh_bi3",
                                  "lstm_split_bi2"])
def test_dropout_identical_under_same_seed(name, packed):
    a = run_case(name, packed, dropout=0.5, seed=7)
    b = run_case(name, packed, dropout=0.5, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    c = run_case(name, packed, dropout=0.5, seed=8)
    assert not torch.equal(a[0], c[0]), "another seed gave the same output: no dropout?"


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    import test_determinism as d
    out = []
    for name in d.CASES:
        for packed in (False, True):
            out.append(name + ("-packed" if packed else "") + " " +
                       d.digest(d.run_case(name, packed)))
    out.append("dropout " + d.digest(d.run_case("lstm_proj_bi3", True, dropout=0.5, seed=7)))
    print(torch.get_num_threads())
    print("\\n".join(out))
""")


def test_bitwise_identical_across_processes():
    """Two fresh processes (same thread count) produce the same bits as this one."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    outputs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _CHILD.format(tests=tests)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append(proc.stdout.split("\n", 1))
    assert outputs[0][0] == outputs[1][0] == str(torch.get_num_threads())
    assert outputs[0][1] == outputs[1][1]
    here = []
    for name in CASES:
        for packed in (False, True):
            here.append(name + ("-packed" if packed else "") + " " +
                        digest(run_case(name, packed)))
    here.append("dropout " + digest(run_case("lstm_proj_bi3", True, dropout=0.5, seed=7)))
    assert outputs[0][1].strip().split("\n") == here

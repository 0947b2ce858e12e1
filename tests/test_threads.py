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


def _split_invariant_kernels():
    return rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel"


def _run_all(mod, x, lengths, packed):
    inp = pack_padded_sequence(x, lengths) if packed else x
    out, state = mod(inp)
    out = out.data if packed else out
    states = state if isinstance(state, tuple) else (state,)
    grads_out = [torch.linspace(-1, 1, t.numel(), dtype=x.dtype).reshape(t.shape) for t in (out, *states)]
    grads = torch.autograd.grad((out, *states), [x, *mod.parameters()], grads_out)
    return [out, *states, *grads]


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,ref_cls,cls,kwargs", CASES, ids=[c[0] for c in CASES])
def test_one_thread_under_load_gives_the_same_bits(name, ref_cls, cls, kwargs, dtype, threads):
    """The load monitor may run a step loop on one thread; it does so only where that gives
    bitwise the same result as the split loop (float32 without projection, with rnnfast's
    step GEMM), so results stay reproducible whatever the load; elsewhere the loop keeps
    its threads."""
    from rnnfast import _C
    torch.manual_seed(0)
    m = cls(50, 97, num_layers=2, bidirectional=True, dtype=dtype, **kwargs)
    x = torch.randn(6, 9, 50, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([6, 6, 5, 5, 4, 3, 3, 2, 1])
    for packed in (False, True):
        # The reference splits whatever the load (a busy machine would make the monitor drop
        # to one thread, and the comparison would then be of the one-thread loop with itself).
        _C._reset_step_loop_load()
        _C._hold_step_loops_split(60.0)
        try:
            split = _run_all(m, x, lengths, packed)
            assert _C._step_loop_load()["single_loops"] == 0
        finally:
            _C._reset_step_loop_load()
        _C._hold_step_loops_on_one_thread(60.0)
        try:
            single = _run_all(m, x, lengths, packed)
            load = _C._step_loop_load()
        finally:
            _C._reset_step_loop_load()
        eligible = dtype == torch.float32 and "proj_size" not in kwargs and _split_invariant_kernels()
        if eligible:
            assert load["single_loops"] > 0 and load["split_loops"] == 0, load
        else:
            assert load["single_loops"] == 0 and load["split_loops"] > 0, load
        for i, (a, b) in enumerate(zip(split, single)):
            assert torch.equal(a, b), f"tensor {i} differs between the split and the one-thread loop"


def _busy_processes(n):
    import subprocess
    import sys
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_load_monitor_counts_split_loops_alone(threads):
    from rnnfast import _C
    _C._reset_step_loop_load()
    m = rnnfast.LSTM(64, 97)
    with torch.no_grad():
        m(torch.randn(20, 33, 64))
    load = _C._step_loop_load()
    assert load["split_loops"] == 1 and load["single_loops"] == 0, load
    assert 0.0 <= load["last_wait_fraction"] <= 1.0


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_holding_the_split_overrides_the_monitor(threads):
    """The testing hold of the split overrides a hold on one thread (as a loaded judgement
    would set), until reset."""
    from rnnfast import _C
    m = rnnfast.LSTM(64, 97)  # float32, no projection: a loop that may drop to one thread
    x = torch.randn(20, 33, 64)
    try:
        _C._reset_step_loop_load()
        _C._hold_step_loops_on_one_thread(60.0)
        with torch.no_grad():
            m(x)
        assert _C._step_loop_load()["single_loops"] == 1
        _C._hold_step_loops_split(60.0)
        with torch.no_grad():
            m(x)
        assert _C._step_loop_load()["single_loops"] == 1  # unchanged: this one split
    finally:
        _C._reset_step_loop_load()


def test_load_monitor_back_off_starts_short_and_doubles():
    """A loaded loop starts a 50 ms back-off (a passing preemption costs little), each loaded
    probe after it doubles the period up to 8 s, a clean loop ends it; loops under 0.2 ms
    and waits up to a quarter of the loop are not judged loaded."""
    from rnnfast import _C
    _C._reset_step_loop_load()
    try:
        _C._judge_step_loop(0.25, 0.01)
        _C._judge_step_loop(0.9, 0.0001)  # too short to judge
        assert _C._step_loop_load()["backoff_s"] == 0.0
        expected = 0.05
        for _ in range(10):
            _C._judge_step_loop(0.6, 0.01)  # loaded (first loop, then probes)
            assert _C._step_loop_load()["backoff_s"] == pytest.approx(expected)
            expected = min(2 * expected, 8.0)
        assert _C._step_loop_load()["backoff_s"] == pytest.approx(8.0)
        _C._judge_step_loop(0.1, 0.01)  # a probe that finds the load gone
        load = _C._step_loop_load()
        assert load["backoff_s"] == 0.0 and load["loaded_loops"] == 10, load
    finally:
        _C._reset_step_loop_load()


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_load_monitor_falls_back_to_one_thread_beside_busy_processes(threads):
    """With every CPU kept busy by other processes the split step loop's threads stall at
    the barriers; the monitor must notice, run the next loops on one thread, and those
    must still give torch.nn's results (forward and gradients)."""
    import os
    import time
    from rnnfast import _C
    torch.manual_seed(0)
    ref = torch.nn.LSTM(64, 256)
    m = rnnfast.LSTM(64, 256)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(100, 64, 64)
    _C._reset_step_loop_load()
    busy = _busy_processes(os.cpu_count() or 2)
    try:
        time.sleep(0.2)
        deadline = time.monotonic() + 20.0
        while _C._step_loop_load()["backoff_s"] == 0 and time.monotonic() < deadline:
            with torch.no_grad():
                m(x)
        load = _C._step_loop_load()
        assert load["loaded_loops"] >= 1, f"no split loop found its threads stalled: {load}"
        assert load["backoff_s"] > 0, load
        # The first back-off is 50 ms, which a forward and backward beside busy processes can
        # outlast (the backward then probes on two threads again). Hold the one-thread mode
        # for what follows so that it checks what one-thread loops give.
        _C._hold_step_loops_on_one_thread(30.0)
        xr = x[:30].clone().requires_grad_(True)
        xf = xr.detach().clone().requires_grad_(True)
        out_f, (h_f, c_f) = m(xf)
        (out_f.sum() + h_f.sum() + c_f.sum()).backward()
        if _split_invariant_kernels():
            assert _C._step_loop_load()["single_loops"] >= 2, _C._step_loop_load()  # fwd, bwd
    finally:
        for p in busy:
            p.kill()
            p.wait()
        _C._reset_step_loop_load()
    out_r, (h_r, c_r) = ref(xr)
    (out_r.sum() + h_r.sum() + c_r.sum()).backward()
    tol = TOL[torch.float32]
    torch.testing.assert_close(out_f, out_r, **tol)
    torch.testing.assert_close(h_f, h_r, **tol)
    torch.testing.assert_close(c_f, c_r, **tol)
    torch.testing.assert_close(xf.grad, xr.grad, **tol)
    for a, b in zip(m.parameters(), ref.parameters()):
        # The weight gradients are float32 sums over all 1,920 rows, whose rounding grows
        # with the size of the terms (up to ~130 here), not of the result: the absolute
        # tolerance is taken relative to the tensor's largest entry.
        scale = max(1.0, b.grad.abs().max().item())
        torch.testing.assert_close(a.grad, b.grad, atol=tol["atol"] * scale, rtol=tol["rtol"])

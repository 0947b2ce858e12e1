"""Concurrency.

* Forward and backward from 8 Python threads at once on one shared module give bit-for-bit
  the results of the same calls made one after another (same intra-op thread count: every
  call, serial or concurrent, is made from a worker thread, whose OpenMP thread count is
  the process default).
* The long C++ work releases the GIL: a pure-Python counter in another thread keeps
  advancing while one long forward (or backward) runs.

A watchdog (faulthandler) turns a deadlock into a failure with every thread's traceback.
"""
from __future__ import annotations

import faulthandler
import threading
import time

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast

NUM_THREADS = 8
CALLS_PER_THREAD = 2


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(180, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def run_in_threads(fns, concurrent):
    """Run each callable in its own thread (all started together behind a barrier when
    ``concurrent``, else one at a time); return their results in order; re-raise the
    first exception."""
    results = [None] * len(fns)
    errors = []
    barrier = threading.Barrier(len(fns)) if concurrent else None

    def worker(i):
        try:
            if barrier is not None:
                barrier.wait()
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(fns))]
    if concurrent:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for t in threads:
            t.start()
            t.join()
    if errors:
        raise errors[0]
    return results


# (module factory, sizes) -- "big" sizes carry >= 64 KFLOP per step, so every call runs the
# multi-threaded step loop (an OpenMP team per calling thread); "small" ones run on one
# thread (csrc/cpu/layer.cpp kMinParallelStepFlops). Few steps and layers: on a machine
# with another busy process, each per-step barrier of the step loop can cost a scheduler
# time slice (libgomp spins while its partner thread is descheduled), so the number of
# barriers, not the flops, bounds this file's run time.
MODULES = {
    "lstm_big": (lambda: rnnfast.LSTM(32, 64, bidirectional=True, proj_size=48),
                 dict(T=6, B=8, I=32)),
    "gru_big": (lambda: rnnfast.GRU(32, 64, num_layers=2), dict(T=6, B=8, I=32)),
    "rnn_tanh_big": (lambda: rnnfast.RNN(64, 96), dict(T=6, B=8, I=64)),
    "rnn_relu_small": (lambda: rnnfast.RNN(5, 7, num_layers=3, nonlinearity="relu",
                                           bidirectional=True), dict(T=6, B=3, I=5)),
    "lstm_small_f64": (lambda: rnnfast.LSTM(5, 7, num_layers=2, dtype=torch.float64),
                       dict(T=6, B=3, I=5)),
}


def make_job(m, i, T, B, I):
    """Thread i's work: its own input (padded for even i, packed unsorted for odd i),
    CALLS_PER_THREAD forward+backward calls; gradients via autograd.grad (a shared
    module's .grad would be a data race by construction)."""
    dtype = next(m.parameters()).dtype
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(T, B, I, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    params = list(m.parameters())

    def job():
        out = []
        for _ in range(CALLS_PER_THREAD):
            xl = x.clone().requires_grad_(True)
            inp = pack_padded_sequence(xl, lengths, enforce_sorted=False) if i % 2 else xl
            y, state = m(inp)
            y = y.data if i % 2 else y
            states = state if isinstance(state, tuple) else (state,)
            loss = (y * y).sum() + sum(s.sum() for s in states)
            grads = torch.autograd.grad(loss, [xl, *params])
            out.append([y.detach(), *(s.detach() for s in states), *grads])
        return out
    return job


@pytest.mark.parametrize("name", list(MODULES))
def test_threads_match_serial_bitwise(name):
    factory, sizes = MODULES[name]
    torch.manual_seed(0)
    m = factory()
    jobs = [make_job(m, i, **sizes) for i in range(NUM_THREADS)]
    serial = run_in_threads(jobs, concurrent=False)
    concurrent = run_in_threads(jobs, concurrent=True)
    for i, (a_calls, b_calls) in enumerate(zip(serial, concurrent)):
        for c, (a, b) in enumerate(zip(a_calls, b_calls)):
            assert len(a) == len(b)
            for k, (ta, tb) in enumerate(zip(a, b)):
                assert torch.equal(ta, tb), f"thread {i} call {c} tensor {k} differs"
    # repeated calls within a thread are identical too (no state carried between calls)
    for calls in serial:
        for call in calls[1:]:
            assert all(torch.equal(p, q) for p, q in zip(calls[0], call))


@pytest.mark.parametrize("cls", [rnnfast.LSTMCell, rnnfast.GRUCell, rnnfast.RNNCell])
def test_cells_threads_match_serial_bitwise(cls):
    torch.manual_seed(0)
    cell = cls(16, 32)
    params = list(cell.parameters())

    def job_for(i):
        g = torch.Generator().manual_seed(i)
        xs = torch.randn(10, 4, 16, generator=g)

        def job():
            x = xs.clone().requires_grad_(True)
            state = None
            loss = 0
            for t in range(xs.shape[0]):
                state = cell(x[t], state)
                h = state[0] if isinstance(state, tuple) else state
                loss = loss + (h * (t + 1)).sum()
            return [h.detach(), *torch.autograd.grad(loss, [x, *params])]
        return job

    jobs = [job_for(i) for i in range(NUM_THREADS)]
    serial = run_in_threads(jobs, concurrent=False)
    concurrent = run_in_threads(jobs, concurrent=True)
    for i, (a, b) in enumerate(zip(serial, concurrent)):
        assert all(torch.equal(p, q) for p, q in zip(a, b)), f"thread {i} differs"


def test_concurrent_threads_with_different_modules_and_dtypes():
    """Different module kinds and dtypes at once (distinct kernels and workspaces in flight
    together) still match their serial results."""
    torch.manual_seed(0)
    modules = [rnnfast.LSTM(32, 64, bidirectional=True), rnnfast.GRU(32, 64, dtype=torch.float64),
               rnnfast.RNN(32, 64, nonlinearity="relu"), rnnfast.LSTM(32, 64, proj_size=16,
                                                                      dtype=torch.float64)]
    jobs = [make_job(modules[i % 4], i, T=6, B=8, I=32) for i in range(NUM_THREADS)]
    serial = run_in_threads(jobs, concurrent=False)
    concurrent = run_in_threads(jobs, concurrent=True)
    for i, (a_calls, b_calls) in enumerate(zip(serial, concurrent)):
        for a, b in zip(a_calls, b_calls):
            assert all(torch.equal(p, q) for p, q in zip(a, b)), f"thread {i} differs"


# --------------------------------------------------------------------------------- GIL

WINDOWS = 10


def _counter_progress(long_call):
    """Run ``long_call`` in a thread while this thread counts in pure Python; return the
    call's duration and, for each of WINDOWS equal slices of it, how many counter ticks
    fell in it.

    Why this measure cannot flake on a loaded machine: if the GIL were held through the
    C++ work, the counter could only tick while the call is in Python (argument checks,
    dispatch: a few ms at its start and end), so at most the first and last slices
    could hold ticks. With the GIL released, the counter ticks throughout; a loaded 2-core
    machine can delay it, but not for a whole slice (tens of ms or more) in most slices.
    """
    done = threading.Event()
    times = []
    bounds = {}

    def target():
        bounds["start"] = time.perf_counter()
        long_call()
        bounds["end"] = time.perf_counter()
        done.set()

    t = threading.Thread(target=target)
    t.start()
    while not done.is_set():
        times.append(time.perf_counter())
        # A little pure-Python work per tick: each tick needs the GIL.
        sum(range(50))
    t.join()
    start, end = bounds["start"], bounds["end"]
    duration = end - start
    counts = [0] * WINDOWS
    for stamp in times:
        if start <= stamp < end:
            counts[min(WINDOWS - 1, int((stamp - start) / duration * WINDOWS))] += 1
    return duration, counts


def _long_enough(make_call, min_seconds=0.3):
    """Grow the problem until one call takes at least ``min_seconds`` (so that a slice is
    >= 30 ms, far longer than a Python tick)."""
    steps = 100
    while True:
        call = make_call(steps)
        t0 = time.perf_counter()
        call()
        if time.perf_counter() - t0 >= min_seconds or steps >= 12800:
            return call
        steps *= 2


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_long_calls_release_the_gil(phase):
    torch.manual_seed(0)
    m = rnnfast.LSTM(128, 128)

    def make_call(steps):
        x = torch.randn(steps, 16, 128)
        if phase == "forward":
            def call():
                with torch.no_grad():
                    m(x)
            return call

        def call():
            out, _ = m(x.requires_grad_(True))
            # only the backward is timed below: forward first, outside the window
            call.out = out
        return call

    call = _long_enough(make_call)
    if phase == "backward":
        call()  # the forward (outside the measured window)
        out = call.out
        duration, counts = _counter_progress(lambda: out.sum().backward())
    else:
        duration, counts = _counter_progress(call)
    busy = sum(1 for c in counts if c > 0)
    assert busy >= WINDOWS - 3, (
        f"the Python counter advanced in only {busy}/{WINDOWS} slices of a {duration:.2f} s "
        f"{phase} (ticks per slice: {counts}): the GIL is held during the C++ work")


def test_gil_measure_detects_a_gil_holding_call():
    """Control for the test above: a C call that keeps the GIL (a backtracking regular
    expression inside the re module) of similar length leaves the counter idle in almost
    every slice, so the measure does tell the two cases apart."""
    import re

    n = 20
    while True:
        t0 = time.perf_counter()
        re.match(r"(a+)+b", "a" * n)
        if time.perf_counter() - t0 >= 0.3 or n >= 30:
            break
        n += 1
    duration, counts = _counter_progress(lambda: re.match(r"(a+)+b", "a" * n))
    busy = sum(1 for c in counts if c > 0)
    assert busy <= 2, (duration, counts)

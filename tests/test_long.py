"""Long and large.

* T = 100,000 steps run forward and backward in well under a second (B=2, H=8): the
  outputs and final states match torch.nn at that length; the gradients agree with a
  central finite difference of the loss along a random direction (every input, state and
  parameter at once) and, exactly, with a rerun of the last 1,000 steps from the true
  state (which torch.nn checks too); per-step time at T=100k stays within 2x of T=10k
  (interleaved runs); and the whole thing runs on a thread with a 512 KiB stack, so the
  step loops (forward, backward, autograd) use no stack per step.
* Index arithmetic is 64-bit: an input of more than 2^32 elements (a zero-filled,
  never-committed mapping: read faults map the kernel's shared zero page, so RSS stays
  small) with data at element offsets 2^31 and 2^32 gives the right outputs at exactly
  those steps. With 32-bit offsets those rows would be read from offset 0 (zeros) or from
  before the buffer.

What the large test proves and does not: it covers rnnfast's own offset arithmetic into
[N, I] inputs (the forward input projection addresses each chunk of rows at
``x + first_row * I``; Sequence.off/N are int64). The backward's only [N, I] accesses are
whole-matrix GEMMs (dW_ih = dG^T x, dx = dG W_ih) whose indexing is the BLAS's, and dx
would need the full N*I allocation, so the backward is not run at that size; its
bookkeeping (Sequence) is the same code as the forward's, checked by
test_sequence_offsets_are_64_bit below and by tests/cpp/test_index64.cpp.
"""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import rnnfast
from conftest import assert_close, torch_native_cpu_rnn

LONG_T = 100_000


def _pair(cls_name, dtype, **kw):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls_name)(4, 8, dtype=dtype, **kw)
    fast = getattr(rnnfast, cls_name)(4, 8, dtype=dtype, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_100k_steps_forward_matches_torch():
    """float64 LSTM, 100,000 steps: output and (h_n, c_n) match torch.nn (1e-10: the
    dynamics are contractive, so rounding differences do not grow with T; the measured
    difference is ~3e-16)."""
    ref, fast = _pair("LSTM", torch.float64)
    x = torch.randn(LONG_T, 2, 4, dtype=torch.float64)
    with torch.no_grad(), torch_native_cpu_rnn():
        exp_out, (exp_h, exp_c) = ref(x)
    with torch.no_grad():
        out, (h, c) = fast(x)
    assert_close(out, exp_out, msg="output")
    assert_close(h, exp_h, msg="h_n")
    assert_close(c, exp_c, msg="c_n")


def _loss(m, x, hx, weights):
    out, state = m(x, hx)
    states = state if isinstance(state, tuple) else (state,)
    return (out * weights).sum() + sum(s.sum() for s in states)


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_100k_steps_gradient_finite_difference(cls_name):
    """d/de L(theta + e*d) at e = 0 by a central difference equals <grad L, d> for a random
    direction d over the input, the initial state(s) and every parameter. float64,
    e = 1e-6: truncation error ~e^2 (1e-12) and rounding of L (|L| ~ 10, a sum of 1.6M
    terms: ~1e-14) divided by e: ~1e-8 absolute, against |<grad, d>| ~ 10-30; measured
    relative differences are 1e-11..1e-10, so rtol 1e-7 (+ atol 1e-7) leaves a margin while
    any wrong term of the gradient would be off by far more."""
    _, m = _pair(cls_name, torch.float64)
    x = torch.randn(LONG_T, 2, 4, dtype=torch.float64)
    n_states = 2 if cls_name == "LSTM" else 1
    hx = tuple(torch.randn(1, 2, 8, dtype=torch.float64) for _ in range(n_states))
    w = torch.randn(LONG_T, 2, 8, dtype=torch.float64) / 100
    leaves = [x, *hx, *m.parameters()]
    dirs = [torch.randn_like(t) for t in leaves]

    xl = x.clone().requires_grad_(True)
    hxl = tuple(h.clone().requires_grad_(True) for h in hx)
    loss = _loss(m, xl, hxl if n_states == 2 else hxl[0], w)
    grads = torch.autograd.grad(loss, [xl, *hxl, *m.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    analytic = sum((g * d).sum() for g, d in zip(grads, dirs)).item()

    eps = 1e-6

    def shifted(sign):
        with torch.no_grad():
            params = list(m.parameters())
            saved = [p.clone() for p in params]
            for p, d in zip(params, dirs[1 + n_states:]):
                p.add_(sign * eps * d)
            xs = x + sign * eps * dirs[0]
            hs = tuple(h + sign * eps * d for h, d in zip(hx, dirs[1:1 + n_states]))
            value = _loss(m, xs, hs if n_states == 2 else hs[0], w).item()
            for p, s in zip(params, saved):
                p.copy_(s)
        return value

    numeric = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(numeric - analytic) <= 1e-7 * abs(analytic) + 1e-7, (numeric, analytic)


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU"])
def test_100k_steps_gradient_tail_matches_torch(cls_name):
    """The gradient for the last K steps' inputs depends only on those steps, given the
    state entering them. So rnnfast's input gradient over the last K = 1,000 of 100,000
    steps must equal (up to float64 rounding) torch.nn's gradient for a run of just those
    K steps from the state rnnfast reached at step T-K."""
    ref, fast = _pair(cls_name, torch.float64)
    K = 1000
    x = torch.randn(LONG_T, 2, 4, dtype=torch.float64)
    w = torch.randn(LONG_T, 2, 8, dtype=torch.float64) / 100
    xl = x.clone().requires_grad_(True)
    out, state = fast(xl)
    states = state if isinstance(state, tuple) else (state,)
    loss = (out * w).sum() + sum(s.sum() for s in states)
    (grad_x,) = torch.autograd.grad(loss, [xl])
    # the state after step T-K-1
    with torch.no_grad():
        _, mid = fast(x[:-K])
    xt = x[-K:].clone().requires_grad_(True)
    with torch_native_cpu_rnn():
        out_t, state_t = ref(xt, mid)
        states_t = state_t if isinstance(state_t, tuple) else (state_t,)
        loss_t = (out_t * w[-K:]).sum() + sum(s.sum() for s in states_t)
        (grad_t,) = torch.autograd.grad(loss_t, [xt])
    assert_close(grad_x[-K:], grad_t, msg="input gradient over the last K steps")
    assert_close(out.detach()[-K:], out_t.detach(), msg="output over the last K steps")


def _time_per_step(m, T, reps):
    x = torch.randn(T, 2, 4, requires_grad=True)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out, _ = m(x)
        out.sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best / T


@pytest.mark.parametrize("cls_name", ["LSTM", "GRU", "RNN"])
def test_no_slowdown_per_step_at_100k(cls_name):
    """Forward+backward time per step at T=100,000 is within 2x of T=10,000. Measured in
    interleaved rounds (10k, 100k, 10k, 100k, ...) and compared by the minimum per-step
    time of each, so that load from other processes hits both alike. Expected ratio ~1
    (the step loop allocates nothing per step; buffers are O(T) and allocated once)."""
    _, m = _pair(cls_name, torch.float32)
    _time_per_step(m, 10_000, 1)  # warm-up
    short, long_ = float("inf"), float("inf")
    for _ in range(3):
        short = min(short, _time_per_step(m, 10_000, 2))
        long_ = min(long_, _time_per_step(m, LONG_T, 1))
    assert long_ < 2.0 * short, f"per step: {long_ * 1e6:.2f} us at 100k vs {short * 1e6:.2f} us at 10k"


_STACK_CHILD = textwrap.dedent("""
    import threading, torch, rnnfast
    threading.stack_size(512 * 1024)
    result = []

    def work():
        for cls in (rnnfast.LSTM, rnnfast.GRU, rnnfast.RNN):
            m = cls(4, 8, num_layers=2, bidirectional=True)
            x = torch.randn({T}, 2, 4, requires_grad=True)
            out, _ = m(x)
            out.sum().backward()
            result.append(bool(torch.isfinite(x.grad).all()))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    print(result)
""")


def test_100k_steps_on_a_small_stack():
    """Forward and backward over 100,000 steps (2 layers, bidirectional, all three kinds)
    on a thread with a 512 KiB stack: any per-step recursion or per-step stack allocation
    of even 8 bytes would overflow it (100,000 x 8 B > 512 KiB), and the child process
    would die with SIGSEGV. Run in a subprocess so that such a crash fails this test only."""
    proc = subprocess.run([sys.executable, "-c", _STACK_CHILD.format(T=LONG_T)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.strip() == "[True, True, True]", proc.stdout


# ----------------------------------------------------------------------- 64-bit offsets

def test_sequence_offsets_are_64_bit():
    """Sequence bookkeeping (csrc/cpu/sequence.cpp) sums batch_sizes into int64 row
    offsets: batch_sizes summing past 2^32 are reported exactly in the consistency error
    (an int32 sum would wrap to 5). Nothing of that size is allocated: the check fails
    before any buffer is made."""
    bs = torch.tensor([2**30] * 4 + [5])
    err = None
    try:
        # (batch_sizes are checked first, so the other arguments can stay tiny)
        torch.ops.rnnfast.rnn_forward(torch.zeros(3, 1), torch.zeros(1, 1),
                                      torch.zeros(1, 1), torch.zeros(1, 1), None, None, bs,
                                      False, False)
    except RuntimeError as e:
        err = str(e)
    assert err is not None and "batch_sizes sum to 4294967301 but the packed input has 3 rows" \
        in err, err


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_input_offsets_past_2_32_elements():
    """RNN (H=4) over a (T=8193, B=128, I=4096) float32 input: 4,295,491,584 elements, an
    uncommitted 17 GB mapping. Sequences 0 and 127 carry data at step 4096 (element offset
    2^31 for sequence 0) and step 8192 (offset 2^32); everything else is zero. With B=128
    the forward projects one step per chunk, at ``x + t * B * I``; an offset truncated to
    32 bits would read step 0 (zeros) instead of step 8192, a clean mismatch rather than a
    crash. Expected values come from the equivalent 4-feature problem
    (x'[t, b] = W_ih x[t, b], W_ih' = identity) through torch.nn.RNN in float64; float32
    tolerances. (~3 s: the GEMMs read all 17 GB, from the zero page.)"""
    I, B = 4096, 128
    T = (1 << 32) // (B * I) + 1
    n = T * B * I
    assert n > 2**32 and 4096 * B * I == 2**31 and 8192 * B * I == 2**32
    try:
        buf = mmap.mmap(-1, n * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                        | getattr(mmap, "MAP_NORESERVE", 0x4000))
    except OSError as e:  # e.g. vm.overcommit_memory=2
        pytest.skip(f"cannot map a 17 GB uncommitted region here: {e}")
    try:
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)  # read faults map the huge zero page: fast
        x = torch.frombuffer(buf, dtype=torch.float32, count=n).view(T, B, I)
        torch.manual_seed(0)
        m = rnnfast.RNN(I, 4)
        rows = {(4096, 0): 1.0, (4096, 127): -1.5, (8192, 0): 2.0, (8192, 127): -0.5}
        for (t, b), scale in rows.items():
            v = torch.zeros(I)
            v[torch.arange(0, I, 97)] = scale
            v[I - 1] = -scale
            x[t, b] = v
        rss0 = _rss()
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # B=128 would split the step loop; not what this tests
        try:
            with torch.no_grad():
                out, h_n = m(x)
        finally:
            torch.set_num_threads(old_threads)
        grew = _rss() - rss0
        x_small = torch.zeros(T, B, 4, dtype=torch.float64)
        for (t, b) in rows:
            x_small[t, b] = m.weight_ih_l0.double() @ x[t, b].double()
        del x
    finally:
        buf.close()
    assert grew < 1 << 30, f"RSS grew by {grew / 2**30:.1f} GiB: the input was copied"
    ref = torch.nn.RNN(4, 4, dtype=torch.float64)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.eye(4))
        ref.weight_hh_l0.copy_(m.weight_hh_l0)
        ref.bias_ih_l0.copy_(m.bias_ih_l0)
        ref.bias_hh_l0.copy_(m.bias_hh_l0)
        exp_out, exp_h = ref(x_small)
    # the data rows really change the output there: the zero-input trajectory (what a
    # wrapped read would give) is far outside the tolerance
    with torch.no_grad():
        zero_out, _ = ref(torch.zeros_like(x_small))
    for (t, b) in rows:
        assert (exp_out[t, b] - zero_out[t, b]).abs().max() > 1e-2
    assert_close(out.double(), exp_out, torch.float32, msg="output")
    assert_close(h_n.double(), exp_h, torch.float32, msg="h_n")

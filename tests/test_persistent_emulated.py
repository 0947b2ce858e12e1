"""The persistent CUDA kernels (csrc/kernels/persistent_device.cuh: forward and backward),
run in the SIMT emulator: results and gradients against torch.nn and the standard
algorithm over every cell kind, odd sizes and the module forms; what they do, from the
emulator's counters (one cooperative launch, a grid sync a step, W_hh read once); the
choice of algorithm from the modelled device (rnnfast.cuda_algorithm), and its refusals;
and a missing grid sync caught.
"""
from __future__ import annotations

import pytest
import torch

import rnnfast
from rnnfast.testing import emulate_cuda, emulated_device, emulator

from conftest import make_lengths, run_rnn, torch_native_cpu_rnn
from test_cuda_emulated import DTYPES, TOL, _module, _need_dtype

KINDS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
F32 = 4  # bytes


def _compare_with_torch(kind, dtype, H, B, form, T=5, I=4, algorithm="persistent", **spec):
    """A 2-layer bidirectional module under ``algorithm`` against torch.nn in float64:
    outputs, states and every gradient."""
    torch_m, fast_m = _module(kind, I, H, dtype, num_layers=2, bidirectional=True, **spec)
    if form == "unbatched":
        x = torch.randn(T, I, dtype=torch.float64).to(dtype)
        lengths = None
    else:
        x = torch.randn(T, B, I, dtype=torch.float64).to(dtype)
        lengths = make_lengths(B, T, sort=False) if form == "packed" else None
    run_form = {"packed": "packed_unsorted", "padded": "batched"}.get(form, form)
    with rnnfast.cuda_algorithm(algorithm), emulate_cuda(counters=True) as stats:
        got, grads = run_rnn(fast_m, x, None, run_form, False, lengths)
    with torch_native_cpu_rnn():
        want, _ = run_rnn(torch_m, x.double(), None, run_form, False, lengths,
                          grads=tuple(g.double() for g in grads))
    for name in want:
        if name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            continue
        torch.testing.assert_close(got[name].double(), want[name], **TOL[dtype],
                                   msg=lambda m, n=name: f"{kind} H={H} B={B} {form} {n}: {m}")
    return stats


@pytest.mark.parametrize("form", ("padded", "packed"))
@pytest.mark.parametrize("B", (1, 3, 8))
@pytest.mark.parametrize("kind,H", [(k, h) for k in KINDS for h in (1, 7, 33, 64)
                                    if not (k == "lstm_proj" and h == 1)])  # proj_size 3 < H
def test_odd_sizes_against_torch(kind, H, B, form):
    """Every kind at H 1, 7, 33, 64 and B 1, 3, 8, padded and packed (unsorted lengths),
    2 layers, both directions, float64: forward and backward on the persistent kernels
    (4 launches each, one per layer and direction)."""
    stats = _compare_with_torch(kind, torch.float64, H, B, form)
    for name in ("persistent_forward", "persistent_backward"):
        launches = stats.named(name)
        assert len(launches) == 4 and all(launch["cooperative"] for launch in launches), name
    assert not [launch for launch in stats.launches if launch["name"].endswith("_step")]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes_and_unbatched(kind, dtype):
    """float32, float64, float16, bfloat16 (half types: bf16/f16 weights and rows in shared
    memory, float32 sums, cell state and gates), batched and unbatched."""
    _need_dtype(dtype)
    _compare_with_torch(kind, dtype, 33, 3, "padded")
    _compare_with_torch(kind, dtype, 7, 1, "unbatched")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32),
                         ids=lambda d: str(d).split(".")[-1])
def test_half_types_run_on_tensor_cores(dtype):
    """float16 and bfloat16 products run as 16 x 16 x 16 tensor-core tiles (one mma_sync per
    output tile and k tile, per block and step); float32 runs none."""
    _need_dtype(dtype)
    T, B, H = 4, 3, 20
    m = rnnfast.GRU(16, H).to(dtype)
    x = torch.randn(T, B, 16).to(dtype).requires_grad_(True)
    with rnnfast.cuda_algorithm("persistent"), emulate_cuda(counters=True) as stats:
        m(x)[0].float().sum().backward()
    (fwd,) = stats.named("persistent_forward")
    (bwd,) = stats.named("persistent_backward")
    tiles = lambda n: -(-n // 16)  # noqa: E731
    if dtype == torch.float32:
        assert fwd["mma_syncs"] == 0 and bwd["mma_syncs"] == 0
        return
    # Forward: B x 3U outputs per block from rows of H; backward: B x U from rows of 3H.
    plan = {back: emulator().persistent_plan(1, 2, B, H, H, backward=back) for back in (0, 1)}
    assert fwd["grid"][0] == plan[0]["blocks"] and bwd["grid"][0] == plan[1]["blocks"]
    assert fwd["mma_syncs"] == T * plan[0]["blocks"] * tiles(B) * tiles(3 * plan[0]["U"]) * \
        tiles(H)
    assert bwd["mma_syncs"] == T * plan[1]["blocks"] * tiles(B) * tiles(plan[1]["U"]) * \
        tiles(3 * H)


@pytest.mark.parametrize("kind", KINDS)
def test_many_units_per_block(kind):
    """A small modelled device (3 SMs): each block owns several units (and projection
    outputs), the last block fewer; results as on the standard algorithm."""
    with emulated_device(sm_count=3):
        stats = _compare_with_torch(kind, torch.float64, 33, 3, "packed")
    grids = {launch["grid"][0] for launch in stats.named("persistent_forward")}
    assert grids == {3}, grids  # blocks of 11 units (RNN: 12, 12 and 9)


def test_persistent_matches_standard_in_float32():
    """The two algorithms agree to float32 rounding (their sums run in different orders)."""
    torch.manual_seed(1)
    m = rnnfast.LSTM(16, 24, num_layers=2, proj_size=5)
    x = torch.randn(9, 4, 16)
    with torch.no_grad(), emulate_cuda():
        with rnnfast.cuda_algorithm("standard"):
            a = m(x)
        with rnnfast.cuda_algorithm("persistent"):
            b = m(x)
    for u, v in zip((a[0], *a[1]), (b[0], *b[1])):
        torch.testing.assert_close(u, v, atol=2e-6, rtol=1e-5)


# ------------------------------------------------------------------ traffic counts


def _lstm_forward_counts(algorithm, T=50, B=4, H=64, train=False):
    torch.manual_seed(0)
    m = rnnfast.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=train)
    with torch.set_grad_enabled(train), rnnfast.cuda_algorithm(algorithm), \
            emulate_cuda(counters=True) as stats:
        m(x)
    return stats


def test_persistent_reads_w_hh_once():
    """LSTM forward, T=50, B=4, H=64, float32: one cooperative launch with a grid sync per
    step, W_hh read from global memory once; every other byte read is, per step, the
    step's input projection and h_{t-1} (once per block: the broadcast of h through L2,
    at most a quarter of W_hh by the plan); the only GEMM is the input projection. The
    standard algorithm runs a recurrent GEMM per step instead (reading W_hh T times)."""
    T, B, H = 50, 4, 64
    stats = _lstm_forward_counts("persistent", T, B, H)
    assert [launch["name"] for launch in stats.launches] == ["persistent_forward"]
    k = stats.launches[0]
    blocks = k["grid"][0]
    assert k["cooperative"] and k["grid_syncs"] == T
    assert blocks == 16  # 4 units a block: 16 gate rows = 4B
    w_hh = 4 * H * H * F32
    h_step, c_state, gx_step = B * H * F32, B * H * F32, B * 4 * H * F32
    assert blocks * h_step <= w_hh // 4
    # h_0 and c_0 once, then per step the input projection and h_{t-1} in every block.
    assert k["global_bytes_read"] == w_hh + h_step + c_state + T * (gx_step + blocks * h_step)
    # The output rows, then h_n and c_n.
    assert k["global_bytes_written"] == T * h_step + h_step + c_state
    assert stats.gemms == [dict(op="addmm", M=T * B, N=4 * H, K=H)]

    standard = _lstm_forward_counts("standard", T, B, H)
    recurrent = [g for g in standard.gemms if g["K"] == H and g["M"] == B]
    assert len(recurrent) == T and all(g["N"] == 4 * H for g in recurrent)  # W_hh, T times
    steps = standard.named("lstm_forward_step")
    assert len(steps) == T and not standard.named("persistent_forward")
    # Each step kernel reads the step's two products and the cell state, writes c and h twice.
    assert all(s["global_bytes_read"] == 2 * gx_step + c_state for s in steps)


def test_persistent_backward_reads_w_hh_once():
    """LSTM backward, T=50, B=4, H=64, float32: one cooperative launch with a grid sync per
    step that reads W_hh once; per step it reads each row's saved gates, cell, previous cell
    and output gradient, and, in every block, the step's gate gradients (the broadcast, a
    half of W_hh's bytes here); no per-step GEMM remains, only the whole-sequence ones."""
    T, B, H = 50, 4, 64
    torch.manual_seed(0)
    m = rnnfast.LSTM(H, H)
    x = torch.randn(T, B, H, requires_grad=True)
    with rnnfast.cuda_algorithm("persistent"), emulate_cuda(counters=True) as stats:
        out, _ = m(x)
        out.backward(torch.randn_like(out))
    (k,) = stats.named("persistent_backward")
    blocks, GH = k["grid"][0], 4 * H
    w_hh = GH * H * F32
    assert k["cooperative"] and k["grid_syncs"] == T
    assert blocks == 8 and blocks * B * GH * F32 == w_hh // 2  # 8 units a block
    per_row = (1 + 4 + 1 + 1) * H * F32  # dL/dy, gates, c_t, c_{t-1}
    assert k["global_bytes_read"] == w_hh + 2 * B * H * F32 + T * (B * per_row +
                                                                 blocks * B * GH * F32)
    assert k["global_bytes_written"] == T * B * GH * F32 + 2 * B * H * F32  # dG; dh_0, dc_0
    assert not [g for g in stats.gemms if g["M"] == B and g["K"] == GH]  # no step GEMM
    assert not stats.named("lstm_backward_step")


def test_persistent_training_writes_what_backward_reads():
    """In training it also writes the saved gates and cells, once per row."""
    T, B, H = 6, 3, 8
    k = _lstm_forward_counts("persistent", T, B, H, train=True).named("persistent_forward")[0]
    rows = T * B
    assert k["global_bytes_written"] == rows * H * F32 + (B * H + B * H) * F32 + \
        rows * 4 * H * F32 + rows * H * F32


# ------------------------------------------------------------------ choice and refusals


def _algorithm_used(B, H=16, **model):
    m = rnnfast.GRU(H, H)
    x = torch.randn(3, B, H)
    with torch.no_grad(), emulated_device(**model), emulate_cuda(counters=True) as stats:
        m(x)
    return "persistent" if stats.named("persistent_forward") else "standard"


def test_auto_takes_persistent_for_small_batches():
    assert _algorithm_used(1) == "persistent"
    assert _algorithm_used(32) == "persistent"
    assert _algorithm_used(33) == "standard"


def test_auto_falls_back_where_it_cannot_run():
    # A block's slice (with the step's rows) beyond the per-block shared memory ...
    assert _algorithm_used(4, H=64, sm_count=1, smem_per_block_optin=16 * 1024) == "standard"
    # ... or a grid that cannot be co-resident (too few registers for one block an SM).
    assert _algorithm_used(4, regs_per_sm=4096) == "standard"


def test_auto_decides_forward_and_backward_apart():
    """Where only the forward kernel fits (a block's backward slice, W_hh's columns plus the
    step's gate gradients, is larger), auto runs the persistent forward and the standard
    backward on what it saved; the gradients are right either way."""
    torch_m, fast_m = _module("lstm", 64, 64, torch.float64)
    x = torch.randn(3, 4, 64, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(torch_m(x)[0].sum(), x)[0]
    fast_m.float()
    with emulated_device(sm_count=4, smem_per_block_optin=22 * 1024), \
            emulate_cuda(counters=True) as stats:
        got = torch.autograd.grad(fast_m(x.float())[0].sum(), x)[0]
    names = [launch["name"] for launch in stats.launches]
    assert names.count("persistent_forward") == 1 and "persistent_backward" not in names
    assert names.count("lstm_backward_step") == 3
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_forced_persistent_refuses_with_the_numbers():
    m = rnnfast.LSTM(64, 64)
    x = torch.randn(3, 4, 64)
    with torch.no_grad(), emulated_device(sm_count=1, smem_per_block_optin=16 * 1024), \
            rnnfast.cuda_algorithm("persistent"), emulate_cuda():
        with pytest.raises(RuntimeError, match=r"cannot run on the persistent kernel: each "
                           r"block of the forward kernel needs \d+ bytes of shared memory .* "
                           r"more than the 16384 "):
            m(x)
    with torch.no_grad(), emulated_device(regs_per_sm=4096), \
            rnnfast.cuda_algorithm("persistent"), emulate_cuda():
        with pytest.raises(RuntimeError, match=r"cannot be co-resident \(0 per SM x 132 SMs\)"):
            m(x)
    # Forward fits and backward does not: the refusal comes from backward.
    x.requires_grad_(True)
    with emulated_device(sm_count=4, smem_per_block_optin=22 * 1024), \
            rnnfast.cuda_algorithm("persistent"), emulate_cuda():
        out, _ = m(x)
        with pytest.raises(RuntimeError, match=r"backward kernel needs \d+ bytes"):
            out.sum().backward()
    x.requires_grad_(False)
    # The layer's state is untouched by the refusal: the same call runs under "auto".
    with torch.no_grad(), emulate_cuda():
        out, _ = m(x)
    assert torch.isfinite(out).all()


def test_forced_persistent_takes_large_batches():
    """Beyond the batch "auto" gives it, the persistent kernel still runs when forced."""
    m = rnnfast.RNN(8, 8)
    x = torch.randn(2, 40, 8)
    with torch.no_grad(), emulate_cuda(counters=True) as stats:
        with rnnfast.cuda_algorithm("persistent"):
            forced = m(x)[0]
        with rnnfast.cuda_algorithm("auto"):
            auto = m(x)[0]
    assert len(stats.named("persistent_forward")) == 1
    assert len(stats.named("rnn_forward_step")) == 2
    torch.testing.assert_close(forced, auto, atol=2e-6, rtol=1e-5)


def test_cuda_algorithm_context():
    with pytest.raises(ValueError, match="unknown algorithm 'fast'"):
        with rnnfast.cuda_algorithm("fast"):
            pass
    emu = emulator()
    with rnnfast.cuda_algorithm("standard"):
        assert emu._cuda_algorithm() == 1 and rnnfast._C._cuda_algorithm() == 1
        with rnnfast.cuda_algorithm("persistent"):
            assert emu._cuda_algorithm() == 2
        assert emu._cuda_algorithm() == 1
    assert emu._cuda_algorithm() == 0 and rnnfast._C._cuda_algorithm() == 0


def test_emulated_device_is_restored():
    before = emulator().device_model()
    assert before == emulator().h100_model()
    with emulated_device(sm_count=7) as model:
        assert model["sm_count"] == 7
    assert emulator().device_model() == before
    with pytest.raises(KeyError, match="unknown device model field"):
        with emulated_device(sms=7):
            pass
    assert emulator().device_model() == before


# ------------------------------------------------------------------ a broken kernel


@pytest.mark.parametrize("kind", ("lstm", "lstm_proj", "gru"))
def test_missing_grid_sync_is_caught(kind):
    """A test-only variant of the kernel without its grid syncs gives wrong results
    (blocks read rows of the previous step before the other blocks wrote them; the
    emulator poisons them), which the comparison catches."""
    torch_m, fast_m = _module(kind, 4, 33, torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    want = torch_m(x)[0]
    emu = emulator()
    with torch.no_grad(), emulated_device(sm_count=8), rnnfast.cuda_algorithm("persistent"), \
            emulate_cuda():
        good = fast_m(x)[0]
        emu._persistent_drops_grid_syncs(True)
        try:
            broken = fast_m(x)[0]
        finally:
            emu._persistent_drops_grid_syncs(False)
    torch.testing.assert_close(good, want, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(broken, want, atol=1e-3, equal_nan=False)


@pytest.mark.parametrize("kind", ("lstm", "lstm_proj", "gru", "rnn_tanh"))
def test_missing_grid_sync_in_backward_is_caught(kind):
    """Likewise the backward kernel: after a correct forward, gradients without its grid
    syncs are wrong."""
    torch_m, fast_m = _module(kind, 4, 33, torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(torch_m(x)[0].sum(), x)[0]
    emu = emulator()
    with emulated_device(sm_count=8), rnnfast.cuda_algorithm("persistent"), emulate_cuda():
        good = torch.autograd.grad(fast_m(x)[0].sum(), x)[0]
        out = fast_m(x)[0]
        emu._persistent_drops_grid_syncs(True)
        try:
            broken = torch.autograd.grad(out.sum(), x)[0]
        finally:
            emu._persistent_drops_grid_syncs(False)
    torch.testing.assert_close(good, want, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(broken, want, atol=1e-3, equal_nan=False)

"""The CPU step loops' GEMM (csrc/cpu/blas.h PackedWeight: the panel micro-kernel of
csrc/cpu/panel_gemm.h where the CPU kernel set has one, else MKL's packed GEMM or the
BLAS), checked directly against a float64 product at the awkward sizes: every row-block
remainder (M = 1..8, the 12- and 16-row blocks of the AVX-512 set and beyond), partial panels (N not a multiple of 16), tiny and
long reductions, strided rows, beta 0 and 1."""
from __future__ import annotations

import itertools

import pytest
import torch

import rnnfast
from rnnfast import _C

MS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 29, 64, 131]
NS = [1, 5, 16, 17, 31, 33, 48, 65, 100, 130]
KS = [1, 7, 128, 301, 700]
EPS = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}


def _assert_within_rounding(out, x, wk, beta, c0, K, dtype, what):
    """|out - ref| <= (K + 2) u sum|terms|: the rounding bound of a length-K dot product
    plus one addition (u = unit roundoff of dtype), elementwise."""
    ref = x.double() @ wk.double() + beta * c0.double()
    bound = (K + 2) * EPS[dtype] * ((x.double().abs() @ wk.double().abs()) + abs(beta) * c0.double().abs())
    worst = ((out.double() - ref).abs() - bound).max().item()
    assert worst <= 0, f"{what}: error above the rounding bound by {worst:g}"


def _check(M, N, K, trans_w, beta, dtype, gen):
    x = torch.randn(M, K, dtype=dtype, generator=gen)
    w = torch.randn(*((N, K) if trans_w else (K, N)), dtype=dtype, generator=gen)
    out = torch.randn(M, N, dtype=dtype, generator=gen)
    c0 = out.clone()
    _C._step_gemm(x, w, trans_w, beta, out)
    _assert_within_rounding(out, x, w.t() if trans_w else w, beta, c0, K, dtype,
                            f"M={M} N={N} K={K} trans_w={trans_w} beta={beta}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("trans_w", [True, False], ids=["W^T", "W"])
def test_step_gemm_against_float64(trans_w, beta, dtype):
    gen = torch.Generator().manual_seed(1234)
    for M, N, K in itertools.product(MS, NS, KS):
        _check(M, N, K, trans_w, beta, dtype, gen)


@pytest.mark.parametrize("trans_w", [True, False], ids=["W^T", "W"])
def test_step_gemm_long_reductions_many_rows(trans_w):
    """K past the AVX-512 set's threshold for packed row tiles (768), with row counts
    that split into uneven row blocks, on strided rows."""
    gen = torch.Generator().manual_seed(77)
    for M, N, K in [(9, 33, 768), (13, 100, 1031), (29, 17, 800), (131, 65, 1024)]:
        _check(M, N, K, trans_w, 0.0, torch.float32, gen)
        _check(M, N, K, trans_w, 1.0, torch.float32, gen)
        xs = torch.randn(M, K + 5, generator=gen)
        x = xs[:, 2:K + 2]
        w = torch.randn(*((N, K) if trans_w else (K, N)), generator=gen)
        out = torch.randn(M, N, generator=gen)
        c0 = out.clone()
        _C._step_gemm(x, w, trans_w, 0.0, out)
        _assert_within_rounding(out, x, w.t() if trans_w else w, 0.0, c0, K, torch.float32,
                                f"strided M={M} N={N} K={K}")


@pytest.mark.parametrize("trans_w", [True, False], ids=["W^T", "W"])
def test_step_gemm_strided_rows_and_untouched_padding(trans_w):
    gen = torch.Generator().manual_seed(5)
    for M, N, K in [(1, 17, 9), (4, 33, 64), (7, 100, 5), (64, 16, 130)]:
        xs = torch.randn(M, K + 3, generator=gen)
        ws = torch.randn(*((N, K + 3) if trans_w else (K, N + 3)), generator=gen)
        outs = torch.randn(M, N + 3, generator=gen)
        pad = outs[:, N:].clone()
        x, out = xs[:, :K], outs[:, :N]
        w = ws[:, :K] if trans_w else ws[:, :N]
        c0 = out.clone()
        _C._step_gemm(x, w, trans_w, 0.0, out)
        _assert_within_rounding(out, x, w.t() if trans_w else w, 0.0, c0, K, torch.float32,
                                f"strided M={M} N={N} K={K}")
        assert torch.equal(outs[:, N:], pad), "columns past N were written"


def test_step_gemm_propagates_nan_and_inf():
    x = torch.randn(5, 40)
    w = torch.randn(37, 40)
    x[2, 3] = float("nan")
    x[4, 0] = float("inf")
    w[0].abs_()  # column 0 of op(w) has w[0, 0] > 0: inf * positive
    out = torch.zeros(5, 37)
    _C._step_gemm(x, w, True, 0.0, out)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()
    assert out[4, 0].item() == float("inf")


def test_step_gemm_is_bitwise_reproducible():
    gen = torch.Generator().manual_seed(9)
    x, w = torch.randn(4, 513, generator=gen), torch.randn(70, 513, generator=gen)
    a, b = torch.empty(4, 70), torch.empty(4, 70)
    _C._step_gemm(x, w, True, 0.0, a)
    _C._step_gemm(x, w, True, 0.0, b)
    assert torch.equal(a, b)


def test_step_gemm_backend_follows_the_kernel_set():
    info = rnnfast.build_info()
    if info["cpu_kernels"] in ("avx2", "avx512"):
        assert info["step_gemm"] == "rnnfast panel micro-kernel"
    else:
        assert info["step_gemm"] != "rnnfast panel micro-kernel"


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_single_use_weight_read_in_place(beta):
    """A float32 W^T that serves at most 8 rows in all (a short layer call at a small batch) is
    not packed: its products read W's rows in place. Within the rounding bound at every size,
    and each element the same bits whatever other rows or columns are computed with it (the
    step loops split columns over threads), where the step GEMM is rnnfast's panel kernel (with
    MKL's, as under the generic kernel set, the weight is packed as before)."""
    in_place = rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel"
    gen = torch.Generator().manual_seed(99)
    for M, N, K in itertools.product([1, 2, 3, 8], [1, 17, 130], [1, 7, 301, 700]):
        x = torch.randn(M, K, generator=gen)
        w = torch.randn(N, K, generator=gen)
        out = torch.randn(M, N, generator=gen)
        c0 = out.clone()
        _C._step_gemm(x, w, True, beta, out, uses=1)
        _assert_within_rounding(out, x, w.t(), beta, c0, K, torch.float32, f"M={M} N={N} K={K}")
        if in_place and N > 1:
            part = c0[:, 1:].clone()
            _C._step_gemm(x, w[1:], True, beta, part, uses=1)
            assert torch.equal(part, out[:, 1:])
            row = c0[:1].clone()
            _C._step_gemm(x[:1], w, True, beta, row, uses=1)
            assert torch.equal(row, out[:1])


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"])
def test_short_calls_at_small_batch_match_torch(kind):
    """Calls of one or two steps at batches 1-4 (their weights read in place, unpacked) against
    torch.nn, 2-layer bidirectional, on one and on two threads (same bits on both where the
    step GEMM is rnnfast's panel kernel and there is no projection)."""
    # (Not with a projection: its product is the BLAS's, whose sums may depend on the split.)
    same_bits = rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel" and kind != "lstm_proj"
    classes = {"lstm": (torch.nn.LSTM, rnnfast.LSTM, {}), "lstm_proj": (torch.nn.LSTM, rnnfast.LSTM, {"proj_size": 37}),
               "gru": (torch.nn.GRU, rnnfast.GRU, {}),
               "rnn_tanh": (torch.nn.RNN, rnnfast.RNN, {}), "rnn_relu": (torch.nn.RNN, rnnfast.RNN, {"nonlinearity": "relu"})}
    ref_cls, cls, kwargs = classes[kind]
    torch.manual_seed(0)
    ref = ref_cls(50, 97, num_layers=2, bidirectional=True, **kwargs)
    m = cls(50, 97, num_layers=2, bidirectional=True, **kwargs)
    m.load_state_dict(ref.state_dict())
    old = torch.get_num_threads()
    try:
        for T, B in [(1, 1), (1, 4), (2, 1), (2, 4)]:
            x = torch.randn(T, B, 50)
            with torch.no_grad():
                want = ref(x)[0]
                outs = []
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    outs.append(m(x)[0])
            torch.testing.assert_close(outs[0], want, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(outs[1], want, atol=1e-5, rtol=1e-4)
            if same_bits:
                assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(old)


def _needs_panel_kernel():
    if rnnfast.build_info()["step_gemm"] != "rnnfast panel micro-kernel":
        pytest.skip(f"widened bfloat16 weights: the {rnnfast.build_info()['cpu_kernels']} "
                    "kernel set has no panel micro-kernel")


@pytest.fixture(params=["always", "never"], ids=["bf16-panels", "f32-panels"])
def half_panels(request):
    """Widened bfloat16 weights for up to 8 rows packed as bfloat16 panels (widened in
    registers) or as float32 panels, whatever their size."""
    _needs_panel_kernel()
    _C._set_bf16_half_panels(request.param)
    try:
        assert _C._bf16_half_panels(8, 16, 16) == (request.param == "always")
        assert not _C._bf16_half_panels(9, 16, 16)
        yield request.param
    finally:
        _C._set_bf16_half_panels("auto")


def test_bfloat16_panels_where_float32_ones_would_crowd_l2():
    """The rule: bfloat16 panels for at most 8 rows where the float32 panels would take at
    least the bytes build_info names for that many rows (3/4 of L2 at 1-4 rows, L2 at 5-6,
    twice L2 at 7-8), float32 panels otherwise."""
    _needs_panel_kernel()
    info = rnnfast.build_info()["bf16_half_panels"]
    bounds = [float(part.split(" MiB")[0]) for part in info.split(">= ")[1:]]
    assert len(bounds) == 3 and bounds[0] < bounds[1] < bounds[2], info
    n = 512
    for rows, mib in zip((range(1, 5), range(5, 7), range(7, 9)), bounds):
        floats = int(mib * 2 ** 20) // 4  # at the bound (to 2 decimals of a MiB)
        k_over, k_under = floats // n + 64, floats // n - 64
        for m in rows:
            assert _C._bf16_half_panels(m, n, k_over), (m, mib)
            assert not _C._bf16_half_panels(m, n, k_under), (m, mib)
    assert not _C._bf16_half_panels(9, n, int(bounds[2] * 2 ** 20) // 4 // n + 64)
    assert not _C._bf16_half_panels(1, 16, 16)


@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("trans_w", [True, False], ids=["W^T", "W"])
def test_widened_bfloat16_weight_is_the_float32_product_bitwise(trans_w, beta, half_panels):
    """A bfloat16 weight packed for the widened path (bf16_terms 0) is widened exactly, into
    the micro-kernel's float32 panels or, for up to 8 rows, in registers from bfloat16 panels:
    every product equals, bit for bit, the one packed from a float32 copy of the same values,
    at every row count up to 8, partial panels, odd K and strided weights."""
    gen = torch.Generator().manual_seed(5)
    cases = [(M, 16 * M + 3, 5 + 37 * M) for M in range(1, 9)]
    cases += [(1, 16, 7), (3, 17, 128), (7, 33, 301), (8, 200, 64), (13, 100, 64), (64, 48, 1031)]
    for M, N, K in cases:
        shape = (N, K) if trans_w else (K, N)
        w16 = torch.randn(shape[0], shape[1] + 3, generator=gen).bfloat16()[:, 1:shape[1] + 1]
        x = torch.randn(M, K, generator=gen)
        c0 = torch.randn(M, N, generator=gen)
        got, want = c0.clone(), c0.clone()
        _C._step_gemm(x, w16, trans_w, beta, got, bf16_terms=0)
        _C._step_gemm(x, w16.float().contiguous(), trans_w, beta, want)
        assert torch.equal(got, want), (M, N, K)


def test_widened_bfloat16_rows_and_grouped_weight_bitwise(half_panels):
    """The widened input projection: bfloat16 rows of x (strided) widened for the panel
    micro-kernel onto the bias rows, against a grouped bfloat16 weight (a thread's gate rows):
    the float32 product of the same values, packed from a float32 copy, bit for bit. Also
    where the rows are widened a block at a time (128 rows of K 257) and where the float32
    panels would crowd L2, so that all rows are widened at once (800 x 600)."""
    gen = torch.Generator().manual_seed(6)
    for M, per_group, groups, K in [(1, 16, 4, 96), (5, 7, 3, 33), (8, 40, 3, 70), (128, 24, 4, 257),
                                    (100, 200, 4, 600)]:
        stride = per_group + 5
        w16 = torch.randn((groups - 1) * stride + per_group, K, generator=gen).bfloat16()
        rows = torch.cat([torch.arange(g * stride, g * stride + per_group) for g in range(groups)])
        N = per_group * groups
        xs = torch.randn(M, K + 4, generator=gen).bfloat16()
        x = xs[:, 2:K + 2]
        bias = torch.randn(N, generator=gen)
        for b in (bias, None):
            got = torch.full((M, N), float("nan"))
            _C._step_gemm_bf16_rows(x, w16, b, got, groups=groups, group_stride=stride, widened=True)
            want = (b if b is not None else torch.zeros(N)).expand(M, N).contiguous()
            _C._step_gemm(x.float(), w16[rows].float().contiguous(), True, 1.0, want)
            assert torch.equal(got, want), (M, per_group, groups, K, b is None)

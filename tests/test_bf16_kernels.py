"""The bfloat16 step products of the bfloat16 layers (csrc/cpu/bf16_amx.cpp, through
PackedWeight's bfloat16 mode), on each kernel this CPU has (AMX-BF16 tiles, AVX512-BF16 dot
products; skipped by name where it lacks one): against a float64 product of the same
rounded operands at the tile edges (M around 16 and 32 rows, N around 16-column tiles, K
around 32-value blocks), x as one bfloat16 value or as the sum of two, strided rows, beta 0
and 1, and the same bits for a column whatever the other columns are (what makes a split
step loop give the same result on any number of threads)."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import use_bf16_kernel
from rnnfast import _C


@pytest.fixture(autouse=True, params=["amx", "avx512_bf16"])
def _kernel(request):
    yield from use_bf16_kernel(request.param)


MS = [1, 2, 15, 16, 17, 31, 32, 33, 47, 64, 70]
NS = [1, 15, 16, 17, 47, 48, 49, 100]
KS = [1, 31, 32, 33, 300, 512]  # 512: rows of A a multiple of 1 KiB apart, padded
U32 = 2.0 ** -24


def _bf16(t):
    return t.to(torch.bfloat16).double()


def _rounded_x(x, terms):
    hi = x.to(torch.bfloat16).float()
    if terms == 1:
        return hi.double()
    return hi.double() + (x - hi).to(torch.bfloat16).double()


def _check(M, N, K, trans_w, beta, terms, gen, x=None):
    if x is None:
        x = torch.randn(M, K, generator=gen)
    w = torch.randn(*((N, K) if trans_w else (K, N)), generator=gen)
    out = torch.randn(M, N, generator=gen)
    c0 = out.clone()
    _C._step_gemm(x, w, trans_w, beta, out, bf16_terms=terms)
    xr = _rounded_x(x, terms)
    wk = _bf16(w.t() if trans_w else w)
    ref = xr @ wk + beta * c0.double()
    # float32 accumulation of products that are exact (bfloat16 x bfloat16 fits float32),
    # with two terms one more addition per product
    bound = (K * terms + 2) * U32 * (xr.abs() @ wk.abs() + abs(beta) * c0.double().abs())
    worst = ((out.double() - ref).abs() - bound).max().item()
    assert worst <= 0, (f"M={M} N={N} K={K} trans_w={trans_w} beta={beta} terms={terms}: "
                        f"error above the rounding bound by {worst:g}")


@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("trans_w", [True, False], ids=["W^T", "W"])
def test_amx_step_gemm_against_float64(trans_w, beta, terms):
    gen = torch.Generator().manual_seed(4321)
    for M, N, K in itertools.product(MS, NS, KS):
        _check(M, N, K, trans_w, beta, terms, gen)


def test_amx_two_terms_are_closer_than_one():
    """x as hi + lo carries 16 significant bits: the error of the product falls by far more
    than the 2^-8 of one rounding would allow."""
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(20, 256, generator=gen), torch.randn(64, 256, generator=gen)
    exact = x.double() @ _bf16(w).t()
    errs = []
    for terms in (1, 2):
        out = torch.empty(20, 64)
        _C._step_gemm(x, w, True, 0.0, out, bf16_terms=terms)
        errs.append((out.double() - exact).abs().max().item())
    assert errs[1] < errs[0] / 30, errs


@pytest.mark.parametrize("trans_w", [True, False], ids=["W^T", "W"])
def test_amx_step_gemm_strided_rows(trans_w):
    gen = torch.Generator().manual_seed(9)
    for M, N, K in [(17, 33, 45), (40, 100, 300)]:
        xs = torch.randn(M, K + 7, generator=gen)
        _check(M, N, K, trans_w, 1.0, 2, gen, x=xs[:, 3:K + 3])


def test_amx_step_gemm_columns_do_not_depend_on_the_others():
    gen = torch.Generator().manual_seed(11)
    x, w = torch.randn(37, 200, generator=gen), torch.randn(90, 200, generator=gen)
    full = torch.empty(37, 90)
    _C._step_gemm(x, w, True, 0.0, full, bf16_terms=2)
    for lo, hi in [(0, 16), (16, 49), (49, 90), (5, 6)]:
        part = torch.empty(37, hi - lo)
        _C._step_gemm(x, w[lo:hi], True, 0.0, part, bf16_terms=2)
        assert torch.equal(part, full[:, lo:hi]), (lo, hi)


def test_amx_step_gemm_propagates_nan_and_inf():
    x = torch.ones(3, 40)
    x[1, 7] = float("nan")
    x[2, 3] = float("inf")
    w = torch.ones(20, 40)
    out = torch.empty(3, 20)
    _C._step_gemm(x, w, True, 0.0, out, bf16_terms=2)
    assert torch.all(out[0] == 40)
    assert torch.isnan(out[1]).all()
    assert torch.isnan(out[2]).all() or torch.isinf(out[2]).all()


def test_amx_accumulate_columns_do_not_depend_on_the_others():
    """With beta 1 a tile wholly inside C starts from C itself and an edge tile from a
    staged copy; both add the products to the same start in the same order."""
    gen = torch.Generator().manual_seed(12)
    x, w = torch.randn(37, 200, generator=gen), torch.randn(90, 200, generator=gen)
    c0 = torch.randn(37, 90, generator=gen)
    full = c0.clone()
    _C._step_gemm(x, w, True, 1.0, full, bf16_terms=1)
    for lo, hi in [(0, 16), (16, 49), (49, 90), (5, 6), (3, 35)]:
        part = c0[:, lo:hi].clone()
        _C._step_gemm(x, w[lo:hi], True, 1.0, part, bf16_terms=1)
        assert torch.equal(part, full[:, lo:hi]), (lo, hi)


def _check_rows(M, N, K, bias, gen, x=None):
    if x is None:
        x = torch.randn(M, K, generator=gen).to(torch.bfloat16)
    w = torch.randn(N, K, generator=gen)
    b = torch.randn(N, generator=gen) if bias else None
    out = torch.full((M, N), float("nan"))
    _C._step_gemm_bf16_rows(x, w, b, out)
    xr, wk = x.double(), _bf16(w.t())
    b64 = b.double() if bias else torch.zeros(N, dtype=torch.float64)
    ref = xr @ wk + b64
    bound = (K + 2) * U32 * (xr.abs() @ wk.abs() + b64.abs())
    worst = ((out.double() - ref).abs() - bound).max().item()
    assert worst <= 0, f"M={M} N={N} K={K} bias={bias}: error above the rounding bound by {worst:g}"


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_amx_bfloat16_rows_against_float64(bias):
    """The input projection of the bfloat16 layers: x read as bfloat16, C started from the
    bias row (broadcast) or zeros, at the tile edges."""
    gen = torch.Generator().manual_seed(77)
    for M, N, K in itertools.product([1, 16, 17, 33, 64, 70], [1, 16, 17, 48, 49, 100],
                                     [1, 31, 32, 33, 300]):
        _check_rows(M, N, K, bias, gen)


def test_amx_bfloat16_rows_strided_and_split_invariant():
    gen = torch.Generator().manual_seed(78)
    xs = torch.randn(45, 140, generator=gen).to(torch.bfloat16)
    _check_rows(45, 57, 128, True, gen, x=xs[:, 5:133])
    x, w, b = xs[:, :100], torch.randn(90, 100, generator=gen), torch.randn(90, generator=gen)
    full = torch.empty(45, 90)
    _C._step_gemm_bf16_rows(x, w, b, full)
    for lo, hi in [(0, 16), (16, 49), (49, 90), (7, 8)]:
        part = torch.empty(45, hi - lo)
        _C._step_gemm_bf16_rows(x, w[lo:hi], b[lo:hi].contiguous(), part)
        assert torch.equal(part, full[:, lo:hi]), (lo, hi)


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_amx_bfloat16_weight_packed_as_it_is(groups):
    """W packed into the tiles from its bfloat16 values (the layers' weights): op(W)'s
    columns are `groups` blocks of rows of W, block g from row g * stride (a thread's rows
    of every gate), against the same product on a float32 copy of those rows; K and N at
    and off the tile edges, odd row strides."""
    gen = torch.Generator().manual_seed(79 + groups)
    for per, K, M in itertools.product([1, 5, 16, 20, 37], [1, 24, 32, 40, 64, 97], [1, 17, 40]):
        stride = per + 3
        w16 = torch.randn(groups * stride, K + 1, generator=gen).to(torch.bfloat16)[:, 1:]
        x = torch.randn(M, K, generator=gen).to(torch.bfloat16)
        b = torch.randn(groups * per, generator=gen)
        rows = [g * stride + i for g in range(groups) for i in range(per)]
        got = torch.empty(M, groups * per)
        _C._step_gemm_bf16_rows(x, w16, b, got, groups=groups, group_stride=stride)
        want = torch.empty(M, groups * per)
        _C._step_gemm_bf16_rows(x, w16[rows].float().contiguous(), b, want)
        assert torch.equal(got, want), (per, K, M)


@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize("trans_w", [True, False])
def test_amx_step_weight_packed_from_bfloat16(trans_w, terms):
    """The step products' W packed from its bfloat16 values (trans_w False: the column slice
    [K, N] of a row-major weight, as the backward's dh = dG W_hh reads it) give the same bits
    as the same weight packed from a float32 copy; K and N at and off the tile edges, odd row
    strides, beta 0 and 1."""
    gen = torch.Generator().manual_seed(83 + terms)
    for N, K, M in itertools.product([1, 5, 16, 20, 37], [1, 24, 32, 40, 97], [1, 17, 40]):
        rows, cols = (N, K) if trans_w else (K, N)
        w16 = torch.randn(rows, cols + 3, generator=gen).to(torch.bfloat16)[:, 2:cols + 2]
        x = torch.randn(M, K, generator=gen)
        for beta in (0.0, 1.0):
            c0 = torch.randn(M, N, generator=gen)
            got, want = c0.clone(), c0.clone()
            _C._step_gemm(x, w16, trans_w, beta, got, bf16_terms=terms)
            _C._step_gemm(x, w16.float().contiguous(), trans_w, beta, want, bf16_terms=terms)
            assert torch.equal(got, want), (N, K, M, beta)


@pytest.mark.parametrize("rate", [0.5, 1.49, 1.5, 2.0])
def test_dot_products_serve_the_calls_the_measured_rate_says(_kernel, rate):
    """Where the CPU's best kernel is the dot products (no AMX): every call where VDPBF16PS
    retires 1.5 times FMA's multiply-adds a second or more; below that the LSTM and GRU at one
    row a step whose float32 W_hh slice per thread takes at least a MiB, the Elman RNN never.
    Asked for, every call uses the selected kernel (and AMX always serves every call)."""
    assert _C._select_bf16_kernel(_kernel, forced=False)
    _C._set_bf16_dot_rate(rate)
    mib = 1 << 20
    try:
        if _kernel == "amx" or rate >= 1.5:
            assert all(_C._bf16_kernels_for(rnn, b, w) for rnn in (False, True) for b in (1, 4, 5, 512)
                       for w in (1, 64 * mib))
        else:
            assert [_C._bf16_kernels_for(False, b) for b in (1, 2, 4, 5, 64)] == [
                True, False, False, False, False]
            assert not any(_C._bf16_kernels_for(True, b) for b in (1, 4, 64))
            assert [_C._bf16_kernels_for(False, b, w) for b, w in (
                (1, mib), (1, mib - 1), (2, 2 * mib), (2, 2 * mib - 1), (4, 4 * mib),
                (4, 64 * mib), (5, 64 * mib))] == [True, False, False, False, False, False, False]
            assert not _C._bf16_kernels_for(True, 1, 64 * mib)
        assert _C._select_bf16_kernel(_kernel)
        assert all(_C._bf16_kernels_for(rnn, b) for rnn in (False, True) for b in (1, 5, 512))
        assert _C._select_bf16_kernel("fp32")
        assert not any(_C._bf16_kernels_for(rnn, b) for rnn in (False, True) for b in (1, 5))
    finally:
        _C._set_bf16_dot_rate(-1.0)


def test_calls_the_rule_leaves_out_take_the_widened_path(_kernel):
    """A bfloat16 call runs on the kernels where bf16_kernels_for says so; the rest keep the
    bfloat16 data path with float32 products (widened) where the kernel set has the panel
    micro-kernel, else the float32 path on up-converted copies; 'widened' sends every call
    there, 'fp32' every call to the copies."""
    import rnnfast
    panel = rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel"
    assert _C._select_bf16_kernel(_kernel, forced=False)
    _C._set_bf16_dot_rate(0.5)
    try:
        for rnn, b in itertools.product((False, True), (1, 4, 5, 64)):
            want = ("kernels" if _C._bf16_kernels_for(rnn, b) else "widened" if panel else "copies")
            assert _C._bf16_path(rnn, b) == want, (rnn, b)
        if _kernel == "avx512_bf16":
            assert _C._bf16_path(False, 64) == ("widened" if panel else "copies")
            assert _C._bf16_path(True, 1) == ("widened" if panel else "copies")
        assert _C._select_bf16_kernel("widened") == panel
        if panel:
            assert not any(_C._bf16_kernels_for(rnn, b) for rnn in (False, True) for b in (1, 64))
            assert {_C._bf16_path(rnn, b) for rnn in (False, True) for b in (1, 64)} == {"widened"}
            assert rnnfast.build_info()["bf16_gemm"].startswith("float32 products on widened")
        assert _C._select_bf16_kernel("fp32")
        assert {_C._bf16_path(rnn, b) for rnn in (False, True) for b in (1, 64)} == {"copies"}
    finally:
        _C._set_bf16_dot_rate(-1.0)
        _C._reset_bf16_kernel()


def test_dot_rate_is_measured_in_the_range_of_known_cores(_kernel):
    """The measured VDPBF16PS/FMA rate: about 0.5 on Sapphire Rapids, 2 on Zen 4 (16 vs 32
    multiply-adds an instruction, at their throughputs); the same rule results when measured
    again, and build_info reports it."""
    import rnnfast
    first = _C._bf16_dot_rate()
    _C._set_bf16_dot_rate(-1.0)
    again = _C._bf16_dot_rate()
    assert 0.2 <= first <= 4.5 and 0.2 <= again <= 4.5, (first, again)
    assert (first >= 1.5) == (again >= 1.5), (first, again)
    if _C._step_gemm_bf16() == "avx512_bf16":
        assert rnnfast.build_info()["bf16_dot_rate"].startswith(f"{again:.2f} ")
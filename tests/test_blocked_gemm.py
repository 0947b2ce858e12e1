"""The blocked GEMM of the backward pass's whole-sequence products (dW = dG^T X and
dX = dG W; csrc/cpu/panel_gemm.h, csrc/cpu/blas.h sequence_gemm), checked directly
against a float64 product at the awkward sizes: row-tile remainders (M not a multiple of
6 or 12), partial panels and panel pairs (N not a multiple of 16 or 32), k-block and row-block edges (K around 256,
M around 144), more columns than one packed block of B holds (N > 512), op(A) = A and
A^T, accumulate or not, strided rows. Then at the layer level, at sizes where the layers
take this path, against torch.nn."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import rnnfast
from rnnfast import _C

HAS_KERNEL = rnnfast.build_info()["blocked_gemm"] == "true"
needs_kernel = pytest.mark.skipif(
    not HAS_KERNEL, reason="this CPU's kernel set has no blocked GEMM (the BLAS is used instead)")

U32 = 2.0 ** -24


def _operands(M, N, K, trans_a, gen, extra=0):
    a = torch.randn(*((K, M + extra) if trans_a else (M, K + extra)), generator=gen)
    b = torch.randn(K, N + extra, generator=gen)
    a = a[:, :M] if trans_a else a[:, :K]
    return a, b[:, :N]


def _assert_within_rounding(out, a, b, trans_a, accumulate, c0, K, what):
    """|out - ref| <= (K + 2) u sum|terms|, elementwise: the rounding bound of a length-K
    dot product (summed in any order) plus the addition of C."""
    op_a = (a.t() if trans_a else a).double()
    ref = op_a @ b.double()
    mag = op_a.abs() @ b.double().abs()
    if accumulate:
        ref = ref + c0.double()
        mag = mag + c0.double().abs()
    worst = ((out.double() - ref).abs() - (K + 2) * U32 * mag).max().item()
    assert worst <= 0, f"{what}: error above the rounding bound by {worst:g}"


@needs_kernel
@pytest.mark.parametrize("accumulate", [False, True], ids=["C=AB", "C+=AB"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A^T"])
def test_blocked_gemm_against_float64(trans_a, accumulate):
    gen = torch.Generator().manual_seed(11)
    for M, N, K in itertools.product([1, 5, 6, 7, 11, 12, 13, 143, 145], [1, 15, 16, 17, 31, 33, 100],
                                     [1, 255, 256, 257, 800]):
        a, b = _operands(M, N, K, trans_a, gen)
        # C is not read without accumulate: NaN there must not leak into the result.
        out = torch.randn(M, N, generator=gen) if accumulate else torch.full((M, N), float("nan"))
        c0 = out.clone()
        _C._blocked_gemm(a, b, trans_a, accumulate, out)
        _assert_within_rounding(out, a, b, trans_a, accumulate, c0, K,
                                f"M={M} N={N} K={K} trans_a={trans_a} accumulate={accumulate}")


@needs_kernel
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A^T"])
def test_blocked_gemm_wider_than_one_block_of_b(trans_a):
    gen = torch.Generator().manual_seed(12)
    M, N, K = 13, 8 * 512 + 37, 9
    a, b = _operands(M, N, K, trans_a, gen)
    out = torch.empty(M, N)
    _C._blocked_gemm(a, b, trans_a, False, out)
    _assert_within_rounding(out, a, b, trans_a, False, None, K, f"M={M} N={N} K={K}")


@needs_kernel
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "A^T"])
def test_blocked_gemm_strided_rows_and_untouched_padding(trans_a):
    gen = torch.Generator().manual_seed(13)
    for M, N, K in [(7, 17, 5), (150, 33, 400), (6, 16, 1)]:
        a, b = _operands(M, N, K, trans_a, gen, extra=3)
        outs = torch.randn(M, N + 3, generator=gen)
        pad = outs[:, N:].clone()
        out = outs[:, :N]
        c0 = out.clone()
        _C._blocked_gemm(a, b, trans_a, True, out)
        _assert_within_rounding(out, a, b, trans_a, True, c0, K, f"strided M={M} N={N} K={K}")
        assert torch.equal(outs[:, N:], pad), "columns past N were written"


@needs_kernel
def test_blocked_gemm_empty_reduction():
    out = torch.randn(5, 20)
    c0 = out.clone()
    _C._blocked_gemm(torch.empty(5, 0), torch.empty(0, 20), False, True, out)
    assert torch.equal(out, c0)
    _C._blocked_gemm(torch.empty(5, 0), torch.empty(0, 20), False, False, out)
    assert torch.equal(out, torch.zeros(5, 20))


@needs_kernel
def test_blocked_gemm_propagates_nan_and_inf():
    a = torch.randn(8, 40)
    b = torch.randn(40, 37)
    a[2, 3] = float("nan")
    a[7, 0] = float("inf")
    b[0, 0] = abs(b[0, 0].item()) + 1.0  # inf * positive in column 0
    out = torch.zeros(8, 37)
    _C._blocked_gemm(a, b, False, False, out)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3, 4, 5, 6]]).all()
    assert out[7, 0].item() == float("inf")


@needs_kernel
def test_blocked_gemm_same_bits_for_any_thread_count():
    """Rows of C are split across the threads in whole tiles and each element's sum order
    is fixed: 1 thread and 2 threads give the same bits, and so do repeated runs."""
    gen = torch.Generator().manual_seed(14)
    a, b = _operands(301, 260, 700, True, gen)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            out = torch.empty(301, 260)
            _C._blocked_gemm(a, b, True, False, out)
            results.append(out)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0], results[1]) and torch.equal(results[1], results[2])


def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read()
    except OSError:
        return False


def test_sequence_gemm_backend_follows_the_kernel_set():
    """The AVX2 and AVX-512 sets have a blocked GEMM; the large products use it except
    with the AVX-512 set on an Intel CPU, where MKL runs its own AVX-512 code."""
    info = rnnfast.build_info()
    assert HAS_KERNEL == (info["cpu_kernels"] in ("avx2", "avx512"))
    mkl_avx512 = info["cpu_kernels"] == "avx512" and _intel_cpu() and "blas" in info["gemm"]
    uses_kernel = info["sequence_gemm"].startswith("rnnfast blocked gemm")
    assert uses_kernel == (HAS_KERNEL and not mkl_avx512)


# ------------------------------------------------------------- at the layer level

def _errors(tensors, reference):
    return [(t.double() - r).abs().max().item() for t, r in zip(tensors, reference)]


def _run(module, x, dtype):
    module = module.to(dtype)
    xx = x.to(dtype).requires_grad_()
    out, _ = module(xx)
    gout = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
    grads = torch.autograd.grad(out, [xx, *module.parameters()], gout)
    return [out.detach(), *grads]


@pytest.mark.parametrize("layer", ["LSTM", "LSTM-proj", "GRU", "RNN"])
def test_layer_gradients_at_blocked_gemm_sizes(layer):
    """32 steps x batch 128 x 256 units: every whole-sequence backward product (dW_ih,
    dW_hh, dX, and dW_hr with a projection) is large enough for sequence_gemm's blocked
    path. rnnfast float32 against torch.nn float64 with the same weights: its error is
    within a small factor of torch.nn float32's own error against the same reference."""
    cls, kw, hidden = {"LSTM": ("LSTM", {}, 256), "LSTM-proj": ("LSTM", {"proj_size": 256}, 320),
                       "GRU": ("GRU", {}, 256), "RNN": ("RNN", {}, 256)}[layer]
    ref = getattr(nn, cls)(256, hidden, **kw)
    fast = getattr(rnnfast, cls)(256, hidden, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(32, 128, 256)
    truth = [t.double() for t in _run(ref, x, torch.float64)]
    torch_err = _errors(_run(ref, x, torch.float32), truth)
    fast_err = _errors(_run(fast, x, torch.float32), truth)
    names = ["output", "input", *(n for n, _ in ref.named_parameters())]
    for name, f, t, r in zip(names, fast_err, torch_err, truth):
        # floor: a few float32 roundings of the tensor's largest entry
        assert f <= 4 * t + 4 * U32 * r.abs().max().item(), f"{name}: {f:.3g} vs torch.nn's {t:.3g}"

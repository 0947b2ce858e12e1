"""The backward pass's whole-sequence products on the CPU: rnnfast's blocked GEMM
(csrc/cpu/panel_gemm.h, through the rnnfast._C._blocked_gemm test entry) against
torch.mm (MKL) at the shapes the benchmark grid (docs/performance.md) gives them, interleaved in one process,
float32, 2 threads. Correctness is checked first (against a float64 product).

    python bench/gemm_cpu.py [--rounds 2]

Shapes are (trans_a, M, N, K) for C[M, N] = op(A) B: dW = dG^T X is trans_a with
M = G*H, K = T*B; dX = dG W_ih has M = T*B, K = G*H.
"""
from __future__ import annotations

import argparse
import time

import torch

import rnnfast
from rnnfast import _C

SHAPES = [  # (name, trans_a, M, N, K)
    ("GRU XL dW", True, 3072, 1024, 6400), ("GRU XL dX", False, 6400, 1024, 3072),
    ("RNN XL dW", True, 1024, 1024, 6400), ("RNN XL dX", False, 6400, 1024, 1024),
    ("LSTM L dW", True, 2048, 512, 6400), ("LSTM L dX", False, 6400, 512, 2048),
    ("LSTM M dW", True, 1024, 256, 6400), ("LSTM M dX", False, 6400, 256, 1024),
]


def _best(fn, runs: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per shape")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backend = rnnfast.build_info()["sequence_gemm"]
    if not backend.startswith("rnnfast blocked gemm"):
        raise SystemExit(f"this CPU's kernel set has no blocked GEMM (sequence_gemm: {backend})")
    print(f"sequence_gemm: {backend}; torch threads: {torch.get_num_threads()}")
    for name, trans_a, M, N, K in SHAPES:
        a = torch.randn(K, M) if trans_a else torch.randn(M, K)
        b = torch.randn(K, N)
        op_a = a.t() if trans_a else a
        out = torch.empty(M, N)
        _C._blocked_gemm(a, b, trans_a, False, out)
        ref = op_a.double() @ b.double()
        bound = (K + 2) * 2.0 ** -24 * (op_a.double().abs() @ b.double().abs())
        assert ((out.double() - ref).abs() <= bound).all(), f"{name}: wrong result"
        flops = 2.0 * M * N * K
        for r in range(args.rounds):
            t_mkl = _best(lambda: torch.mm(op_a, b, out=out))
            t_own = _best(lambda: _C._blocked_gemm(a, b, trans_a, False, out))
            print(f"{name:10s} {'A^T' if trans_a else 'A  '} {M:5d}x{N:5d}x{K:5d} round {r + 1}: "
                  f"torch.mm {flops / t_mkl * 1e-9:6.1f} GF/s, rnnfast {flops / t_own * 1e-9:6.1f} GF/s, "
                  f"ratio {t_mkl / t_own:.2f}", flush=True)


if __name__ == "__main__":
    main()

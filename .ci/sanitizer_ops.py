"""Exercise every rnnfast CPU operator under AddressSanitizer/UBSan from Python.

Run by .ci/sanitizers.sh as
    LD_PRELOAD="libasan.so libubsan.so" python .ci/sanitizer_ops.py build/asan/librnnfast.so \
        [build/asan/librnnfast_simt_emu.so]
It loads the sanitized librnnfast.so into a plain torch process (the rnnfast package is not
imported: it would register the same operators from rnnfast._C) and calls
lstm/gru/rnn_forward and _backward directly over a seeded grid of shapes: sizes 1 and
primes, empty batch, padded and packed (unsorted lengths, batch sizes shrinking to 1),
both directions, projection, float32/float64, with and without bias, optional upstream
gradients absent, no input gradient, non-contiguous arguments, and sizes large enough to
split the step loop over 2 threads. Forward results (and padded backward results) are
compared with torch.nn so the sanitized build is also checked for correctness. The option
operators (layer norm, zoneout, recurrent dropout) run over their own grid against
rnnfast/reference.py (loaded by file path), forward and backward, on the CPU and, given the
emulator library, as the CUDA operators in the SIMT emulator. Any sanitizer report aborts the
process with a non-zero status.
"""
from __future__ import annotations

import importlib.util
import itertools
import pathlib
import sys

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

torch.ops.load_library(sys.argv[1])
ops = torch.ops.rnnfast
torch.manual_seed(0)
# Relative to the largest reference value: float32 sums over ~100 terms and 6 steps lose
# ~1e-5 of the largest magnitude; float64 ~1e-13.
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
G = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
checked = 0


def close(a, b, dtype):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, atol=TOL[dtype] * scale, rtol=TOL[dtype] * 10)


def torch_ref(kind, I, H, P, dtype, bias, params):
    cls = {"lstm": nn.LSTM, "gru": nn.GRU}.get(kind, nn.RNN)
    kw = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    if kind == "lstm" and P != H:
        kw["proj_size"] = P
    m = cls(I, H, bias=bias, dtype=dtype, **kw)
    with torch.no_grad():
        for name, p in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                           params[:4]):
            if p is not None:
                getattr(m, name).copy_(p)
        if kind == "lstm" and P != H:
            m.weight_hr_l0.copy_(params[4])
    return m


def packed_batch_sizes(T, B):
    """batch_sizes of a PackedSequence of B random lengths in [1, T], the longest T."""
    lengths = sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True)
    lengths[0] = T
    return torch.tensor([sum(1 for L in lengths if L > s) for s in range(T)])


def forward(kind, x, hx, cx, params, batch_sizes, reverse, need_ws):
    w_ih, w_hh, b_ih, b_hh, w_hr = params
    if kind == "lstm":
        return ops.lstm_forward(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                                need_ws)
    if kind == "gru":
        return ops.gru_forward(x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_ws)
    return ops.rnn_forward(x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                           kind == "rnn_relu")


def backward(kind, fwd, dy, dhy, dcy, x, hx, cx, params, batch_sizes, reverse, bias, need_dx):
    w_ih, w_hh, _, _, w_hr = params
    if kind == "lstm":
        return ops.lstm_backward(dy, dhy, dcy, x, hx, cx, w_ih, w_hh, w_hr, fwd[0], fwd[3],
                                 fwd[4], batch_sizes, reverse, bias, need_dx)
    if kind == "gru":
        return ops.gru_backward(dy, dhy, x, hx, w_ih, w_hh, fwd[0], fwd[2], batch_sizes,
                                reverse, bias, need_dx)
    return ops.rnn_backward(dy, dhy, x, hx, w_ih, w_hh, fwd[0], batch_sizes, reverse,
                            kind == "rnn_relu", bias, need_dx)


def case(kind, T, B, I, H, proj, packed, reverse, dtype, bias, noncontig, optional_grads):
    global checked
    P = max(1, H // 2) if (proj and kind == "lstm" and H > 1) else H
    g = G[kind]

    def t(*shape):
        v = torch.randn(*shape, dtype=dtype) * 0.5
        if noncontig and v.dim() == 2:
            v = v.t().contiguous().t()  # same values, transposed strides
        return v

    def w(*shape):  # torch.nn's initialisation scale
        return t(*shape) * 2 / H ** 0.5

    params = (w(g * H, I), w(g * H, P), w(g * H) if bias else None, w(g * H) if bias else None,
              w(P, H) if P != H else None)
    if packed:
        bs = packed_batch_sizes(T, B)
        x = t(int(bs.sum()), I)
    else:
        bs = None
        x = torch.randn(B, T, I, dtype=dtype).transpose(0, 1) if noncontig else t(T, B, I)
    hx, cx = t(B, P), t(B, H)
    fwd = forward(kind, x, hx, cx, params, bs, reverse, True)
    out = fwd[0]
    assert torch.isfinite(out).all()
    if not reverse:
        m = torch_ref(kind, I, H, P, dtype, bias, params)
        state = (hx[None], cx[None]) if kind == "lstm" else hx[None]
        inp = PackedSequence(x, bs) if packed else x
        with torch.no_grad():
            ref_out, _ = m(inp, state)
        ref_out = ref_out.data if packed else ref_out
        close(out, ref_out, dtype)
        checked += 1
    dy = None if optional_grads else torch.randn_like(out)
    dhy = torch.randn(B, P, dtype=dtype)
    dcy = None if optional_grads else torch.randn(B, H, dtype=dtype)
    if optional_grads and kind != "lstm":
        dy, dhy = torch.randn_like(out), None
    need_dx = not optional_grads
    grads = backward(kind, fwd, dy, dhy, dcy, x, hx, cx, params, bs, reverse, bias, need_dx)
    assert all(torch.isfinite(gr).all() for gr in grads)
    if not reverse and not packed and B > 0 and not optional_grads:
        leaves = [x.detach().clone().requires_grad_(True), hx.clone().requires_grad_(True)]
        if kind == "lstm":
            leaves.append(cx.clone().requires_grad_(True))
        m = torch_ref(kind, I, H, P, dtype, bias, params)
        state = (leaves[1][None], leaves[2][None]) if kind == "lstm" else leaves[1][None]
        ref_out, ref_state = m(leaves[0], state)
        finals = list(ref_state) if kind == "lstm" else [ref_state]
        loss = (ref_out * dy).sum() + (finals[0][0] * dhy).sum()
        if kind == "lstm":
            loss = loss + (finals[1][0] * dcy).sum()
        ref_grads = torch.autograd.grad(loss, leaves + [m.weight_ih_l0, m.weight_hh_l0])
        got = [grads[0], grads[1]] + ([grads[2]] if kind == "lstm" else [])
        got += list(grads[3:5] if kind == "lstm" else grads[2:4])
        for a, b in zip(got, ref_grads):
            close(a, b, dtype)
        checked += 1


def load_reference():
    path = pathlib.Path(__file__).resolve().parents[1] / "rnnfast" / "reference.py"
    spec = importlib.util.spec_from_file_location("rnnfast_reference_standalone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def option_case(ns, ref, kind, T, B, I, H, proj, ln, zone, rec, packed, reverse, dtype):
    """One option operator forward and backward against the reference and its autograd."""
    global checked
    lstm = kind == "lstm"
    P, g = (proj or H), (4 if lstm else 3)

    def t(*shape, scale=0.5):
        return torch.randn(*shape, dtype=dtype) * scale

    if packed:
        bs = packed_batch_sizes(T, B)
        x = t(int(bs.sum()), I)
    else:
        bs, x = None, t(T, B, I)
    hx, cx = t(B, P), t(B, H)
    w_ih, w_hh = t(g * H, I, scale=0.3), t(g * H, P, scale=0.3)
    b_ih, b_hh = t(g * H, scale=0.1), t(g * H, scale=0.1)
    w_hr = t(P, H, scale=0.3) if proj else None
    lnp = None
    if ln:
        lnp = [t(g * H, scale=0.2) + 1, t(g * H, scale=0.2) + 1]
        if lstm:
            lnp += [t(H, scale=0.2) + 1, t(H, scale=0.1)]
    masks = ref.draw_masks(g, H, P, T, B, recurrent_dropout=0.3 if rec else 0.0,
                           zoneout=0.3 if zone == "train" else 0.0, cell_state=lstm)
    zoneout = 0.3 if zone == "eval" else 0.0
    recm = masks.recurrent.to(dtype) if masks.recurrent is not None else None
    lnargs = lnp or ([None] * (4 if lstm else 2))
    if lstm:
        fwd = ns.lstm_options_forward(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *lnargs, recm,
                                      masks.zoneout_h, masks.zoneout_c, zoneout, bs, reverse,
                                      True)
        outs = fwd[:3]
    else:
        fwd = ns.gru_options_forward(x, hx, w_ih, w_hh, b_ih, b_hh, *lnargs, recm,
                                     masks.zoneout_h, zoneout, bs, reverse, True)
        outs = fwd[:2]
    leaves = [v.clone().requires_grad_(True) for v in (x, hx, cx, w_ih, w_hh)]
    ln_leaves = [v.clone().requires_grad_(True) for v in (lnp or [])]
    if lstm:
        want = ref.lstm_layer(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], b_ih, b_hh,
                              w_hr, bs, reverse, layer_norm=ln_leaves or None, masks=masks,
                              zoneout=zoneout)
    else:
        want = ref.gru_layer(leaves[0], leaves[1], leaves[3], leaves[4], b_ih, b_hh, bs,
                             reverse, layer_norm=ln_leaves or None, masks=masks,
                             zoneout=zoneout)
    for a, b in zip(outs, want):
        close(a, b.detach(), dtype)
    seeds = [torch.randn_like(o) for o in outs]
    if lstm:
        grads = ns.lstm_options_backward(seeds[0], seeds[1], seeds[2], x, hx, cx, w_ih, w_hh,
                                         w_hr, *lnargs, recm, masks.zoneout_h,
                                         masks.zoneout_c, zoneout, fwd[0], fwd[3], fwd[4], bs,
                                         reverse, True, True)
        got = [grads[0], grads[1], grads[2], grads[3], grads[4]] + (list(grads[7:11]) if ln else [])
        wrt = leaves + ln_leaves
    else:
        grads = ns.gru_options_backward(seeds[0], seeds[1], x, hx, w_ih, w_hh, *lnargs, recm,
                                        masks.zoneout_h, zoneout, fwd[0], fwd[2], bs, reverse,
                                        True, True)
        got = [grads[0], grads[1], grads[2], grads[3]] + (list(grads[6:8]) if ln else [])
        wrt = [leaves[0], leaves[1], leaves[3], leaves[4]] + ln_leaves
    ref_grads = torch.autograd.grad(list(want), wrt, seeds)
    for a, b in zip(got, ref_grads):
        close(a, b, dtype)
    checked += 1


def option_grid(ns, label, full):
    ref = load_reference()
    n = 0
    combos = itertools.product(["lstm", "gru"], [False, True], [None, "train", "eval"],
                               [False, True], [False, True])
    for kind, ln, zone, rec, packed in combos:
        if not (ln or zone or rec):
            continue
        for dtype in ((torch.float32, torch.float64) if full else (torch.float64,)):
            proj = 3 if kind == "lstm" and packed else 0
            option_case(ns, ref, kind, 5, 3, 4, 6, proj, ln, zone, rec, packed, packed, dtype)
            n += 1
    if full:
        # Two threads split by batch rows (16 rows) and by columns of W_hh (batch 3).
        for kind, (B, H) in itertools.product(["lstm", "gru"], [(16, 40), (3, 96)]):
            option_case(ns, ref, kind, 6, B, 20, H, 0, True, "train", True, False, True,
                        torch.float32)
            n += 1
    print(f"sanitizer_ops: {n} option operator cases ({label}) forward+backward against the "
          "reference: OK")


def main():
    torch.set_num_threads(2)
    n = 0
    small = itertools.product(["lstm", "gru", "rnn_tanh", "rnn_relu"],
                              [(1, 1, 1, 1), (5, 3, 7, 11), (4, 0, 3, 5), (7, 5, 2, 13)],
                              [False, True], [False, True], [False, True])
    for kind, (T, B, I, H), packed, reverse, flag in small:
        if packed and B == 0:
            continue
        for dtype in (torch.float32, torch.float64):
            case(kind, T, B, I, H, proj=flag, packed=packed, reverse=reverse, dtype=dtype,
                 bias=not flag, noncontig=flag, optional_grads=flag and B > 0)
            n += 1
    # Sizes that split the step loop over threads (>= 64 KFLOP per step), ragged splits.
    for kind in G:
        for packed, reverse in itertools.product([False, True], [False, True]):
            case(kind, 6, 9, 50, 97, proj=True, packed=packed, reverse=reverse,
                 dtype=torch.float32, bias=True, noncontig=False, optional_grads=False)
            n += 1
    print(f"sanitizer_ops: {n} operator cases forward+backward, {checked} compared with "
          "torch.nn: OK")
    option_grid(ops, "CPU", full=True)
    if len(sys.argv) > 2 and not sys.argv[2].startswith("--"):
        torch.ops.load_library(sys.argv[2])
        option_grid(torch.ops.rnnfast_emu, "CUDA in the SIMT emulator", full=False)


def canary():
    """Self-test of the set-up: poison b_hh's memory with ASan's interface, then run a GRU
    forward, whose (instrumented) pointwise pass reads b_hh. This must die with an ASan
    'use-after-poison' report and a non-zero status; .ci/sanitizers.sh checks that it does."""
    import ctypes

    poison = ctypes.CDLL(None).__asan_poison_memory_region
    poison.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    x, hx = torch.randn(3, 2, 4), torch.zeros(2, 5)
    b_hh = torch.randn(15)
    poison(b_hh.data_ptr(), b_hh.numel() * b_hh.element_size())
    ops.gru_forward(x, hx, torch.randn(15, 4), torch.randn(15, 5), torch.randn(15), b_hh, None,
                    False, False)
    print("canary: no report (the sanitizer is not active)")


if __name__ == "__main__":
    canary() if "--canary" in sys.argv else main()

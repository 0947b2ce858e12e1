"""The custom ops torch.ops.rnnfast.lstm_forward / lstm_backward, called directly:
gradcheck, torch.library.opcheck, and agreement with rnnfast.reference.lstm_layer."""

import itertools

import pytest
import torch

import rnnfast  # noqa: F401  (registers torch.ops.rnnfast.*)
from rnnfast import reference
from conftest import assert_close

FORWARD = torch.ops.rnnfast.lstm_forward.default
BACKWARD = torch.ops.rnnfast.lstm_backward.default

# Small sizes: gradcheck perturbs every input element.
T, B, I, H, P = 4, 3, 2, 3, 2
BATCH_SIZES = [3, 2, 2, 1]  # packed: N = 8 rows, B = 3 sequences

CASES = list(itertools.product([False, True], [True, False], [False, True], [False, True]))
CASE_IDS = [
    "-".join([("rev" if r else "fwd"), ("bias" if b else "nobias"), ("proj" if p else "noproj"),
              ("packed" if k else "padded")])
    for r, b, p, k in CASES
]


def make_args(reverse, bias, proj, packed, dtype=torch.float64, requires_grad=False):
    """Positional arguments of lstm_forward, minus need_workspace."""
    state = P if proj else H
    if packed:
        batch_sizes = torch.tensor(BATCH_SIZES, dtype=torch.int64)
        x = torch.randn(sum(BATCH_SIZES), I, dtype=dtype)
    else:
        batch_sizes = None
        x = torch.randn(T, B, I, dtype=dtype)

    def rnd(*shape):
        return torch.randn(*shape, dtype=dtype) * 0.5

    tensors = [x, rnd(B, state), rnd(B, H), rnd(4 * H, I), rnd(4 * H, state),
               rnd(4 * H) if bias else None, rnd(4 * H) if bias else None,
               rnd(state, H) if proj else None]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors + [batch_sizes, reverse]


def forward3(*args):
    """lstm_forward with a workspace, returning only (output, hy, cy)."""
    return FORWARD(*args, True)[:3]


@pytest.mark.parametrize("reverse,bias,proj,packed", CASES, ids=CASE_IDS)
def test_gradcheck(reverse, bias, proj, packed):
    args = make_args(reverse, bias, proj, packed, requires_grad=True)
    tensors, rest = args[:8], args[8:]
    present = [i for i, t in enumerate(tensors) if t is not None]

    def fn(*inputs):
        full = list(tensors)
        for i, t in zip(present, inputs):
            full[i] = t
        return forward3(*full, *rest)

    assert torch.autograd.gradcheck(fn, [tensors[i] for i in present])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse,bias,proj,packed", CASES, ids=CASE_IDS)
def test_forward_matches_reference(reverse, bias, proj, packed, dtype):
    args = make_args(reverse, bias, proj, packed, dtype)
    out, hy, cy, gates, cells = FORWARD(*args, True)
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, rev = args
    exp_out, exp_hy, exp_cy = reference.lstm_layer(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                   batch_sizes=batch_sizes, reverse=rev)
    assert_close(out, exp_out, msg="output")
    assert_close(hy, exp_hy, msg="hy")
    assert_close(cy, exp_cy, msg="cy")
    rows = sum(BATCH_SIZES) if packed else T * B
    assert gates.shape == (rows, 4 * H) and cells.shape == (rows, H)
    # without a workspace: same results, empty workspace tensors
    out2, hy2, cy2, gates2, cells2 = FORWARD(*args, False)
    assert gates2.numel() == 0 and cells2.numel() == 0
    assert_close(out2, out, msg="output without workspace")
    assert_close(hy2, hy, msg="hy without workspace")
    assert_close(cy2, cy, msg="cy without workspace")


def _backward_inputs(args, grads_present=(True, True, True)):
    out, hy, cy, gates, cells = FORWARD(*args, True)
    grads = [torch.randn_like(t) if keep else None
             for t, keep in zip((out, hy, cy), grads_present)]
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse = args
    return grads, (x, hx, cx, w_ih, w_hh, w_hr, out, gates, cells, batch_sizes, reverse,
                   b_ih is not None)


@pytest.mark.parametrize("grads_present", [(True, True, True), (True, False, False),
                                           (False, True, False), (False, False, True)],
                         ids=["all", "output", "hy", "cy"])
@pytest.mark.parametrize("reverse,bias,proj,packed", CASES, ids=CASE_IDS)
def test_backward_matches_reference_autograd(reverse, bias, proj, packed, grads_present):
    args = make_args(reverse, bias, proj, packed)
    grads, bw_args = _backward_inputs(args, grads_present)
    got = BACKWARD(*grads, *bw_args, True)

    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in args[:8]]
    x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = leaves
    outs = reference.lstm_layer(x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                batch_sizes=args[8], reverse=reverse)
    loss = sum((o * g).sum() for o, g in zip(outs, grads) if g is not None)
    loss.backward()
    names = ["grad_input", "grad_hx", "grad_cx", "grad_w_ih", "grad_w_hh"]
    for name, g, leaf in zip(names, got, (x, hx, cx, w_ih, w_hh)):
        assert_close(g, leaf.grad, msg=name)
    grad_bias, grad_w_hr = got[5], got[6]
    if bias:
        assert_close(grad_bias, b_ih.grad, msg="grad_bias (b_ih)")
        assert_close(grad_bias, b_hh.grad, msg="grad_bias (b_hh)")
    else:
        assert grad_bias.numel() == 0
    if proj:
        assert_close(grad_w_hr, w_hr.grad, msg="grad_w_hr")
    else:
        assert grad_w_hr.numel() == 0
    # need_grad_input=False: empty grad_input, the rest unchanged
    got2 = BACKWARD(*grads, *bw_args, False)
    assert got2[0].numel() == 0
    for name, a, b in zip(names[1:], got2[1:5], got[1:5]):
        assert_close(a, b, msg=name + " (need_grad_input=False)")


@pytest.mark.parametrize("reverse,bias,proj,packed", CASES[::3], ids=CASE_IDS[::3])
def test_opcheck_forward_with_workspace(reverse, bias, proj, packed):
    args = make_args(reverse, bias, proj, packed, requires_grad=True)
    torch.library.opcheck(FORWARD, (*args, True))


@pytest.mark.parametrize("reverse,bias,proj,packed", CASES[::3], ids=CASE_IDS[::3])
def test_opcheck_forward_without_workspace(reverse, bias, proj, packed):
    """Inference call: no workspace, so no autograd (inputs do not require grad)."""
    args = make_args(reverse, bias, proj, packed)
    torch.library.opcheck(FORWARD, (*args, False))


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize("reverse,bias,proj,packed", CASES[::3], ids=CASE_IDS[::3])
def test_opcheck_backward(reverse, bias, proj, packed, need_grad_input):
    args = make_args(reverse, bias, proj, packed)
    grads, bw_args = _backward_inputs(args, (True, not packed, True))
    torch.library.opcheck(BACKWARD, (*grads, *bw_args, need_grad_input))

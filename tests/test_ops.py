"""The custom ops torch.ops.rnnfast.{lstm,gru,rnn}_forward / _backward, called directly:
gradcheck, torch.library.opcheck, and agreement with rnnfast.reference's layer functions."""

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


# =============================================================================== GRU
#
# torch.ops.rnnfast.gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
#     need_workspace) -> (output, hy, workspace)
# torch.ops.rnnfast.gru_backward(grad_output, grad_hy, input, hx, w_ih, w_hh, output,
#     workspace, batch_sizes, reverse, has_bias, need_grad_input)
#     -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)

GRU_FORWARD = torch.ops.rnnfast.gru_forward.default
GRU_BACKWARD = torch.ops.rnnfast.gru_backward.default

SINGLE_CASES = list(itertools.product([False, True], [True, False], [False, True]))
SINGLE_IDS = ["-".join([("rev" if r else "fwd"), ("bias" if b else "nobias"),
                        ("packed" if k else "padded")]) for r, b, k in SINGLE_CASES]


def make_single_args(gates, reverse, bias, packed, dtype=torch.float64, requires_grad=False):
    """Positional arguments ``[x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse]`` of
    gru_forward (gates=3) / rnn_forward (gates=1), minus the trailing flag."""
    if packed:
        batch_sizes = torch.tensor(BATCH_SIZES, dtype=torch.int64)
        x = torch.randn(sum(BATCH_SIZES), I, dtype=dtype)
    else:
        batch_sizes = None
        x = torch.randn(T, B, I, dtype=dtype)

    def rnd(*shape):
        return torch.randn(*shape, dtype=dtype) * 0.5

    tensors = [x, rnd(B, H), rnd(gates * H, I), rnd(gates * H, H),
               rnd(gates * H) if bias else None, rnd(gates * H) if bias else None]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors + [batch_sizes, reverse]


def _gradcheck_op(op, args, n_tensors, flag, n_outputs):
    """gradcheck ``op(*args, flag)[:n_outputs]`` with respect to its non-None tensors."""
    tensors, rest = args[:n_tensors], args[n_tensors:]
    present = [i for i, t in enumerate(tensors) if t is not None]

    def fn(*inputs):
        full = list(tensors)
        for i, t in zip(present, inputs):
            full[i] = t
        return op(*full, *rest, flag)[:n_outputs]

    assert torch.autograd.gradcheck(fn, [tensors[i] for i in present])


@pytest.mark.parametrize("reverse,bias,packed", SINGLE_CASES, ids=SINGLE_IDS)
def test_gru_gradcheck(reverse, bias, packed):
    args = make_single_args(3, reverse, bias, packed, requires_grad=True)
    _gradcheck_op(GRU_FORWARD, args, 6, True, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse,bias,packed", SINGLE_CASES, ids=SINGLE_IDS)
def test_gru_forward_matches_reference(reverse, bias, packed, dtype):
    args = make_single_args(3, reverse, bias, packed, dtype)
    out, hy, workspace = GRU_FORWARD(*args, True)
    x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, rev = args
    exp_out, exp_hy = reference.gru_layer(x, hx, w_ih, w_hh, b_ih, b_hh,
                                          batch_sizes=batch_sizes, reverse=rev)
    assert out.shape == exp_out.shape and out.dtype == dtype
    assert_close(out, exp_out, msg="output")
    assert_close(hy, exp_hy, msg="hy")
    rows = sum(BATCH_SIZES) if packed else T * B
    assert workspace.shape == (rows, 4 * H)
    # without a workspace: same results, empty workspace
    out2, hy2, workspace2 = GRU_FORWARD(*args, False)
    assert workspace2.shape == (0,)
    assert_close(out2, out, msg="output without workspace")
    assert_close(hy2, hy, msg="hy without workspace")


def _gru_backward_inputs(args, grads_present=(True, True)):
    out, hy, workspace = GRU_FORWARD(*args, True)
    grads = [torch.randn_like(t) if keep else None for t, keep in zip((out, hy), grads_present)]
    x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse = args
    return grads, (x, hx, w_ih, w_hh, out, workspace, batch_sizes, reverse, b_ih is not None)


@pytest.mark.parametrize("grads_present", [(True, True), (True, False), (False, True)],
                         ids=["all", "output", "hy"])
@pytest.mark.parametrize("reverse,bias,packed", SINGLE_CASES, ids=SINGLE_IDS)
def test_gru_backward_matches_reference_autograd(reverse, bias, packed, grads_present):
    args = make_single_args(3, reverse, bias, packed)
    grads, bw_args = _gru_backward_inputs(args, grads_present)
    got = GRU_BACKWARD(*grads, *bw_args, True)

    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in args[:6]]
    x, hx, w_ih, w_hh, b_ih, b_hh = leaves
    outs = reference.gru_layer(x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes=args[6],
                               reverse=reverse)
    sum((o * g).sum() for o, g in zip(outs, grads) if g is not None).backward()
    names = ["grad_input", "grad_hx", "grad_w_ih", "grad_w_hh"]
    for name, g, leaf in zip(names, got, (x, hx, w_ih, w_hh)):
        assert_close(g, leaf.grad, msg=name)
    grad_b_ih, grad_b_hh = got[4], got[5]
    if bias:
        # b_hn sits inside r * (W_hn h + b_hn): the two bias gradients differ in the n block
        assert_close(grad_b_ih, b_ih.grad, msg="grad_b_ih")
        assert_close(grad_b_hh, b_hh.grad, msg="grad_b_hh")
    else:
        assert grad_b_ih.shape == (0,) and grad_b_hh.shape == (0,)
    # need_grad_input=False: empty grad_input, the rest unchanged
    got2 = GRU_BACKWARD(*grads, *bw_args, False)
    assert got2[0].shape == (0,)
    for name, a, b in zip(names[1:] + ["grad_b_ih", "grad_b_hh"], got2[1:], got[1:]):
        assert_close(a, b, msg=name + " (need_grad_input=False)")


@pytest.mark.parametrize("reverse,bias,packed", SINGLE_CASES[::3], ids=SINGLE_IDS[::3])
def test_gru_opcheck_forward_with_workspace(reverse, bias, packed):
    args = make_single_args(3, reverse, bias, packed, requires_grad=True)
    torch.library.opcheck(GRU_FORWARD, (*args, True))


@pytest.mark.parametrize("reverse,bias,packed", SINGLE_CASES[::3], ids=SINGLE_IDS[::3])
def test_gru_opcheck_forward_without_workspace(reverse, bias, packed):
    args = make_single_args(3, reverse, bias, packed)
    torch.library.opcheck(GRU_FORWARD, (*args, False))


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize("reverse,bias,packed", SINGLE_CASES[::3], ids=SINGLE_IDS[::3])
def test_gru_opcheck_backward(reverse, bias, packed, need_grad_input):
    args = make_single_args(3, reverse, bias, packed)
    grads, bw_args = _gru_backward_inputs(args, (True, not packed))
    torch.library.opcheck(GRU_BACKWARD, (*grads, *bw_args, need_grad_input))


# =============================================================================== RNN
#
# torch.ops.rnnfast.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
#     relu) -> (output, hy)
# torch.ops.rnnfast.rnn_backward(grad_output, grad_hy, input, hx, w_ih, w_hh, output,
#     batch_sizes, reverse, relu, has_bias, need_grad_input)
#     -> (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias)

RNN_FORWARD = torch.ops.rnnfast.rnn_forward.default
RNN_BACKWARD = torch.ops.rnnfast.rnn_backward.default

RNN_CASES = [(r, b, k, relu) for relu in (False, True) for r, b, k in SINGLE_CASES]
RNN_IDS = [i + ("-relu" if relu else "-tanh") for relu in (False, True) for i in SINGLE_IDS]


def _preactivations(args):
    """Every pre-activation ``x W_ih^T + b_ih + h W_hh^T + b_hh`` of a relu RNN layer."""
    x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse = args
    pres = []

    def step(x_t, state):
        pre = torch.nn.functional.linear(x_t, w_ih, b_ih) + \
            torch.nn.functional.linear(state[0], w_hh, b_hh)
        pres.append(pre.detach().flatten())
        return (torch.relu(pre),)

    with torch.no_grad():
        reference._scan(step, x, (hx,), batch_sizes, reverse)
    return torch.cat(pres)


def make_rnn_args(reverse, bias, packed, relu, dtype=torch.float64, requires_grad=False):
    """make_single_args for rnn_forward. For relu, redraw until no pre-activation lies
    within 1e-2 of relu's kink at 0: gradcheck's finite differences (eps 1e-6) are only
    valid where the function is differentiable, and 1e-2 is far beyond what a perturbation
    of 1e-6 can move a pre-activation."""
    for _ in range(100):
        args = make_single_args(1, reverse, bias, packed, dtype, requires_grad)
        if not relu or _preactivations(args).abs().min() > 1e-2:
            return args
    raise AssertionError("could not draw relu RNN inputs away from the kink")


@pytest.mark.parametrize("reverse,bias,packed,relu", RNN_CASES, ids=RNN_IDS)
def test_rnn_gradcheck(reverse, bias, packed, relu):
    args = make_rnn_args(reverse, bias, packed, relu, requires_grad=True)
    if relu:  # the draw has active and inactive units: both branches are exercised
        pres = _preactivations(args)
        assert (pres > 0).any() and (pres < 0).any()
    _gradcheck_op(RNN_FORWARD, args, 6, relu, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse,bias,packed,relu", RNN_CASES, ids=RNN_IDS)
def test_rnn_forward_matches_reference(reverse, bias, packed, relu, dtype):
    args = make_rnn_args(reverse, bias, packed, relu, dtype)
    out, hy = RNN_FORWARD(*args, relu)
    x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, rev = args
    exp_out, exp_hy = reference.rnn_layer(x, hx, w_ih, w_hh, b_ih, b_hh,
                                          batch_sizes=batch_sizes, reverse=rev,
                                          nonlinearity="relu" if relu else "tanh")
    assert out.shape == exp_out.shape and out.dtype == dtype
    assert_close(out, exp_out, msg="output")
    assert_close(hy, exp_hy, msg="hy")


def _rnn_backward_inputs(args, relu, grads_present=(True, True)):
    out, hy = RNN_FORWARD(*args, relu)
    grads = [torch.randn_like(t) if keep else None for t, keep in zip((out, hy), grads_present)]
    x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse = args
    return grads, (x, hx, w_ih, w_hh, out, batch_sizes, reverse, relu, b_ih is not None)


@pytest.mark.parametrize("grads_present", [(True, True), (True, False), (False, True)],
                         ids=["all", "output", "hy"])
@pytest.mark.parametrize("reverse,bias,packed,relu", RNN_CASES, ids=RNN_IDS)
def test_rnn_backward_matches_reference_autograd(reverse, bias, packed, relu, grads_present):
    args = make_rnn_args(reverse, bias, packed, relu)
    grads, bw_args = _rnn_backward_inputs(args, relu, grads_present)
    got = RNN_BACKWARD(*grads, *bw_args, True)

    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in args[:6]]
    x, hx, w_ih, w_hh, b_ih, b_hh = leaves
    outs = reference.rnn_layer(x, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes=args[6],
                               reverse=reverse, nonlinearity="relu" if relu else "tanh")
    sum((o * g).sum() for o, g in zip(outs, grads) if g is not None).backward()
    names = ["grad_input", "grad_hx", "grad_w_ih", "grad_w_hh"]
    for name, g, leaf in zip(names, got, (x, hx, w_ih, w_hh)):
        assert_close(g, leaf.grad, msg=name)
    grad_bias = got[4]
    if bias:
        assert_close(grad_bias, b_ih.grad, msg="grad_bias (b_ih)")
        assert_close(grad_bias, b_hh.grad, msg="grad_bias (b_hh)")
    else:
        assert grad_bias.shape == (0,)
    got2 = RNN_BACKWARD(*grads, *bw_args, False)
    assert got2[0].shape == (0,)
    for name, a, b in zip(names[1:] + ["grad_bias"], got2[1:], got[1:]):
        assert_close(a, b, msg=name + " (need_grad_input=False)")


@pytest.mark.parametrize("reverse,bias,packed,relu", RNN_CASES[::3], ids=RNN_IDS[::3])
def test_rnn_opcheck_forward(reverse, bias, packed, relu):
    args = make_rnn_args(reverse, bias, packed, relu, requires_grad=True)
    torch.library.opcheck(RNN_FORWARD, (*args, relu))


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize("reverse,bias,packed,relu", RNN_CASES[::3], ids=RNN_IDS[::3])
def test_rnn_opcheck_backward(reverse, bias, packed, relu, need_grad_input):
    args = make_rnn_args(reverse, bias, packed, relu)
    grads, bw_args = _rnn_backward_inputs(args, relu, (True, not packed))
    torch.library.opcheck(RNN_BACKWARD, (*grads, *bw_args, need_grad_input))

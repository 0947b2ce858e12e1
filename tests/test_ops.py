"""The custom ops torch.ops.rnnfast.{lstm,gru,rnn}_forward / _backward, called directly, for
every kind in tests/kinds.py: gradcheck in float64, torch.library.opcheck, fake (meta)
kernels against the real outputs, and agreement with rnnfast.reference's layer functions.

Signatures (see rnnfast/ops.py):

* lstm_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
  need_workspace) -> (output, hy, cy, gates, cells)
* gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace)
  -> (output, hy, workspace)
* rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu)
  -> (output, hy)

and each <op>_backward returns the gradients listed in kinds.BACKWARD_OUTPUTS.
"""

import dataclasses

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import assert_close
from kinds import (
    BACKWARD_OUTPUTS,
    BATCH_SIZES,
    FORWARD_OUTPUTS,
    KINDS,
    OP_CASES,
    OP_CASE_IDS,
    RELU_KINK_MARGIN,
    B,
    H,
    T,
    half_fraction_params,
    kind_params,
    make_sample,
    preactivations,
    sample_inputs,
)

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

OP_CASE_PARAMS = [pytest.param(*c, id=i) for c, i in zip(OP_CASES, OP_CASE_IDS)]
KIND_PARAMS = kind_params()
#: opcheck runs the op through several tracing passes (~0.3 s a call): half the cases.
OPCHECK_PARAMS = half_fraction_params()
OPCHECK_WORKSPACE_PARAMS = [p for p in OPCHECK_PARAMS if p.values[0].has_workspace]


def _grads_present_params(kinds=KINDS):
    """(kind, which upstream gradients are given): all of them, or each output alone."""
    params = []
    for kind in kinds.values():
        outs = FORWARD_OUTPUTS[kind.op]
        params.append(pytest.param(kind, (True,) * len(outs), id=f"{kind.name}-all"))
        for i, name in enumerate(outs):
            present = tuple(j == i for j in range(len(outs)))
            params.append(pytest.param(kind, present, id=f"{kind.name}-{name}"))
    return params


def _differentiable(sample, outputs):
    return outputs[:len(FORWARD_OUTPUTS[sample.kind.op])]


def _backward_inputs(sample, grads_present=None, need_grad_input=True):
    """Upstream gradients (random, or None where not ``grads_present``) and the full
    argument tuple of <op>_backward."""
    outputs = sample.forward(True)
    diff = _differentiable(sample, outputs)
    if grads_present is None:
        grads_present = (True,) * len(diff)
    grads = tuple(torch.randn_like(t) if keep else None for t, keep in zip(diff, grads_present))
    return grads, sample.backward_args(grads, outputs, need_grad_input)


# --------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("reverse,bias,packed", OP_CASE_PARAMS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_gradcheck(kind, reverse, bias, packed):
    """Finite differences in float64 against the registered autograd formula (which
    calls <op>_backward), with respect to every tensor input present."""
    sample = make_sample(kind, reverse, bias, packed, requires_grad=True)
    names = [n for n, t in sample.tensors.items() if t is not None]

    def fn(*inputs):
        perturbed = dataclasses.replace(sample, tensors={**sample.tensors,
                                                         **dict(zip(names, inputs))})
        return _differentiable(perturbed, perturbed.forward(True))

    assert torch.autograd.gradcheck(fn, [sample.tensors[n] for n in names])


@pytest.mark.parametrize("reverse,bias,packed", OP_CASE_PARAMS)
@pytest.mark.parametrize("kind", kind_params({"rnn_relu": KINDS["rnn_relu"]}))
def test_relu_samples_avoid_the_kink(kind, reverse, bias, packed):
    """gradcheck of the relu RNN is valid only away from relu's kink, and tests both
    branches only if some units are active and some not: the samples guarantee both."""
    pres = preactivations(make_sample(kind, reverse, bias, packed))
    assert pres.abs().min() > RELU_KINK_MARGIN
    assert (pres > 0).any() and (pres < 0).any()


# ------------------------------------------------------------------ against reference

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reverse,bias,packed", OP_CASE_PARAMS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_forward_matches_reference(kind, reverse, bias, packed, dtype):
    sample = make_sample(kind, reverse, bias, packed, dtype)
    outputs = sample.forward(True)
    names = FORWARD_OUTPUTS[kind.op]
    expected = sample.reference()
    assert len(expected) == len(names)
    for name, got, exp in zip(names, outputs, expected):
        assert got.shape == exp.shape and got.dtype == dtype, name
        assert_close(got, exp, msg=name)
    rows = sum(BATCH_SIZES) if packed else T * B
    workspace = outputs[len(names):]
    if kind.op == "lstm":
        gates, cells = workspace
        assert gates.shape == (rows, 4 * H) and cells.shape == (rows, H)
    elif kind.op == "gru":
        assert workspace[0].shape == (rows, 4 * H)
    else:
        assert workspace == ()
    if not kind.has_workspace:
        return
    # without a workspace: same results, empty workspace tensors
    outputs2 = sample.forward(False)
    for t in outputs2[len(names):]:
        assert t.shape == (0,)
    for name, a, b in zip(names, outputs2, outputs):
        assert_close(a, b, msg=name + " without workspace")


@pytest.mark.parametrize("reverse,bias,packed", OP_CASE_PARAMS)
@pytest.mark.parametrize("kind,grads_present", _grads_present_params())
def test_backward_matches_reference_autograd(kind, grads_present, reverse, bias, packed):
    """<op>_backward against autograd through rnnfast.reference, every gradient, with
    all upstream gradients or only one of them (the others None)."""
    sample = make_sample(kind, reverse, bias, packed)
    grads, bw_args = _backward_inputs(sample, grads_present)
    got = kind.backward_op(*bw_args)

    leaves = {n: None if t is None else t.clone().requires_grad_(True)
              for n, t in sample.tensors.items()}
    outs = sample.reference(leaves)
    sum((o * g).sum() for o, g in zip(outs, grads) if g is not None).backward()
    spec = BACKWARD_OUTPUTS[kind.op]
    assert len(got) == len(spec)
    for (name, inputs), g in zip(spec, got):
        if leaves[inputs[0]] is None:  # no bias / no projection
            assert g.shape == (0,), name
            continue
        for inp in inputs:
            assert_close(g, leaves[inp].grad, msg=f"{name} ({inp})")
    # need_grad_input=False: empty grad_input, the rest unchanged
    got2 = kind.backward_op(*bw_args[:-1], False)
    assert got2[0].shape == (0,)
    for (name, _), a, b in zip(spec[1:], got2[1:], got[1:]):
        assert_close(a, b, msg=name + " (need_grad_input=False)")


# --------------------------------------------------------------------------- opcheck

@pytest.mark.parametrize("kind,reverse,bias,packed", OPCHECK_PARAMS)
def test_opcheck_forward(kind, reverse, bias, packed):
    """Training call: inputs require grad (with a workspace, where the op has one)."""
    sample = make_sample(kind, reverse, bias, packed, requires_grad=True)
    torch.library.opcheck(kind.forward_op, sample.forward_args(True))


@pytest.mark.parametrize("kind,reverse,bias,packed", OPCHECK_WORKSPACE_PARAMS)
def test_opcheck_forward_without_workspace(kind, reverse, bias, packed):
    """Inference call: no workspace, so no autograd (inputs do not require grad)."""
    sample = make_sample(kind, reverse, bias, packed)
    torch.library.opcheck(kind.forward_op, sample.forward_args(False))


@pytest.mark.parametrize("need_grad_input", [True, False])
@pytest.mark.parametrize("kind,reverse,bias,packed", OPCHECK_PARAMS)
def test_opcheck_backward(kind, reverse, bias, packed, need_grad_input):
    """Packed samples leave grad_hy out (None), as a loss on the output alone does."""
    sample = make_sample(kind, reverse, bias, packed)
    present = [True] * len(FORWARD_OUTPUTS[kind.op])
    present[1] = not packed
    _, bw_args = _backward_inputs(sample, tuple(present), need_grad_input)
    torch.library.opcheck(kind.backward_op, bw_args)


# ------------------------------------------------------------------ fake (meta) kernels

def _to_fake(mode, value):
    if isinstance(value, torch.Tensor):
        return mode.from_tensor(value)
    return value


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_fake_kernels_match_real_outputs(kind):
    """Under FakeTensorMode (what torch.compile traces with) every output of forward and
    backward has the real one's shape, dtype and device, for every sample."""
    for sample in sample_inputs(kind):
        for need_workspace in ([True, False] if kind.has_workspace else [True]):
            args = sample.forward_args(need_workspace)
            real = kind.forward_op(*args)
            with FakeTensorMode(allow_non_fake_inputs=False) as mode:
                fake = kind.forward_op(*[_to_fake(mode, a) for a in args])
            assert [(t.shape, t.dtype, t.device) for t in fake] == \
                [(t.shape, t.dtype, t.device) for t in real], (sample.id, need_workspace)
        for need_grad_input in (True, False):
            _, bw_args = _backward_inputs(sample, need_grad_input=need_grad_input)
            real = kind.backward_op(*bw_args)
            with FakeTensorMode() as mode:
                fake = kind.backward_op(*[_to_fake(mode, a) for a in bw_args])
            assert [(t.shape, t.dtype, t.device) for t in fake] == \
                [(t.shape, t.dtype, t.device) for t in real], (sample.id, need_grad_input)

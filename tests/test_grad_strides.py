"""The backward operators read the output's gradient in place, whatever its strides
(the expanded gradient of out.sum() has strides of 0; a slice of a wider tensor has a
row stride; batch_first gives a transposed one): gradients must equal those from the
same gradient made contiguous, and torch.nn's."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from conftest import TOLERANCES, torch_native_cpu_rnn

LAYERS = {
    "LSTM": ("LSTM", {}), "LSTM-proj": ("LSTM", {"proj_size": 3}),
    "GRU": ("GRU", {}), "RNN-tanh": ("RNN", {}), "RNN-relu": ("RNN", {"nonlinearity": "relu"}),
}


def _grad_like(out: torch.Tensor, how: str) -> torch.Tensor:
    """A gradient for `out` with the given memory layout (same values for every layout
    of one kind, so that the contiguous copy is the reference)."""
    if how == "expanded":  # what out.sum().backward() hands the backward
        return torch.ones((), dtype=out.dtype).expand(out.shape)
    if how == "row-expanded":  # the same row for every (t, b): strides (0, 0, 1) / (0, 1)
        return torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype).expand(out.shape)
    if how == "column-strided":  # every other column of a wider tensor
        wide = torch.randn(*out.shape[:-1], 2 * out.shape[-1], dtype=out.dtype)
        return wide[..., ::2]
    if how == "row-strided":  # a slice of a wider tensor
        wide = torch.randn(*out.shape[:-1], out.shape[-1] + 5, dtype=out.dtype)
        return wide[..., : out.shape[-1]]
    raise ValueError(how)


def _grads(module, x, gout, packed):
    xx = x.clone().requires_grad_()
    inp = pack_padded_sequence(xx, [6, 5, 5, 2], enforce_sorted=True) if packed else xx
    out, _ = module(inp)
    data = out.data if packed else out
    g = gout if not callable(gout) else gout(data)
    return torch.autograd.grad(data, [xx, *module.parameters()], g)


@pytest.mark.parametrize("how", ["expanded", "row-expanded", "column-strided", "row-strided"])
@pytest.mark.parametrize("form", ["tmajor", "bfirst", "packed"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_strided_output_gradient(layer, form, how):
    name, kw = LAYERS[layer]
    batch_first = form == "bfirst"
    ref = getattr(nn, name)(7, 6, batch_first=batch_first, dtype=torch.float64, **kw)
    fast = getattr(rnnfast, name)(7, 6, batch_first=batch_first, dtype=torch.float64, **kw)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(*((4, 6) if batch_first else (6, 4)), 7, dtype=torch.float64)
    packed = form == "packed"
    gouts = {}

    def make(data):
        if "g" not in gouts:
            gouts["g"] = _grad_like(data, how)
        return gouts["g"]

    got = _grads(fast, x, make, packed)
    same_contiguous = _grads(fast, x, gouts["g"].contiguous(), packed)
    with torch_native_cpu_rnn():
        expected = _grads(ref, x, gouts["g"], packed)
    for a, b in zip(got, same_contiguous):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same sums, bit for bit
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float64])


def test_sum_backward_does_not_copy_the_output_gradient():
    """out.sum().backward() must not materialise the [T, B, H] gradient: the peak of the
    backward's allocations stays below one extra output-sized buffer (checked through
    torch's CPU allocator profile)."""
    m = rnnfast.RNN(256, 256)
    x = torch.randn(40, 64, 256, requires_grad=True)
    out, _ = m(x)
    with torch.profiler.profile(profile_memory=True, record_shapes=False) as prof:
        out.sum().backward()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.name == "aten::contiguous"
             or e.name == "aten::clone"]
    output_bytes = out.numel() * out.element_size()
    assert all(s < output_bytes for s in sizes), sizes

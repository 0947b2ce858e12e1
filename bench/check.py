"""Building a torch.nn / rnnfast pair with identical weights, and checking rnnfast against it.

Every cell is checked before it is timed: rnnfast's output, final states and (in ``train``
mode) every gradient must match torch.nn's within the tolerance of the dtype. In float16 and
bfloat16 torch.nn's own result is itself off by more than rnnfast's (its CPU bfloat16 sums the
bias gradients in bfloat16, for one), so there both are compared with a float64 run of torch.nn
on the same half-precision values, and rnnfast must be no further from it than torch.nn is (or
within the dtype's tolerance of it).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .grid import LayerSpec, Shape, rnnfast_class

__all__ = ["TOLERANCES", "make_pair", "check_correctness"]

#: Correctness tolerances per dtype: (atol, rtol). atol is scaled by max(1, max|reference|),
#: because gradients of ``out.sum()`` grow with T*B. float32 values are those of the brief.
TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-7, 1e-6),
    torch.float32: (1e-4, 1e-3),
    torch.float16: (5e-3, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}



def make_pair(
    spec: LayerSpec,
    shape: Shape,
    mode: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Tuple[nn.Module, nn.Module, torch.Tensor]:
    """Build ``(torch.nn layer, rnnfast layer, input)`` with identical weights.

    The rnnfast layer is constructed with the same arguments and receives the torch layer's
    ``state_dict``. The input is ``randn(T, B, I)`` (time-major); in ``train`` mode it requires
    grad, as the output of an embedding or a lower layer would. Raises LookupError when
    rnnfast has no such layer yet.
    """
    fast_cls = rnnfast_class(spec)
    if fast_cls is None:
        raise LookupError(f"rnnfast has no {spec.name} yet")
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(input_size=shape.I, hidden_size=shape.H, num_layers=1, bias=True,
                  batch_first=False, bidirectional=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = spec.torch_class()(**kwargs)
    fast = fast_cls(**kwargs)
    fast.load_state_dict(ref.state_dict())
    ref = ref.to(device=device, dtype=dtype)
    fast = fast.to(device=device, dtype=dtype)
    x = torch.randn(shape.T, shape.B, shape.I, generator=gen).to(device=device, dtype=dtype)
    if mode == "train":
        x.requires_grad_(True)
    return ref, fast, x


def _named_outputs(spec: LayerSpec, res: Any) -> List[Tuple[str, torch.Tensor]]:
    """``(output, h_n)`` / ``(output, (h_n, c_n))`` -> named list of tensors."""
    out, state = res
    if spec.has_cell_state:
        h, c = state
        return [("output", out), ("h_n", h), ("c_n", c)]
    return [("output", out), ("h_n", state)]


def _assert_close(name: str, actual: Optional[torch.Tensor], expected: torch.Tensor, dtype: torch.dtype) -> None:
    """assert_close with the tolerance of ``dtype``; atol scaled by max(1, max|expected|)."""
    if actual is None:
        raise AssertionError(f"{name}: rnnfast gave None where torch.nn gave a tensor")
    atol, rtol = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    exp = expected.detach()
    scale = max(1.0, float(exp.abs().max())) if exp.numel() else 1.0
    torch.testing.assert_close(
        actual.detach(), exp, atol=atol * scale, rtol=rtol,
        msg=lambda m: f"{name} (atol {atol:g}*{scale:.3g}, rtol {rtol:g}): {m}",
    )


def _results(spec: LayerSpec, mod: nn.Module, x: torch.Tensor, mode: str) -> List[Tuple[str, torch.Tensor]]:
    """Outputs and final states (``infer``, under no_grad), or those and every gradient of
    ``out.sum()`` (``train``), named. Leaves gradients behind."""
    if mode == "infer":
        with torch.no_grad():
            return _named_outputs(spec, mod(x))
    mod.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_(True)
    res = mod(xx)
    named = _named_outputs(spec, res)
    res[0].sum().backward()
    named.append(("grad input", xx.grad))
    named += [(f"grad {n}", p.grad) for n, p in mod.named_parameters()]
    return named


def _assert_no_worse(name: str, actual: Optional[torch.Tensor], torch_t: torch.Tensor,
                     exact: torch.Tensor, dtype: torch.dtype) -> None:
    """rnnfast's largest error against the float64 run no larger than torch.nn's, or within
    the dtype's tolerance (atol scaled by max(1, max|exact|))."""
    if actual is None:
        raise AssertionError(f"{name}: rnnfast gave None where torch.nn gave a tensor")
    atol, _ = TOLERANCES[dtype]
    scale = max(1.0, float(exact.abs().max())) if exact.numel() else 1.0
    err = float((actual.detach().double() - exact).abs().max()) if exact.numel() else 0.0
    torch_err = float((torch_t.detach().double() - exact).abs().max()) if exact.numel() else 0.0
    if err > max(torch_err, atol * scale):
        raise AssertionError(f"{name}: rnnfast's largest error against float64 is {err:.3g}, torch.nn's "
                             f"{torch_err:.3g} (allowed: the larger of that and {atol:g}*{scale:.3g})")


def check_correctness(spec: LayerSpec, ref: nn.Module, fast: nn.Module, x: torch.Tensor, mode: str) -> None:
    """Check rnnfast against torch.nn for the call that will be timed; raise AssertionError.

    ``infer``: output and final state(s) under ``torch.no_grad()``. ``train``: the same with
    grad enabled, then ``out.sum().backward()`` on both and every gradient (input and each
    named parameter) compared. float16/bfloat16: both against a float64 run of torch.nn on
    the same values (module docstring). Leaves gradients behind; :func:`make_runner` resets them.
    """
    dtype = x.dtype
    fast_names = {n for n, _ in fast.named_parameters()}
    missing = [n for n, _ in ref.named_parameters() if n not in fast_names]
    if missing:
        raise AssertionError(f"rnnfast layer has no parameter {missing[0]!r}")
    r = _results(spec, ref, x, mode)
    f = dict(_results(spec, fast, x, mode))
    if dtype in (torch.float16, torch.bfloat16):
        exact = _results(spec, copy.deepcopy(ref).double(), x.double(), mode)
        for (name, rt), (_, et) in zip(r, exact):
            _assert_no_worse(name, f.get(name), rt, et.detach(), dtype)
        return
    for name, rt in r:
        _assert_close(name, f.get(name), rt, dtype)

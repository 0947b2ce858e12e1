"""Shared helpers for the rnnfast tests: seeding, tolerances, input builders, and a
forward+backward harness that runs any torch.nn.LSTM/GRU/RNN-compatible module and
collects every output and gradient so that two modules can be compared entry by entry.

The table of cell kinds the parity tests are parametrised over is in tests/kinds.py (not
here: it imports rnnfast, which tests/test_reference.py must run without)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
from typing import Callable, Dict, List, Optional, Tuple, Union

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Input forms understood by :func:`make_input` / :func:`build_input`.
FORMS = ("batched", "unbatched", "packed_sorted", "packed_unsorted")

#: Tolerances by dtype. float32: what float rounding gives at test sizes (see docs/design.md);
#: float64: the two implementations sum in different orders, so agreement is ~1e-15
#: relative; 1e-10 leaves room for error growth through a few layers and time steps.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-10),
}


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state."""
    torch.manual_seed(0)
    yield


def load_reference():
    """Import rnnfast/reference.py by file path, without importing the rnnfast package
    (whose __init__ loads the compiled extension): the reference must stand alone."""
    spec = importlib.util.spec_from_file_location(
        "rnnfast_reference_standalone", ROOT / "rnnfast" / "reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def torch_native_cpu_rnn():
    """Run torch.nn.LSTM (and GRU/RNN) on ATen's native CPU path instead of oneDNN. Same
    maths; oneDNN builds a new primitive for every new shape (~1 s each on 2 cores), which
    would dominate the runtime of a grid of small cases."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def assert_close(actual, expected, dtype: Optional[torch.dtype] = None, msg: str = "") -> None:
    """torch.testing.assert_close with the tolerance of ``dtype`` (default: expected's).
    Also checks that dtype, device and shape agree."""
    if dtype is None:
        dtype = expected.dtype
    tol = TOLERANCES[dtype]

    def _msg(default: str) -> str:
        return f"{msg}: {default}" if msg else default

    torch.testing.assert_close(actual, expected, msg=_msg, **tol)


def make_lengths(batch: int, steps: int, sort: bool) -> List[int]:
    """Random sequence lengths in [1, steps], the longest being exactly ``steps``;
    non-increasing if ``sort``, otherwise shuffled."""
    lengths = torch.randint(1, steps + 1, (batch,))
    if batch > 0:
        lengths[torch.randint(0, batch, ())] = steps
    if sort:
        lengths = lengths.sort(descending=True).values
    return lengths.tolist()


def make_input(
    form: str, steps: int, batch: int, input_size: int, batch_first: bool, dtype: torch.dtype
) -> Tuple[torch.Tensor, Optional[List[int]]]:
    """A random padded input leaf tensor and, for packed forms, random lengths.

    Shapes: unbatched ``(T, I)``; otherwise ``(T, B, I)`` or ``(B, T, I)`` if batch_first
    (packed forms are built from this padded tensor by :func:`build_input`)."""
    assert form in FORMS, form
    if form == "unbatched":
        return torch.randn(steps, input_size, dtype=dtype), None
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = torch.randn(*shape, dtype=dtype)
    lengths = None
    if form.startswith("packed"):
        lengths = make_lengths(batch, steps, sort=form == "packed_sorted")
    return x, lengths


def build_input(x: torch.Tensor, form: str, batch_first: bool, lengths: Optional[List[int]]):
    """The module input for ``form``: ``x`` itself, or a PackedSequence made from it (the
    gradient then flows back to the padded ``x``)."""
    if form.startswith("packed"):
        return pack_padded_sequence(
            x, lengths, batch_first=batch_first, enforce_sorted=form == "packed_sorted"
        )
    return x


def make_hx(
    form: str, num_states: int, batch: int, state_size: int, hidden_size: int, dtype: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random ``(h0, c0)``: ``(L*D, B, P)`` and ``(L*D, B, H)``, without B if unbatched."""
    if form == "unbatched":
        return (torch.randn(num_states, state_size, dtype=dtype),
                torch.randn(num_states, hidden_size, dtype=dtype))
    return (torch.randn(num_states, batch, state_size, dtype=dtype),
            torch.randn(num_states, batch, hidden_size, dtype=dtype))


def make_h0(form: str, num_states: int, batch: int, hidden_size: int,
            dtype: torch.dtype) -> torch.Tensor:
    """Random single-tensor ``h0`` (GRU, RNN): ``(L*D, B, H)``, without B if unbatched."""
    if form == "unbatched":
        return torch.randn(num_states, hidden_size, dtype=dtype)
    return torch.randn(num_states, batch, hidden_size, dtype=dtype)


State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def run_rnn(
    m: torch.nn.Module,
    x: torch.Tensor,
    hx: Optional[State],
    form: str = "batched",
    batch_first: bool = False,
    lengths: Optional[List[int]] = None,
    grads: Optional[Tuple[torch.Tensor, ...]] = None,
    backward: bool = True,
) -> Tuple[Dict[str, object], Tuple[torch.Tensor, ...]]:
    """Run a torch.nn.LSTM/GRU/RNN-compatible module ``m`` forward on fresh copies of
    ``x``/``hx`` and backward with upstream gradients ``grads`` on (output, h_n[, c_n])
    (random if None).

    ``hx`` is ``None``, one tensor ``h0`` (GRU, RNN) or a tuple ``(h0, c0)`` (LSTM); the
    module's final state must have the same structure (a tensor or a tuple).

    Returns ``(results, grads)``; ``results`` maps names to tensors: ``output``, ``h_n``,
    ``c_n`` (LSTM), ``grad_input``, ``grad_h0``, ``grad_c0`` (LSTM), ``grad.<param name>``,
    plus the PackedSequence bookkeeping (``batch_sizes``, ``sorted_indices``,
    ``unsorted_indices``) for packed input. Parameter gradients are reset first.
    """
    m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    leaves: Tuple[torch.Tensor, ...] = ()
    hx_arg: Optional[State] = None
    if hx is not None:
        states = hx if isinstance(hx, tuple) else (hx,)
        leaves = tuple(s.detach().clone().requires_grad_(True) for s in states)
        hx_arg = leaves if isinstance(hx, tuple) else leaves[0]
    inp = build_input(x, form, batch_first, lengths)
    out, final = m(inp) if hx is None else m(inp, hx_arg)

    results: Dict[str, object] = {}
    if form.startswith("packed"):
        assert isinstance(out, PackedSequence), type(out)
        results["batch_sizes"] = out.batch_sizes
        results["sorted_indices"] = out.sorted_indices
        results["unsorted_indices"] = out.unsorted_indices
        out_data = out.data
    else:
        assert isinstance(out, torch.Tensor), type(out)
        out_data = out
    if isinstance(final, tuple):
        names = ("h_n", "c_n")
        finals = tuple(final)
    else:
        assert isinstance(final, torch.Tensor), type(final)
        names = ("h_n",)
        finals = (final,)
    assert len(finals) == len(names), len(finals)
    results["output"] = out_data
    results.update(zip(names, finals))

    if not backward:
        return results, ()
    outputs = (out_data,) + finals
    if grads is None:
        grads = tuple(torch.randn_like(t) for t in outputs)
    loss = sum((t * g).sum() for t, g in zip(outputs, grads))
    loss.backward()
    results["grad_input"] = x.grad
    for name, leaf in zip(("grad_h0", "grad_c0"), leaves):
        results[name] = leaf.grad
    for name, p in m.named_parameters():
        results["grad." + name] = p.grad
    return results, grads


def assert_results_close(got: Dict[str, object], ref: Dict[str, object], dtype: torch.dtype) -> None:
    """Compare two :func:`run_rnn` results: same keys, every tensor close (index tensors
    and shapes exactly equal)."""
    assert sorted(got) == sorted(ref)
    for key in ref:
        expected, actual = ref[key], got[key]
        if expected is None:
            assert actual is None, f"{key}: expected None, got {type(actual)}"
            continue
        assert actual is not None, f"{key}: expected a tensor, got None"
        if key in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            torch.testing.assert_close(actual, expected, atol=0, rtol=0, msg=key)
        else:
            assert_close(actual, expected, dtype, msg=key)


def capture_error(fn: Callable[[], object]) -> BaseException:
    """Run ``fn`` and return the exception it raised; fail if it raised none."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we want whatever torch raises
        return e
    pytest.fail("expected an exception, none was raised")


def assert_same_error(expected_fn: Callable[[], object], actual_fn: Callable[[], object]) -> BaseException:
    """Both callables must raise, with the same exception type and the same message."""
    expected = capture_error(expected_fn)
    actual = capture_error(actual_fn)
    assert type(actual) is type(expected), (
        f"exception type differs: got {type(actual).__name__}({actual}), "
        f"torch raises {type(expected).__name__}({expected})"
    )
    assert str(actual) == str(expected)
    return expected


#: The CPU's bfloat16 product kernels (csrc/cpu/bf16_gemm.h), each tested where the CPU has it.
#: "-auto": selected as the CPU's own choice, which applies the dot products' batch rule (the
#: calls it leaves out take the widened path). "widened": the bfloat16 data path with float32
#: products for every call (on any CPU whose kernel set has the panel micro-kernel). "fp32":
#: the float32 path on up-converted copies for every call.
BF16_KERNELS = ["amx", "avx512_bf16", "avx512_bf16-auto", "widened", "fp32"]
_BF16_NEEDS = {"amx": "AMX-BF16 tiles", "avx512_bf16": "AVX512-BF16",
               "widened": "kernel set with the panel micro-kernel (avx2, avx512)",
               "fp32": "nothing"}


def use_bf16_kernel(name: str):
    """Selects the bfloat16 layers' product kernel `name` for a test (a generator for a
    fixture: skips by name where this CPU lacks it, or where RNNFAST_CPU_BF16 turned the
    kernels off; then back to the start-up selection)."""
    from rnnfast import _C
    if os.environ.get("RNNFAST_CPU_BF16") == "fp32" and name != "fp32":
        pytest.skip(f"bfloat16 {name} kernel: turned off (RNNFAST_CPU_BF16=fp32)")
    name, auto = name.removesuffix("-auto"), name.endswith("-auto")
    if not _C._select_bf16_kernel(name, forced=not auto):
        pytest.skip(f"bfloat16 {name} kernel: this CPU has no {_BF16_NEEDS[name]}")
    try:
        yield name
    finally:
        _C._reset_bf16_kernel()


@pytest.fixture(params=BF16_KERNELS)
def bf16_kernel(request):
    """The test runs once per bfloat16 product kernel (use_bf16_kernel)."""
    yield from use_bf16_kernel(request.param)

"""The CUDA kernels and their host orchestration, run on the CPU in the SIMT emulator.

``rnnfast.testing.emulate_cuda()`` routes the operators on CPU tensors through the
code that runs on the GPU (csrc/cuda/rnn_host.h + csrc/kernels/rnn_device.cuh,
compiled against csrc/simt/), so these tests check every CUDA kernel, dtype and
direction against ``rnnfast/reference.py`` (float64 ground truth), against the CPU
kernels, and, through the modules, against torch.nn: multi-layer, bidirectional,
packed, unbatched. Emulation runs every CUDA thread as a fiber, so sizes are small
and odd (B 1, 3; H 1, 7, 33; T 1, 5).

With ``CI=true`` an emulator built without CUDA's half headers fails the float16 and
bfloat16 cases instead of skipping them.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch

import rnnfast
from rnnfast import ops
from rnnfast.testing import emulate_cuda, simt_has_half

from conftest import build_input, load_reference, make_lengths, run_rnn, torch_native_cpu_rnn

reference = load_reference()

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

#: Tolerances against a float64 reference, from each dtype's unit roundoff u and the
#: depth of the computation at these sizes (a few GEMM sums of <= 40 terms per step,
#: <= 5 steps, gradients summed over <= 15 rows):
#: float32 (u = 6e-8) and float64 (u = 1e-16) as in conftest, with room for the GPU's
#: fast __expf/__fdividef (a few ulp) in float32; float16 (u = 4.9e-4): tensors that
#: feed GEMMs are rounded to half every step, ~20 u; bfloat16 (u = 3.9e-3): ~20 u.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=8e-2, rtol=8e-2),
}

KINDS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu")


def _need_dtype(dtype: torch.dtype) -> None:
    if dtype in (torch.float16, torch.bfloat16) and not simt_has_half():
        message = ("the SIMT emulator was built without CUDA's cuda_fp16.h/cuda_bf16.h; "
                   "install the CUDA toolkit headers and rebuild")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


def _layer_params(kind: str, I: int, H: int, dtype: torch.dtype, bias: bool = True):
    G = {"lstm": 4, "lstm_proj": 4, "gru": 3}.get(kind, 1)
    P = max(1, H // 2) if kind == "lstm_proj" else H
    k = 1.0 / max(H, 1) ** 0.5
    w = lambda *s: (torch.rand(*s, dtype=torch.float64) * 2 - 1).mul(k).to(dtype)  # noqa: E731
    p = dict(w_ih=w(G * H, I), w_hh=w(G * H, P), b_ih=w(G * H) if bias else None,
             b_hh=w(G * H) if bias else None)
    if kind == "lstm_proj":
        p["w_hr"] = w(P, H)
    return p, P


def _run_layer(kind: str, x, h0, c0, p, batch_sizes, reverse, impl):
    """One layer through ``impl`` (rnnfast.ops or the reference): (outputs...)."""
    if kind.startswith("lstm"):
        fn = ops.lstm_layer if impl == "ops" else reference.lstm_layer
        return fn(x, h0, c0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p.get("w_hr"),
                  batch_sizes=batch_sizes, reverse=reverse)
    if kind == "gru":
        fn = ops.gru_layer if impl == "ops" else reference.gru_layer
        return fn(x, h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], batch_sizes=batch_sizes,
                  reverse=reverse)
    fn = ops.rnn_layer if impl == "ops" else reference.rnn_layer
    return fn(x, h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], batch_sizes=batch_sizes,
              reverse=reverse, nonlinearity=kind[4:])


def _forward_backward(kind, x, h0, c0, p, batch_sizes, reverse, impl, upstream):
    """Outputs and gradients of everything w.r.t. sum(output_i * upstream_i)."""
    leaves = {"x": x, "h0": h0, **{k: v for k, v in p.items() if v is not None}}
    if c0 is not None:
        leaves["c0"] = c0
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    params = {k: leaves.get(k) for k in p}
    outs = _run_layer(kind, leaves["x"], leaves["h0"], leaves.get("c0"), params, batch_sizes,
                      reverse, impl)
    loss = sum((o.double() * u).sum() for o, u in zip(outs, upstream))
    names = sorted(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    result = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    result.update({f"grad_{n}": g for n, g in zip(names, grads)})
    return result


def _compare(actual: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor],
             tol: dict, label: str) -> None:
    assert actual.keys() == expected.keys(), label
    for name in expected:
        a, e = actual[name], expected[name]
        assert a.shape == e.shape, f"{label} {name}: shape {a.shape} vs {e.shape}"
        torch.testing.assert_close(a.double(), e.double(), **tol,
                                   msg=lambda m, n=name: f"{label} {n}: {m}")


#: The forward algorithms (rnnfast.cuda_algorithm); "auto" takes the persistent one at
#: these batch sizes, so the tests below that do not name one run that.
ALGORITHMS = ("standard", "persistent")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("T,B,H", [(t, b, h) for t in (1, 5) for b in (1, 3) for h in (1, 7, 33)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_kernels(kind, dtype, T, B, H, algorithm):
    """Every kernel (forward and backward step of each cell, or the persistent forward,
    and the bias column sums) in every dtype, both directions, against reference.py in
    float64."""
    _need_dtype(dtype)
    I = 5
    p, P = _layer_params(kind, I, H, dtype)
    x = torch.randn(T, B, I, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, P, dtype=torch.float64).to(dtype)
    c0 = torch.randn(B, H, dtype=torch.float64).to(dtype) if kind.startswith("lstm") else None
    n_out = 3 if kind.startswith("lstm") else 2
    shapes = [(T, B, P), (B, P), (B, H)][:n_out]
    upstream = [torch.randn(s, dtype=torch.float64) for s in shapes]
    for reverse in (False, True):
        up64 = {k: (v.double() if v is not None else None) for k, v in p.items()}
        expected = _forward_backward(kind, x.double(), h0.double(),
                                     None if c0 is None else c0.double(), up64, None, reverse,
                                     "reference", upstream)
        with rnnfast.cuda_algorithm(algorithm), emulate_cuda():
            actual = _forward_backward(kind, x, h0, c0, p, None, reverse, "ops", upstream)
        for k, v in actual.items():
            assert v.dtype == dtype, f"{k} has dtype {v.dtype}"
        _compare(actual, expected, TOL[dtype], f"{kind} {dtype} reverse={reverse}")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_packed(kind, dtype, algorithm):
    """Packed input (shrinking active batch per step) in both directions, no bias."""
    _need_dtype(dtype)
    T, B, I, H = 5, 4, 3, 7
    p, P = _layer_params(kind, I, H, dtype, bias=False)
    lengths = [5, 4, 2, 1]
    batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)])
    N = int(batch_sizes.sum())
    x = torch.randn(N, I, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, P, dtype=torch.float64).to(dtype)
    c0 = torch.randn(B, H, dtype=torch.float64).to(dtype) if kind.startswith("lstm") else None
    shapes = [(N, P), (B, P), (B, H)][: 3 if kind.startswith("lstm") else 2]
    upstream = [torch.randn(s, dtype=torch.float64) for s in shapes]
    for reverse in (False, True):
        up64 = {k: (v.double() if v is not None else None) for k, v in p.items()}
        expected = _forward_backward(kind, x.double(), h0.double(),
                                     None if c0 is None else c0.double(), up64, batch_sizes,
                                     reverse, "reference", upstream)
        with rnnfast.cuda_algorithm(algorithm), emulate_cuda():
            actual = _forward_backward(kind, x, h0, c0, p, batch_sizes, reverse, "ops", upstream)
        _compare(actual, expected, TOL[dtype], f"packed {kind} {dtype} reverse={reverse}")


def _module(kind: str, I: int, H: int, dtype, **kw):
    cls = {"lstm": torch.nn.LSTM, "lstm_proj": torch.nn.LSTM, "gru": torch.nn.GRU}.get(
        kind, torch.nn.RNN)
    args = dict(kw)
    if kind == "lstm_proj":
        args["proj_size"] = 3
    if kind.startswith("rnn"):
        args["nonlinearity"] = kind[4:]
    torch_m = cls(I, H, dtype=torch.float64, **args)
    fast_m = getattr(rnnfast, cls.__name__)(I, H, dtype=dtype, **args)
    with torch.no_grad():
        for name, param in torch_m.named_parameters():
            param.copy_(param.to(dtype).double())  # representable in dtype
            fast_m.get_parameter(name).copy_(param)
    return torch_m, fast_m


MODULE_CASES = {
    "2layer_bidirectional": dict(num_layers=2, bidirectional=True),
    "packed_unsorted_hx": dict(num_layers=2, bidirectional=True, form="packed_unsorted", hx=True),
    "packed_sorted": dict(form="packed_sorted"),
    "batch_first_hx_nobias": dict(batch_first=True, bias=False, hx=True),
    "unbatched": dict(form="unbatched", hx=True),
}


@pytest.mark.parametrize("case", sorted(MODULE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("kind", KINDS)
def test_modules(kind, dtype, case):
    """The drop-in modules on the emulated CUDA path against torch.nn (float64) and,
    for float32/float64, against rnnfast's own CPU kernels."""
    _need_dtype(dtype)
    spec = dict(MODULE_CASES[case])
    form = spec.pop("form", "batched")
    with_hx = spec.pop("hx", False)
    T, B, I, H = 5, 3, 4, 7
    torch_m, fast_m = _module(kind, I, H, dtype, **spec)
    batch_first = spec.get("batch_first", False)
    D = 2 if spec.get("bidirectional") else 1
    L = spec.get("num_layers", 1)
    P = 3 if kind == "lstm_proj" else H
    if form == "unbatched":
        x = torch.randn(T, I, dtype=torch.float64).to(dtype)
        lengths = None
    else:
        x = torch.randn(*((B, T, I) if batch_first else (T, B, I)), dtype=torch.float64).to(dtype)
        lengths = make_lengths(B, T, sort=form == "packed_sorted") if form.startswith("packed") \
            else None
    hx = None
    if with_hx:
        hshape = (L * D, P) if form == "unbatched" else (L * D, B, P)
        cshape = (L * D, H) if form == "unbatched" else (L * D, B, H)
        h0 = torch.randn(hshape, dtype=torch.float64).to(dtype)
        hx = (h0, torch.randn(cshape, dtype=torch.float64).to(dtype)) if kind.startswith("lstm") \
            else h0
    with emulate_cuda():
        got, grads = run_rnn(fast_m, x, hx, form, batch_first, lengths)
    cast = (lambda s: tuple(t.double() for t in s)) if isinstance(hx, tuple) else \
        (lambda s: None if s is None else s.double())
    with torch_native_cpu_rnn():
        want, _ = run_rnn(torch_m, x.double(), cast(hx), form, batch_first, lengths,
                          grads=tuple(g.double() for g in grads))
    assert got.keys() == want.keys()
    for name in want:
        a, e = got[name], want[name]
        if name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert (a is None and e is None) or torch.equal(a, e), name
            continue
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"
        torch.testing.assert_close(a.double(), e, **TOL[dtype],
                                   msg=lambda m, n=name: f"{kind} {case} {n}: {m}")
    if dtype in (torch.float32, torch.float64):
        cpu, _ = run_rnn(fast_m, x, hx, form, batch_first, lengths, grads=grads)
        for name in want:
            if name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
                continue
            torch.testing.assert_close(got[name], cpu[name], **TOL[dtype],
                                       msg=lambda m, n=name: f"vs CPU kernels {n}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells(cell, dtype):
    """The cells run the layer operators with T = 1."""
    _need_dtype(dtype)
    B, I, H = 3, 5, 33
    torch_c = getattr(torch.nn, cell)(I, H, dtype=torch.float64)
    fast_c = getattr(rnnfast, cell)(I, H, dtype=dtype)
    with torch.no_grad():
        for name, param in torch_c.named_parameters():
            param.copy_(param.to(dtype).double())
            fast_c.get_parameter(name).copy_(param)
    x = torch.randn(B, I, dtype=torch.float64).to(dtype)
    x64 = x.detach().double().clone().requires_grad_(True)
    x_ = x.detach().clone().requires_grad_(True)
    want = torch_c(x64)
    with emulate_cuda():
        got = fast_c(x_)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    ups = [torch.randn(w.shape, dtype=torch.float64) for w in want]
    sum((w * u).sum() for w, u in zip(want, ups)).backward()
    with emulate_cuda():
        sum((g.double() * u).sum() for g, u in zip(got, ups)).backward()
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.detach(), **TOL[dtype])
    torch.testing.assert_close(x_.grad.double(), x64.grad, **TOL[dtype])
    for name, param in torch_c.named_parameters():
        torch.testing.assert_close(fast_c.get_parameter(name).grad.double(), param.grad,
                                   **TOL[dtype], msg=lambda m, n=name: f"{cell} {n}: {m}")


def test_half_workspace_is_float32():
    """float16/bfloat16 keep the LSTM cell state and the saved gates in float32."""
    _need_dtype(torch.float16)
    p, _ = _layer_params("lstm", 3, 5, torch.float16)
    x = torch.randn(2, 2, 3).half()
    h0, c0 = torch.zeros(2, 5).half(), torch.zeros(2, 5).half()
    with emulate_cuda():
        out = torch.ops.rnnfast_emu.lstm_forward(x, h0, c0, p["w_ih"], p["w_hh"], p["b_ih"],
                                                 p["b_hh"], None, None, False, True)
    assert out[0].dtype == torch.float16 and out[2].dtype == torch.float16
    assert out[3].dtype == torch.float32 and out[4].dtype == torch.float32


def test_emulation_is_scoped():
    """Outside emulate_cuda() the CPU kernels run (float16 falls back to torch)."""
    with emulate_cuda():
        assert ops.runs_kernels(torch.zeros(1, dtype=torch.float16))
        assert ops._ops() is torch.ops.rnnfast_emu
    assert not ops.runs_kernels(torch.zeros(1, dtype=torch.float16))
    assert ops._ops() is torch.ops.rnnfast


def test_emulated_errors_match_cpu():
    """Argument checks are shared: the emulated CUDA operator rejects what the CPU one does."""
    x = torch.randn(2, 3, 4)
    with emulate_cuda():
        with pytest.raises(RuntimeError, match="expected hx of shape"):
            torch.ops.rnnfast_emu.rnn_forward(x, torch.zeros(2, 5), torch.randn(5, 4),
                                              torch.randn(5, 5), None, None, None, False, False)
        with pytest.raises(RuntimeError, match="support float32, float64, float16 and bfloat16"):
            torch.ops.rnnfast_emu.rnn_forward(x.int(), torch.zeros(3, 5).int(),
                                              torch.randn(5, 4).int(), torch.randn(5, 5).int(),
                                              None, None, None, False, False)


def test_production_extension_has_no_emulator():
    """The fiber runtime and the emulated operators live only in the test-only extension:
    the production rnnfast._C has no symbol of the emulator (namespace simt::emu; a CUDA
    build has simt.h's GPU mapping, simt::gpu, and its LaunchError) and no rnnfast_emu
    operator."""
    import shutil
    import subprocess

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    def symbols(path: str) -> str:
        return subprocess.run([nm, "-C", "-D", "--defined-only", path], check=True,
                              capture_output=True, text=True).stdout + subprocess.run(
            [nm, "-C", path], capture_output=True, text=True).stdout
    prod = symbols(rnnfast._C.__file__)
    assert "simt::emu" not in prod and "simt_emu" not in prod and "rnnfast_emu" not in prod
    emu = symbols(rnnfast.testing.emulator().__file__)
    assert "simt::emu::detail::run" in emu


def test_emulated_operators_have_their_own_namespace():
    emulate = rnnfast.testing.emulator()
    assert emulate is not rnnfast._C
    for op in ("lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward",
               "rnn_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rnnfast_emu::{op}", "CPU"), op
        assert str(getattr(torch.ops.rnnfast_emu, op).default._schema).split("(", 1)[1] == \
            str(getattr(torch.ops.rnnfast, op).default._schema).split("(", 1)[1], op


@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn"))
def test_emulated_opcheck(kind):
    """The emulated operators satisfy torch.library's operator checks (schema, fake
    kernel, autograd registration), like the production ones."""
    rnnfast.testing.emulator()
    torch.manual_seed(0)
    T, B, I, H = 3, 2, 4, 5
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    x = torch.randn(T, B, I, requires_grad=True)
    hx = torch.randn(B, H, requires_grad=True)
    w = [torch.randn(G * H, I, requires_grad=True), torch.randn(G * H, H, requires_grad=True),
         torch.randn(G * H, requires_grad=True), torch.randn(G * H, requires_grad=True)]
    if kind == "lstm":
        cx = torch.randn(B, H, requires_grad=True)
        args = (x, hx, cx, *w, None, None, False, True)
    elif kind == "gru":
        args = (x, hx, *w, None, False, True)
    else:
        args = (x, hx, *w, None, False, False)
    torch.library.opcheck(getattr(torch.ops.rnnfast_emu, f"{kind}_forward").default, args)


def _packed_case(T: int, B: int, I: int, dtype):
    """Packed data of lengths T, T-1, 1 (shrinking batches) and its batch_sizes."""
    lengths = [T, T - 1, 1][:B]
    batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)])
    return torch.randn(int(batch_sizes.sum()), I, dtype=dtype), batch_sizes


@pytest.mark.parametrize("grad_form", ("expanded", "transposed"))
@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
@pytest.mark.parametrize("kind", KINDS)
def test_output_gradient_read_in_place(kind, packed, grad_form):
    """The output gradient is read in place whatever its strides (all 0 when expanded
    from out.sum(); a column stride of N when transposed): bit for bit the gradients of
    its contiguous copy, in both directions, with all rows or shrinking batches."""
    dtype = torch.float64
    T, B, I, H = 4, 3, 5, 6
    p, P = _layer_params(kind, I, H, dtype)
    if packed:
        x, batch_sizes = _packed_case(T, B, I, dtype)
    else:
        x, batch_sizes = torch.randn(T, B, I, dtype=dtype), None
    h0 = torch.randn(B, P, dtype=dtype)
    c0 = torch.randn(B, H, dtype=dtype) if kind.startswith("lstm") else None
    out_shape = (*x.shape[:-1], P)
    if grad_form == "expanded":
        g = torch.ones((), dtype=dtype).expand(out_shape)
    else:
        g = torch.randn(P, *out_shape[:-1], dtype=dtype).movedim(0, -1)
    assert not g.is_contiguous()
    for reverse in (False, True):
        grads = []
        for upstream in (g, g.contiguous()):
            leaves = [t.clone().requires_grad_(True) for t in (x, h0, p["w_ih"], p["w_hh"])]
            params = dict(p, w_ih=leaves[2], w_hh=leaves[3])
            with emulate_cuda():
                out = _run_layer(kind, leaves[0], leaves[1], c0, params, batch_sizes, reverse,
                                 "ops")[0]
                grads.append(torch.autograd.grad(out, leaves, grad_outputs=upstream))
        for name, a, b in zip(("x", "h0", "w_ih", "w_hh"), *grads):
            assert torch.equal(a, b), f"{kind} reverse={reverse}: grad of {name} differs"


@pytest.mark.parametrize("kind", ("lstm", "gru", "rnn_tanh"))
def test_bias_sums_over_many_rows(kind):
    """The bias gradients' cascade sums over more rows than one leaf (135 rows: five
    leaves of at most 32, an odd count), against the float64 reference."""
    dtype = torch.float32
    T, B, I, H = 45, 3, 4, 5
    p, P = _layer_params(kind, I, H, dtype)
    x = torch.randn(T, B, I, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, P, dtype=torch.float64).to(dtype)
    c0 = torch.randn(B, H, dtype=torch.float64).to(dtype) if kind.startswith("lstm") else None
    shapes = [(T, B, P), (B, P), (B, H)][:3 if kind.startswith("lstm") else 2]
    upstream = [torch.randn(s, dtype=torch.float64) for s in shapes]
    up64 = {k: (v.double() if v is not None else None) for k, v in p.items()}
    expected = _forward_backward(kind, x.double(), h0.double(),
                                 None if c0 is None else c0.double(), up64, None, False,
                                 "reference", upstream)
    with emulate_cuda():
        actual = _forward_backward(kind, x, h0, c0, p, None, False, "ops", upstream)
    for name in ("grad_b_ih", "grad_b_hh"):
        torch.testing.assert_close(actual[name].double(), expected[name], **TOL[dtype],
                                   msg=lambda m, n=name: f"{kind} {n}: {m}")

"""The rnnfast custom operators: fake (meta) kernels and autograd.

The schemas and the CPU/CUDA kernels live in C++ (``csrc/ops.cpp``); importing
this module loads them (``rnnfast._C``) and registers, for each operator,

* a fake kernel, so that ``torch.compile`` and meta/fake tensors know output
  shapes without running it, and
* an autograd formula that calls the matching hand-written backward operator,

which makes the operators behave like built-in ones under the dispatcher,
autograd and ``torch.compile(fullgraph=True)``.

Shapes (T steps, B batch, N rows = T*B or sum(batch_sizes), I input, H hidden,
P = proj_size or H):

``torch.ops.rnnfast.lstm_forward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
batch_sizes, reverse, need_workspace) -> (output, hy, cy, gates, cells)``
    One LSTM layer in one direction. ``input`` (T, B, I) time-major, or packed
    (N, I) with ``batch_sizes`` (T,) int64 on the CPU; ``hx`` (B, P); ``cx``
    (B, H); ``w_ih`` (4H, I); ``w_hh`` (4H, P); ``b_ih``/``b_hh`` (4H) or None;
    ``w_hr`` (P, H) or None. ``output`` (T, B, P) or (N, P). ``gates`` (N, 4H)
    and ``cells`` (N, H) are what backward needs, empty when ``need_workspace``
    is False.

``torch.ops.rnnfast.lstm_backward(...)``
    The hand-written BPTT of ``lstm_forward``; see ``csrc/ops.h``.

``torch.ops.rnnfast.gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
reverse, need_workspace) -> (output, hy, workspace)``
    One GRU layer in one direction; ``w_ih`` (3H, I), ``w_hh`` (3H, H); the
    workspace (N, 4H) holds r, z, n and W_hn h + b_hn for backward.

``torch.ops.rnnfast.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
reverse, relu) -> (output, hy)``
    One Elman RNN layer (tanh, or relu when ``relu``); backward needs only the
    output.

Each has a ``*_backward`` operator (the hand-written BPTT); see ``csrc/ops.h``.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from . import _C  # noqa: F401  (loads the library: registers torch.ops.rnnfast.*)
from . import _registry, autocast, reference, vmap

__all__ = ["lstm_layer", "lstm_cell", "gru_layer", "rnn_layer", "runs_kernels"]

_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
#: The cell-kind table of ``csrc/core/cells.h``: gates, the buffers forward saves
#: (name, columns in units of H), bias gradients. The fake kernels take their shapes
#: from it, so the C++ operators and the fakes cannot disagree.
CELL_SPECS: dict = _C.cell_specs()

# The operator namespace the layers call: "rnnfast" (production), or "rnnfast_emu"
# while rnnfast.testing.emulate_cuda() runs the CUDA kernels in the SIMT emulator on
# CPU tensors. A module-level Python value, so torch.compile guards on it.
_namespace = "rnnfast"


def _ops() -> Any:
    return getattr(torch.ops, _namespace)


def runs_kernels(input: Tensor) -> bool:
    """Whether rnnfast's own kernels handle ``input``'s device and dtype.

    CUDA kernels: float32, float64, float16, bfloat16; CPU kernels: float32, float64
    and bfloat16 (float32 arithmetic and cell state on up-converted values). Anything
    else (float16 on the CPU) falls back to torch's implementation.
    """
    if input.device.type == "cuda" or (_namespace != "rnnfast" and input.device.type == "cpu"):
        return input.dtype in _CUDA_DTYPES
    return input.dtype in _CPU_DTYPES


def _acc_like(t: Tensor, shape) -> Tensor:
    """A saved buffer: float32 for half types (the cell state and saved gates stay
    in float32; :func:`_saved_fakes` names the exception), the input's dtype otherwise."""
    return t.new_empty(shape, dtype=torch.float32 if t.dtype in _HALF_DTYPES else t.dtype)


def _rows(input: Tensor, batch_sizes: Optional[Tensor]) -> Any:
    return input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]


def _saved_fakes(kind: str, input: Tensor, batch_sizes: Optional[Tensor], hidden,
                 need_workspace: bool, ns: str = "rnnfast") -> list:
    """Fakes of the buffers forward saves for backward (csrc/core/cells.h): float32 for
    half types, except the CPU kernels' bfloat16 GRU, whose workspace is bfloat16
    (csrc/cpu/backend.h saved_dtype)."""
    n = _rows(input, batch_sizes)
    shape = lambda cols: (n, cols * hidden) if need_workspace else (0,)  # noqa: E731
    if (kind == "gru" and input.dtype == torch.bfloat16 and input.device.type == "cpu"
            and ns == "rnnfast"):
        return [input.new_empty(shape(cols)) for _name, cols in CELL_SPECS[kind]["saved"]]
    return [_acc_like(input, shape(cols)) for _name, cols in CELL_SPECS[kind]["saved"]]


# ---------------------------------------------------------------------- private torch APIs
# Each is looked up once and guarded: a torch that renames one loses only what reads it
# (with a warning when that is used), never ``import rnnfast``.

def _lookup(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except (AttributeError, ImportError):
        return None


_functorch = _lookup(lambda: torch._C._functorch)
#: The innermost torch.func transform (None when none is active), and the whole stack.
_peek_transforms = _lookup(lambda: _functorch.peek_interpreter_stack)
_transform_stack = _lookup(lambda: _functorch.get_interpreter_stack)
_JVP = _lookup(lambda: _functorch.TransformType.Jvp)
_GRAD = _lookup(lambda: _functorch.TransformType.Grad)
_SEES_TRANSFORMS = None not in (_peek_transforms, _transform_stack, _JVP, _GRAD)
if _peek_transforms is None:
    def _peek_transforms() -> Any:  # noqa: F811  (without it, the detailed checks always run)
        return True
#: The dynamo-based ONNX exporter's flag (``torch.onnx.export(..., dynamo=True)``), and the
#: TorchScript-based exporter's. Both are process-wide, not per thread.
def _with(module: str, attribute: str) -> Any:
    """Module ``module`` if it has ``attribute`` (read later, on each call)."""
    found = importlib.import_module(module)
    getattr(found, attribute)
    return found


_onnx_flags = _lookup(lambda: _with("torch.onnx._internal.exporter._flags",
                                    "_is_onnx_exporting"))
_onnx_globals = _lookup(lambda: _with("torch.onnx._globals", "GLOBALS").GLOBALS)
#: The tensor types a torch.export capture runs Python code on (instead of real tensors).
_CAPTURE_TYPES = tuple(t for t in (
    _lookup(lambda: _with("torch._subclasses.fake_tensor", "FakeTensor").FakeTensor),
    _lookup(lambda: _with("torch._subclasses.functional_tensor",
                          "FunctionalTensor").FunctionalTensor),
) if t is not None)
_get_dispatch_mode = _lookup(lambda: torch._C._get_dispatch_mode)
_CAPTURE_MODES = _lookup(lambda: (torch._C._TorchDispatchModeKey.FAKE,
                                  torch._C._TorchDispatchModeKey.PROXY))
_is_tracing = torch.jit.is_tracing  # torch.jit's public test (torch._C._is_tracing inside)
_c_is_tracing = _lookup(lambda: torch._C._is_tracing) or _is_tracing
_is_dynamo_compiling = _lookup(lambda: torch.compiler.is_dynamo_compiling) or (
    torch.compiler.is_compiling)


def _onnx_exporting() -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` runs somewhere in this process."""
    if _onnx_flags is not None:
        return bool(_onnx_flags._is_onnx_exporting)
    # Another torch: the public test, which the TorchScript-based exporter sets too.
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def _legacy_onnx_exporting() -> bool:
    """Whether the TorchScript-based exporter (``dynamo=False``) runs."""
    if _onnx_globals is not None:
        return bool(_onnx_globals.in_onnx_export)
    return torch.onnx.is_in_onnx_export()


# ------------------------------------------------------------------------ which code runs

_KERNELS, _ONNX, _TRACE, _COMPOSITE = range(4)


def _path(input: Tensor, tensors: Sequence[Optional[Tensor]]) -> int:
    """What a layer call runs: rnnfast's fused operators (``_KERNELS``), standard ONNX nodes
    (``_ONNX``, :func:`_onnx_dynamo`), the scripted per-layer functions (``_TRACE``,
    :func:`_traced`) or the plain-torch reference (``_COMPOSITE``, :func:`runs_composite`).

    An ordinary eager call pays one cheap test, which holds whenever any of the detailed
    checks could answer otherwise: a TorchDynamo trace, a ``torch.jit.trace``, an ONNX
    export anywhere in the process, an open forward-AD level, a ``torch.func`` transform.
    (A non-strict ``torch.export`` runs Python code eagerly on fake tensors: the same
    tests apply.)"""
    # TorchDynamo folds its own test to True (it cannot trace some of the others); in eager
    # mode the rest are C functions and attribute reads.
    if not (_is_dynamo_compiling() or _fwad._current_level >= 0
            or _peek_transforms() is not None or _c_is_tracing()
            or (_onnx_exporting() if _onnx_flags is None else _onnx_flags._is_onnx_exporting)):
        return _KERNELS
    if _onnx_dynamo(input):
        return _ONNX
    if _traced():
        return _TRACE
    if runs_composite(tensors):
        return _COMPOSITE
    return _KERNELS


def _traced() -> bool:
    """Whether ``torch.jit.trace`` (not the ONNX exporter's trace) records this call:
    then the layers call scripted functions that decide ``need_workspace`` in the graph
    (a constant there would be the trace-time grad mode's)."""
    return _is_tracing() and _namespace == "rnnfast" and not _legacy_onnx_exporting()


_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def runs_composite(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether this call must run the plain-torch code of :mod:`rnnfast.reference` (same
    maths, differentiable by any means) instead of the fused operators: forward-mode AD
    watches it (one of ``tensors`` carries a tangent at the current
    ``torch.autograd.forward_ad`` dual level), or a differentiating ``torch.func``
    transform is active (``jvp``, ``jacfwd``, ``hessian``; ``grad``, ``vjp``, ``jacrev``).

    The operators have no forward-mode formula (they refuse a tangent), and torch runs the
    autograd formula of an operator defined in C++ only under ordinary autograd, not under
    ``torch.func``'s grad transforms. Under the reverse transforms the layers therefore run
    a Python loop over the time steps; the first such call warns.

    While ``torch.compile`` traces, only the forward-AD level is read (``torch.func.jvp``
    opens one; torch.compile cannot trace the transform stack): inside an open level the
    traced code is the reference, elsewhere the operators.
    """
    if _is_dynamo_compiling():
        return _fwad._current_level >= 0
    if _fwad._current_level >= 0 and any(
            t is not None and _fwad.unpack_dual(t).tangent is not None for t in tensors):
        return True
    if not _SEES_TRANSFORMS:
        _warn_once("transforms", "rnnfast: this torch has no torch._C._functorch interpreter "
                   "stack API, so rnnfast cannot tell whether a torch.func transform is "
                   "active; the fused operators run, and torch.func.grad/vjp/jacrev through "
                   "them may fail or be wrong. Use ordinary autograd (backward()).")
        return False
    if _peek_transforms() is None:
        return False
    keys = {i.key() for i in _transform_stack()}
    if _JVP in keys:
        return True
    if _GRAD in keys:
        _warn_once("grad", "rnnfast: under torch.func.grad/vjp/jacrev rnnfast's layers and "
                   "cells run rnnfast.reference's plain-torch code (a Python loop over the "
                   "time steps, much slower than the fused kernels): torch runs the "
                   "operators' autograd formula only under ordinary autograd. For speed, "
                   "use loss.backward() or torch.autograd.grad.")
        return True
    return False


def _onnx_dynamo(input: Tensor) -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` is capturing this call (with any of
    its capture strategies): then the layers emit the standard ONNX nodes (rnnfast/onnx.py).

    The exporter's flag is process-wide, so it is not enough: the call must also be the
    capture's own, a TorchDynamo trace (strict capture) or Python code run on fake or
    functional tensors under a dispatch mode (non-strict capture). A call on real tensors
    (another thread running the model meanwhile) runs the operators: symbolic ONNX nodes
    on real tensors return placeholders."""
    if _namespace != "rnnfast" or not _onnx_exporting():
        return False
    if _is_dynamo_compiling():
        return True
    return isinstance(input, _CAPTURE_TYPES) or _capture_mode()


def _capture_mode() -> bool:
    """Whether a fake-tensor or proxy (make_fx) dispatch mode is active in this thread."""
    if _get_dispatch_mode is None or _CAPTURE_MODES is None:
        return False
    return any(_get_dispatch_mode(key) is not None for key in _CAPTURE_MODES)


def _needs_grad(tensors: Sequence[Optional[Tensor]]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _input_grads(ctx: Any, *grads: Optional[Tensor]) -> tuple:
    """What an autograd formula returns: one entry per forward input, ``grads[i]`` for
    input ``i`` where autograd needs it, None elsewhere (inputs past ``grads``, the
    non-tensor arguments, get None)."""
    need = ctx.needs_input_grad
    return tuple(grads[i] if i < len(grads) and need[i] else None for i in range(len(need)))


def _save(ctx: Any, tensors: tuple, reverse: bool, b_ih: Optional[Tensor]) -> None:
    """The context every autograd formula keeps: the tensors backward reads, the
    direction, whether there is a bias."""
    # Outputs nobody differentiates (the saved workspace above all) get None, not a
    # zero-filled gradient: materialising them cost a workspace-sized buffer and its
    # fill in every backward. The backward operators take absent gradients as zero.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*tensors)
    ctx.reverse = reverse
    ctx.has_bias = b_ih is not None


def _grad_fakes(kind: str, input: Tensor, states: Sequence[Tensor], w_ih: Tensor, w_hh: Tensor,
                has_bias: bool, need_grad_input: bool) -> tuple:
    """Fakes of what the backward operators return first: the gradients of ``input``
    (empty (0,) unless ``need_grad_input``), of each state, of ``w_ih`` and ``w_hh``, and
    the bias gradients of the cell-kind table (empty (0,) without bias)."""
    bias_shape = (w_ih.shape[0],) if has_bias else (0,)
    return (input.new_empty(input.shape if need_grad_input else (0,)),
            *(s.new_empty(s.shape) for s in states), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape),
            *(input.new_empty(bias_shape) for _ in range(CELL_SPECS[kind]["num_bias_grads"])))


_autograd_impl = _lookup(lambda: _with("torch._library.autograd", "make_autograd_impl"))


def _refuse_tangents(op: Any, args: tuple) -> None:
    """Raise if forward-mode AD reaches a fused operator with a tangent: it has no
    forward-mode rule, and without this check its outputs would carry no tangent (zero)."""
    if _fwad._current_level < 0:
        return
    for a in args:
        if isinstance(a, Tensor) and _fwad.unpack_dual(a).tangent is not None:
            raise RuntimeError(
                f"rnnfast's fused operators have no forward-mode AD rule; {op} was called "
                "with a forward-mode tangent (torch.func.jvp/jacfwd/hessian or "
                "torch.autograd.forward_ad). rnnfast's layers, cells and rnnfast.ops "
                "functions switch to differentiable plain-torch code (rnnfast.reference) "
                "under forward AD, in eager mode and under torch.compile: call those, not "
                "torch.ops.rnnfast.* directly, a TorchScript module or an exported program.")


def _register_autograd(ns: str, name: str, backward: Callable, setup_context: Callable
                       ) -> None:
    """``torch.library.register_autograd`` for ``ns::name``, with the forward-mode refusal
    (:func:`_refuse_tangents`) in front of torch's autograd kernel."""
    if not hasattr(_autograd_impl, "Info"):
        # Another torch: torch's own registration, without the refusal.
        _warn_once("refusal", "rnnfast: torch._library.autograd not found; rnnfast's "
                   "operators cannot refuse forward-mode tangents (called directly under "
                   "forward AD they return zero tangents).")
        torch.library.register_autograd(f"{ns}::{name}", backward,
                                        setup_context=setup_context)
        return
    op = getattr(getattr(torch.ops, ns), name).default
    kernel = _autograd_impl.make_autograd_impl(op, _autograd_impl.Info(backward,
                                                                        setup_context))

    def autograd_kernel(keyset: Any, *args: Any) -> Any:  # (no keyword-only arguments)
        if _fwad._current_level >= 0:
            _refuse_tangents(op, args)
        return kernel(keyset, *args)

    _registry.library(ns).impl(name, autograd_kernel, "Autograd", with_keyset=True)


def _register(ns: str) -> None:
    """Fake kernels and autograd for the six operators of namespace ``ns``."""
    lstm_g, gru_g = CELL_SPECS["lstm"]["gates"], CELL_SPECS["gru"]["gates"]
    ops = getattr(torch.ops, ns)

    # ------------------------------------------------------------------- LSTM
    @torch.library.register_fake(f"{ns}::lstm_forward")
    def _lstm_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                           need_workspace):
        hidden = w_ih.shape[0] // lstm_g
        out_size = w_hr.shape[0] if w_hr is not None else hidden
        output = input.new_empty((*input.shape[:-1], out_size))
        gates, cells = _saved_fakes("lstm", input, batch_sizes, hidden, need_workspace)
        return output, hx.new_empty(hx.shape), cx.new_empty(cx.shape), gates, cells

    @torch.library.register_fake(f"{ns}::lstm_backward")
    def _lstm_backward_fake(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr,
                            output, gates, cells, batch_sizes, reverse, has_bias,
                            need_grad_input):
        grad_w_hr = input.new_empty(w_hr.shape) if w_hr is not None else input.new_empty((0,))
        return (*_grad_fakes("lstm", input, (hx, cx), w_ih, w_hh, has_bias, need_grad_input),
                grad_w_hr)

    def _lstm_setup_context(ctx, inputs, output) -> None:
        (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
         need_workspace) = inputs
        out, _hy, _cy, gates, cells = output
        _save(ctx, (input, hx, cx, w_ih, w_hh, w_hr, out, gates, cells, batch_sizes), reverse,
              b_ih)

    def _lstm_backward(ctx, grad_output, grad_hy, grad_cy, _grad_gates, _grad_cells):
        input, hx, cx, w_ih, w_hh, w_hr, out, gates, cells, batch_sizes = ctx.saved_tensors
        (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias,
         grad_w_hr) = ops.lstm_backward(
            grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr, out, gates, cells,
            batch_sizes, ctx.reverse, ctx.has_bias, ctx.needs_input_grad[0])
        grad_bias = grad_bias if ctx.has_bias else None
        return _input_grads(ctx, grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias,
                            grad_bias, grad_w_hr if w_hr is not None else None)

    _register_autograd(ns, "lstm_forward", _lstm_backward, _lstm_setup_context)

    # ------------------------------------------------------------------- GRU
    @torch.library.register_fake(f"{ns}::gru_forward")
    def _gru_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                          need_workspace):
        hidden = w_ih.shape[0] // gru_g
        output = input.new_empty((*input.shape[:-1], hidden))
        (workspace,) = _saved_fakes("gru", input, batch_sizes, hidden, need_workspace, ns)
        return output, hx.new_empty(hx.shape), workspace

    @torch.library.register_fake(f"{ns}::gru_backward")
    def _gru_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, workspace,
                           batch_sizes, reverse, has_bias, need_grad_input):
        return _grad_fakes("gru", input, (hx,), w_ih, w_hh, has_bias, need_grad_input)

    def _gru_setup_context(ctx, inputs, output) -> None:
        input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace = inputs
        out, _hy, workspace = output
        _save(ctx, (input, hx, w_ih, w_hh, out, workspace, batch_sizes), reverse, b_ih)

    def _gru_backward(ctx, grad_output, grad_hy, _grad_workspace):
        input, hx, w_ih, w_hh, out, workspace, batch_sizes = ctx.saved_tensors
        grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = ops.gru_backward(
            grad_output, grad_hy, input, hx, w_ih, w_hh, out, workspace, batch_sizes,
            ctx.reverse, ctx.has_bias, ctx.needs_input_grad[0])
        if not ctx.has_bias:
            grad_b_ih = grad_b_hh = None
        return _input_grads(ctx, grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)

    _register_autograd(ns, "gru_forward", _gru_backward, _gru_setup_context)

    # ------------------------------------------------------------------- RNN
    @torch.library.register_fake(f"{ns}::rnn_forward")
    def _rnn_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu):
        output = input.new_empty((*input.shape[:-1], w_ih.shape[0]))
        return output, hx.new_empty(hx.shape)

    @torch.library.register_fake(f"{ns}::rnn_backward")
    def _rnn_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, output, batch_sizes,
                           reverse, relu, has_bias, need_grad_input):
        return _grad_fakes("rnn", input, (hx,), w_ih, w_hh, has_bias, need_grad_input)

    def _rnn_setup_context(ctx, inputs, output) -> None:
        input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu = inputs
        out, _hy = output
        _save(ctx, (input, hx, w_ih, w_hh, out, batch_sizes), reverse, b_ih)
        ctx.relu = relu

    def _rnn_backward(ctx, grad_output, grad_hy):
        input, hx, w_ih, w_hh, out, batch_sizes = ctx.saved_tensors
        grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = ops.rnn_backward(
            grad_output, grad_hy, input, hx, w_ih, w_hh, out, batch_sizes, ctx.reverse,
            ctx.relu, ctx.has_bias, ctx.needs_input_grad[0])
        grad_bias = grad_bias if ctx.has_bias else None
        return _input_grads(ctx, grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias, grad_bias)

    _register_autograd(ns, "rnn_forward", _rnn_backward, _rnn_setup_context)

    autocast.register(ns)  # AutocastCPU/AutocastCUDA kernels of the forward operators
    vmap.register(ns)  # batching rules of the forward operators


_register("rnnfast")


# --------------------------------------------------------------------------- layers

def lstm_layer(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
               w_hr: Optional[Tensor] = None, batch_sizes: Optional[Tensor] = None,
               reverse: bool = False, *, layer_norm: Optional[Sequence[Tensor]] = None,
               masks: Optional[reference.LayerMasks] = None, zoneout: float = 0.0
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM layer in one direction over a whole sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) when ``batch_sizes``
            is given.
        hx: (B, P) initial hidden state (P = proj_size, or H without projection).
        cx: (B, H) initial cell state.
        w_ih, w_hh, b_ih, b_hh, w_hr: the layer's parameters, torch.nn.LSTM layout.
        batch_sizes: (T,) int64 CPU tensor of a PackedSequence, or None.
        reverse: run from the last step to the first (the backward direction of a
            bidirectional layer).
        layer_norm: ``(w_ln_ih, w_ln_hh, w_ln_c, b_ln_c)`` of shapes (4H,), (4H,), (H,),
            (H,) for the layer-normalised LSTM (:mod:`rnnfast.reference`), or None.
        masks: training-mode masks (:class:`rnnfast.reference.LayerMasks`: weight
            dropout, recurrent dropout, zoneout of h and c), or None.
        zoneout: the evaluation form's zoneout probability (used when ``masks`` has no
            zoneout mask).

    Returns:
        ``(output, h_n, c_n)``: output (T, B, P) or (N, P); h_n (B, P); c_n (B, H).
        Differentiable with respect to every tensor argument but ``batch_sizes``.
    """
    if _has_options(layer_norm, masks, zoneout):
        return _lstm_options_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                   reverse, layer_norm, masks, zoneout)
    path = _path(input, (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr))
    if path == _ONNX:
        from .onnx import dynamo_lstm_layer
        return dynamo_lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                 reverse)
    if path == _TRACE:  # need_workspace decided in the traced graph, at run time
        from ._torchscript import traced_lstm_layer
        return traced_lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                 reverse)
    if path == _COMPOSITE:
        return reference.lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                    reverse)
    need_workspace = _needs_grad((input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr))
    out, hy, cy, _gates, _cells = _ops().lstm_forward(
        input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, need_workspace)
    return out, hy, cy



def lstm_cell(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None
              ) -> tuple[Tensor, Tensor]:
    """One LSTM step (``rnnfast.LSTMCell``): :func:`lstm_layer` over one time step.

    Args:
        input: (B, I). hx: (B, H). cx: (B, H). w_ih, w_hh, b_ih, b_hh: torch.nn.LSTMCell's.

    Returns:
        ``(h', c')``, each (B, H).

    Under CPU autocast the step runs in the packed form (one step of B rows): torch.nn's
    LSTMCell keeps the cell state's dtype there, like a packed torch.nn.LSTM, where a
    padded one runs oneDNN's layer whole in bfloat16; the operator's autocast rule tells
    the two apart by the form (rnnfast/autocast.py).
    """
    if input.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        _, h, c = lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh,
                             batch_sizes=_one_step(input))
    else:
        _, h, c = lstm_layer(input.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh)
    return h, c


_ONE_STEP: dict = {}


def _one_step(input: Tensor) -> Tensor:
    """``batch_sizes`` of one step of ``input.size(0)`` rows (CPU int64, shape (1,)).

    Traced or compiled, made from ``input.size(0)`` in the graph (the batch stays dynamic);
    in an ordinary eager call, one cached tensor per batch size (never written)."""
    if (torch.compiler.is_compiling() or _is_tracing()
            or _peek_transforms() is not None):
        return torch.full((1,), input.size(0), dtype=torch.int64)
    rows = input.size(0)
    cached = _ONE_STEP.get(rows)
    if cached is None:
        if len(_ONE_STEP) >= 64:
            _ONE_STEP.clear()
        with torch.inference_mode(False):  # usable outside inference mode too
            cached = _ONE_STEP[rows] = torch.full((1,), rows, dtype=torch.int64)
    return cached


def gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              batch_sizes: Optional[Tensor] = None, reverse: bool = False, *,
              layer_norm: Optional[Sequence[Tensor]] = None,
              masks: Optional[reference.LayerMasks] = None, zoneout: float = 0.0
              ) -> tuple[Tensor, Tensor]:
    """Run one GRU layer in one direction over a whole sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) with ``batch_sizes``.
        hx: (B, H) initial hidden state.
        w_ih, w_hh, b_ih, b_hh: the layer's parameters, torch.nn.GRU layout
            (gates r, z, n).
        batch_sizes: (T,) int64 CPU tensor of a PackedSequence, or None.
        reverse: run from the last step to the first.
        layer_norm: ``(w_ln_ih, w_ln_hh)``, each (3H,), for the layer-normalised GRU, or
            None.
        masks, zoneout: as in :func:`lstm_layer` (no ``zoneout_c``).

    Returns:
        ``(output, h_n)``: output (T, B, H) or (N, H); h_n (B, H).
    """
    if _has_options(layer_norm, masks, zoneout):
        return _gru_options_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                                  layer_norm, masks, zoneout)
    path = _path(input, (input, hx, w_ih, w_hh, b_ih, b_hh))
    if path == _ONNX:
        from .onnx import dynamo_gru_layer
        return dynamo_gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    if path == _TRACE:
        from ._torchscript import traced_gru_layer
        return traced_gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    if path == _COMPOSITE:
        return reference.gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    need_workspace = _needs_grad((input, hx, w_ih, w_hh, b_ih, b_hh))
    out, hy, _workspace = _ops().gru_forward(
        input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace)
    return out, hy



def rnn_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              batch_sizes: Optional[Tensor] = None, reverse: bool = False,
              nonlinearity: str = "tanh") -> tuple[Tensor, Tensor]:
    """Run one Elman RNN layer in one direction over a whole sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) with ``batch_sizes``.
        hx: (B, H) initial hidden state.
        w_ih, w_hh, b_ih, b_hh: the layer's parameters, torch.nn.RNN layout.
        batch_sizes: (T,) int64 CPU tensor of a PackedSequence, or None.
        reverse: run from the last step to the first.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``(output, h_n)``: output (T, B, H) or (N, H); h_n (B, H).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    path = _path(input, (input, hx, w_ih, w_hh, b_ih, b_hh))
    if path == _ONNX:
        from .onnx import dynamo_rnn_layer
        return dynamo_rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                                nonlinearity == "relu")
    if path == _COMPOSITE:
        return reference.rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                                   nonlinearity)
    return _ops().rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                              nonlinearity == "relu")


# ------------------------------------------------- layer norm, zoneout, dropouts (options)

def _has_options(layer_norm: Optional[Sequence[Tensor]], masks: Optional[reference.LayerMasks],
                 zoneout: float) -> bool:
    return (layer_norm is not None or zoneout != 0.0
            or (masks is not None and any(m is not None for m in masks)))


def _options_kernels(input: Tensor) -> bool:
    """Whether the fused option operators run this call: on the CPU float32, float64 and
    bfloat16; on CUDA (and in the SIMT emulator) float32, float64, float16 and bfloat16.
    The half types run on float32 copies."""
    return runs_kernels(input)


def _in_float32(fn: Callable, *args: Any) -> tuple:
    """``fn`` on float32 copies of the float16/bfloat16 tensors among ``args`` (lists inside
    too), its tensor results rounded back to the input's dtype (the first argument's): the
    option operators' half-type form (float32 arithmetic and state, as the other layers'
    half-type kernels keep). Differentiable."""
    dtype = args[0].dtype

    def up(a: Any) -> Any:
        if isinstance(a, Tensor) and a.dtype in _HALF_DTYPES:
            return a.float()
        if isinstance(a, (list, tuple)) and not isinstance(a, reference.LayerMasks):
            return type(a)(up(t) for t in a)
        return a
    return tuple(o.to(dtype) for o in fn(*(up(a) for a in args)))


def _option_names(layer_norm, masks, zoneout) -> str:
    names = []
    if layer_norm is not None:
        names.append("layer_norm")
    if zoneout != 0.0 or (masks is not None and (masks.zoneout_h is not None
                                                 or masks.zoneout_c is not None)):
        names.append("zoneout")
    if masks is not None and masks.recurrent is not None:
        names.append("recurrent_dropout")
    if masks is not None and masks.weight is not None:
        names.append("weight_dropout")
    return ", ".join(names)


def _refuse_export(kind: str, layer_norm, masks, zoneout) -> None:
    raise NotImplementedError(
        f"rnnfast: a {kind} layer with {_option_names(layer_norm, masks, zoneout)} has no "
        "ONNX or TorchScript form (torch.nn has no such layer, and the standard ONNX "
        f"{kind.upper()} node has no such option); export a model without these options")


def _workspace_cols(kind: str, layer_norm: bool, hidden) -> Any:
    if kind == "lstm":
        return 13 * hidden + 3 if layer_norm else 5 * hidden
    return 10 * hidden + 2 if layer_norm else 4 * hidden


def _masks_for(input: Tensor, masks: Optional[reference.LayerMasks], zoneout: float) -> tuple:
    """(recurrent mask in the input's dtype, zoneout h, zoneout c, evaluation zoneout) for the
    operators: with a training zoneout mask, states without one do not zone out (the
    evaluation form's p is the reference's only when no zoneout mask is given)."""
    if masks is None:
        return None, None, None, zoneout
    rec = None if masks.recurrent is None else masks.recurrent.to(input.dtype)
    if masks.zoneout_h is not None or masks.zoneout_c is not None:
        zoneout = 0.0
    return rec, masks.zoneout_h, masks.zoneout_c, zoneout


def _lstm_options_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                        layer_norm, masks, zoneout):
    """:func:`lstm_layer` with layer normalisation, zoneout or dropouts."""
    zoneout = reference._check_probability("zoneout", zoneout)
    ln = tuple(layer_norm) if layer_norm is not None else (None, None, None, None)
    path = _path(input, (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *ln))
    if path in (_ONNX, _TRACE):
        _refuse_export("lstm", layer_norm, masks, zoneout)
    if path == _COMPOSITE or not _options_kernels(input):
        return reference.lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                    reverse, layer_norm=layer_norm, masks=masks,
                                    zoneout=zoneout)
    if input.dtype in _HALF_DTYPES:
        return _in_float32(lambda *a: _lstm_options_layer(*a, masks, zoneout), input, hx, cx,
                           w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, layer_norm)
    if masks is not None:
        reference._check_layer_masks(masks, input, (hx, cx), w_hh, batch_sizes)
        if masks.weight is not None:  # DropConnect: the layer runs on the masked weight
            w_hh = w_hh * masks.weight.to(w_hh.dtype)
    rec, zh, zc, zoneout = _masks_for(input, masks, zoneout)
    need_workspace = _needs_grad((input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *ln))
    out, hy, cy, _ws, _cells = _ops().lstm_options_forward(
        input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *ln, rec, zh, zc, zoneout, batch_sizes,
        reverse, need_workspace)
    return out, hy, cy


def _gru_options_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, layer_norm,
                       masks, zoneout):
    """:func:`gru_layer` with layer normalisation, zoneout or dropouts."""
    zoneout = reference._check_probability("zoneout", zoneout)
    ln = tuple(layer_norm) if layer_norm is not None else (None, None)
    path = _path(input, (input, hx, w_ih, w_hh, b_ih, b_hh, *ln))
    if path in (_ONNX, _TRACE):
        _refuse_export("gru", layer_norm, masks, zoneout)
    if path == _COMPOSITE or not _options_kernels(input):
        return reference.gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                                   layer_norm=layer_norm, masks=masks, zoneout=zoneout)
    if input.dtype in _HALF_DTYPES:
        return _in_float32(lambda *a: _gru_options_layer(*a, masks, zoneout), input, hx, w_ih,
                           w_hh, b_ih, b_hh, batch_sizes, reverse, layer_norm)
    if masks is not None:
        reference._check_layer_masks(masks, input, (hx,), w_hh, batch_sizes)
        if masks.weight is not None:
            w_hh = w_hh * masks.weight.to(w_hh.dtype)
    rec, zh, _zc, zoneout = _masks_for(input, masks, zoneout)
    need_workspace = _needs_grad((input, hx, w_ih, w_hh, b_ih, b_hh, *ln))
    out, hy, _ws = _ops().gru_options_forward(input, hx, w_ih, w_hh, b_ih, b_hh, *ln, rec, zh,
                                             zoneout, batch_sizes, reverse, need_workspace)
    return out, hy


def _register_options(ns: str) -> None:
    """Fake kernels and autograd of the option operators of namespace ``ns``."""
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::lstm_options_forward")
    def _lstm_options_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh,
                                   ln_c, ln_c_bias, recurrent_mask, zoneout_h, zoneout_c,
                                   zoneout, batch_sizes, reverse, need_workspace):
        hidden = w_ih.shape[0] // 4
        out_size = w_hr.shape[0] if w_hr is not None else hidden
        n = _rows(input, batch_sizes)
        cols = _workspace_cols("lstm", ln_hh is not None, hidden)
        return (input.new_empty((*input.shape[:-1], out_size)), hx.new_empty(hx.shape),
                cx.new_empty(cx.shape),
                input.new_empty((n, cols) if need_workspace else (0,)),
                input.new_empty((n, hidden) if need_workspace else (0,)))

    @torch.library.register_fake(f"{ns}::lstm_options_backward")
    def _lstm_options_backward_fake(grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh,
                                    w_hr, ln_ih, ln_hh, ln_c, ln_c_bias, recurrent_mask,
                                    zoneout_h, zoneout_c, zoneout, output, workspace, cells,
                                    batch_sizes, reverse, has_bias, need_grad_input):
        def opt(t):
            return input.new_empty(t.shape) if t is not None else input.new_empty((0,))
        return [input.new_empty(input.shape if need_grad_input else (0,)),
                hx.new_empty(hx.shape), cx.new_empty(cx.shape), w_ih.new_empty(w_ih.shape),
                w_hh.new_empty(w_hh.shape),
                input.new_empty((w_ih.shape[0],) if has_bias else (0,)), opt(w_hr), opt(ln_ih),
                opt(ln_hh), opt(ln_c), opt(ln_c_bias)]

    def _lstm_setup(ctx, inputs, output) -> None:
        (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_bias, rec, zh, zc,
         zoneout, batch_sizes, reverse, _need_workspace) = inputs
        out, _hy, _cy, ws, cells = output
        _save(ctx, (input, hx, cx, w_ih, w_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_bias, rec, zh, zc,
                    out, ws, cells, batch_sizes), reverse, b_ih)
        ctx.zoneout = zoneout

    def _lstm_backward(ctx, grad_output, grad_hy, grad_cy, _g_ws, _g_cells):
        (input, hx, cx, w_ih, w_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_bias, rec, zh, zc, out, ws,
         cells, batch_sizes) = ctx.saved_tensors
        g = ops.lstm_options_backward(
            grad_output, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, w_hr, ln_ih, ln_hh, ln_c,
            ln_c_bias, rec, zh, zc, ctx.zoneout, out, ws, cells, batch_sizes, ctx.reverse,
            ctx.has_bias, ctx.needs_input_grad[0])
        bias = g[5] if ctx.has_bias else None
        ln = ln_hh is not None
        return _input_grads(ctx, g[0], g[1], g[2], g[3], g[4], bias, bias,
                            g[6] if w_hr is not None else None, *(
                                (g[7], g[8], g[9], g[10]) if ln else (None,) * 4))

    _register_autograd(ns, "lstm_options_forward", _lstm_backward, _lstm_setup)

    @torch.library.register_fake(f"{ns}::gru_options_forward")
    def _gru_options_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh,
                                  recurrent_mask, zoneout_h, zoneout, batch_sizes, reverse,
                                  need_workspace):
        hidden = w_ih.shape[0] // 3
        n = _rows(input, batch_sizes)
        cols = _workspace_cols("gru", ln_hh is not None, hidden)
        return (input.new_empty((*input.shape[:-1], hidden)), hx.new_empty(hx.shape),
                input.new_empty((n, cols) if need_workspace else (0,)))

    @torch.library.register_fake(f"{ns}::gru_options_backward")
    def _gru_options_backward_fake(grad_output, grad_hy, input, hx, w_ih, w_hh, ln_ih, ln_hh,
                                   recurrent_mask, zoneout_h, zoneout, output, workspace,
                                   batch_sizes, reverse, has_bias, need_grad_input):
        def opt(t):
            return input.new_empty(t.shape) if t is not None else input.new_empty((0,))
        bias = (w_ih.shape[0],) if has_bias else (0,)
        return [input.new_empty(input.shape if need_grad_input else (0,)),
                hx.new_empty(hx.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
                input.new_empty(bias), input.new_empty(bias), opt(ln_ih), opt(ln_hh)]

    def _gru_setup(ctx, inputs, output) -> None:
        (input, hx, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, rec, zh, zoneout, batch_sizes, reverse,
         _need_workspace) = inputs
        out, _hy, ws = output
        _save(ctx, (input, hx, w_ih, w_hh, ln_ih, ln_hh, rec, zh, out, ws, batch_sizes), reverse,
              b_ih)
        ctx.zoneout = zoneout

    def _gru_backward(ctx, grad_output, grad_hy, _g_ws):
        input, hx, w_ih, w_hh, ln_ih, ln_hh, rec, zh, out, ws, batch_sizes = ctx.saved_tensors
        g = ops.gru_options_backward(grad_output, grad_hy, input, hx, w_ih, w_hh, ln_ih, ln_hh,
                                     rec, zh, ctx.zoneout, out, ws, batch_sizes, ctx.reverse,
                                     ctx.has_bias, ctx.needs_input_grad[0])
        b_ih, b_hh = (g[4], g[5]) if ctx.has_bias else (None, None)
        ln = ln_hh is not None
        return _input_grads(ctx, g[0], g[1], g[2], g[3], b_ih, b_hh,
                            *((g[6], g[7]) if ln else (None, None)))

    _register_autograd(ns, "gru_options_forward", _gru_backward, _gru_setup)


_register_options("rnnfast")

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

from typing import Any, Optional, Sequence

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from . import _C  # noqa: F401  (loads the library: registers torch.ops.rnnfast.*)
from . import autocast, reference, vmap

__all__ = ["lstm_layer", "lstm_cell", "gru_layer", "rnn_layer", "runs_kernels"]

_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
#: torch.func transforms under which the fused operators cannot run (see runs_composite).
_DIFFERENTIATING = (torch._C._functorch.TransformType.Jvp,
                    torch._C._functorch.TransformType.Grad)

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
    in float32), the input's dtype otherwise."""
    return t.new_empty(shape, dtype=torch.float32 if t.dtype in _HALF_DTYPES else t.dtype)


def _rows(input: Tensor, batch_sizes: Optional[Tensor]) -> Any:
    return input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]


def _saved_fakes(kind: str, input: Tensor, batch_sizes: Optional[Tensor], hidden,
                 need_workspace: bool) -> list:
    """Fakes of the buffers forward saves for backward (csrc/core/cells.h)."""
    n = _rows(input, batch_sizes)
    return [_acc_like(input, (n, cols * hidden) if need_workspace else (0,))
            for _name, cols in CELL_SPECS[kind]["saved"]]


def _traced() -> bool:
    """Whether ``torch.jit.trace`` (not the ONNX exporter's trace) records this call:
    then the layers call scripted functions that decide ``need_workspace`` in the graph
    (a constant there would be the trace-time grad mode's)."""
    return (torch.jit.is_tracing() and _namespace == "rnnfast"
            and not torch.onnx.is_in_onnx_export())


def runs_composite(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether this call must run the plain-torch code of :mod:`rnnfast.reference` (same
    maths, differentiable by any means) instead of the fused operators: forward-mode AD
    watches it (one of ``tensors`` carries a tangent at the current
    ``torch.autograd.forward_ad`` dual level), or a differentiating ``torch.func``
    transform is active (``jvp``, ``jacfwd``, ``hessian``; ``grad``, ``vjp``, ``jacrev``).

    The operators have no forward-mode formula, and torch runs the autograd formula of an
    operator defined in C++ only under ordinary autograd, not under ``torch.func``'s grad
    transforms. Every other call (``vmap`` included) pays two cheap checks and runs the
    operators; so does everything ``torch.compile`` traces.
    """
    if torch.compiler.is_compiling():
        return False
    if _fwad._current_level >= 0 and any(
            t is not None and _fwad.unpack_dual(t).tangent is not None for t in tensors):
        return True
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    stack = torch._C._functorch.get_interpreter_stack()
    return any(i.key() in _DIFFERENTIATING for i in stack)


try:
    from torch.onnx._internal.exporter import _flags as _onnx_flags
except ImportError:  # another torch version: the public test below
    _onnx_flags = None


def _onnx_dynamo() -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` is capturing this call (with any of
    its capture strategies): then the layers emit the standard ONNX nodes (rnnfast/onnx.py)."""
    if _namespace != "rnnfast":
        return False
    if _onnx_flags is not None:
        # The dynamo exporter's own flag: the TorchScript-based exporter sets another, and
        # torch.onnx.is_in_onnx_export() reads as False to the exporter's strict capture.
        return bool(_onnx_flags._is_onnx_exporting)
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


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

    torch.library.register_autograd(f"{ns}::lstm_forward", _lstm_backward,
                                    setup_context=_lstm_setup_context)

    # ------------------------------------------------------------------- GRU
    @torch.library.register_fake(f"{ns}::gru_forward")
    def _gru_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                          need_workspace):
        hidden = w_ih.shape[0] // gru_g
        output = input.new_empty((*input.shape[:-1], hidden))
        (workspace,) = _saved_fakes("gru", input, batch_sizes, hidden, need_workspace)
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

    torch.library.register_autograd(f"{ns}::gru_forward", _gru_backward,
                                    setup_context=_gru_setup_context)

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

    torch.library.register_autograd(f"{ns}::rnn_forward", _rnn_backward,
                                    setup_context=_rnn_setup_context)

    autocast.register(ns)  # AutocastCPU/AutocastCUDA kernels of the forward operators
    vmap.register(ns)  # batching rules of the forward operators


_register("rnnfast")


# --------------------------------------------------------------------------- layers

def lstm_layer(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
               w_hr: Optional[Tensor] = None, batch_sizes: Optional[Tensor] = None,
               reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
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

    Returns:
        ``(output, h_n, c_n)``: output (T, B, P) or (N, P); h_n (B, P); c_n (B, H).
        Differentiable with respect to every tensor argument but ``batch_sizes``.
    """
    if _onnx_dynamo():
        from .onnx import dynamo_lstm_layer
        return dynamo_lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                 reverse)
    if _traced():  # need_workspace decided in the traced graph, at run time
        from ._torchscript import traced_lstm_layer
        return traced_lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                                 reverse)
    if runs_composite((input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)):
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
        batch_sizes = torch.tensor([input.shape[0]], dtype=torch.int64)
        _, h, c = lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, batch_sizes=batch_sizes)
    else:
        _, h, c = lstm_layer(input.unsqueeze(0), hx, cx, w_ih, w_hh, b_ih, b_hh)
    return h, c


def gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              batch_sizes: Optional[Tensor] = None, reverse: bool = False
              ) -> tuple[Tensor, Tensor]:
    """Run one GRU layer in one direction over a whole sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) with ``batch_sizes``.
        hx: (B, H) initial hidden state.
        w_ih, w_hh, b_ih, b_hh: the layer's parameters, torch.nn.GRU layout
            (gates r, z, n).
        batch_sizes: (T,) int64 CPU tensor of a PackedSequence, or None.
        reverse: run from the last step to the first.

    Returns:
        ``(output, h_n)``: output (T, B, H) or (N, H); h_n (B, H).
    """
    if _onnx_dynamo():
        from .onnx import dynamo_gru_layer
        return dynamo_gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    if _traced():
        from ._torchscript import traced_gru_layer
        return traced_gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    if runs_composite((input, hx, w_ih, w_hh, b_ih, b_hh)):
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
    if _onnx_dynamo():
        from .onnx import dynamo_rnn_layer
        return dynamo_rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                                nonlinearity == "relu")
    if runs_composite((input, hx, w_ih, w_hh, b_ih, b_hh)):
        return reference.rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                                   nonlinearity)
    return _ops().rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                              nonlinearity == "relu")

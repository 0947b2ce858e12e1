"""ONNX export of rnnfast's layers and cells to the standard ONNX ``LSTM``, ``GRU`` and
``RNN`` nodes, with both of torch's exporters.

Each rnnfast operator call (one layer, one direction) becomes one standard ONNX node
(default domain) with ``direction`` ``"forward"`` or ``"reverse"``; the weights are
reordered to ONNX's gate order (LSTM ``iofc`` from torch's ``ifgo``, GRU ``zrh`` from
torch's ``rzn``, with ``linear_before_reset=1``, which is torch's GRU) and the two biases
concatenated as ``[Wb, Rb]``. Sequence length and batch stay dynamic.

* ``torch.onnx.export(model, args, dynamo=False)`` (the TorchScript-based exporter): the
  symbolic functions of ``rnnfast::lstm_forward``, ``gru_forward`` and ``rnn_forward`` are
  registered (``torch.onnx.register_custom_op_symbolic``) when rnnfast is imported.
* ``torch.onnx.export(model, args, dynamo=True)``: while the exporter captures the model,
  rnnfast's layers emit the ONNX nodes themselves through ``torch.onnx.ops.symbolic_multi_out``
  (torch's public way for a model to emit ONNX operators), so a plain export needs
  nothing more. A program that already contains rnnfast's operators (from
  ``torch.export.export`` run outside the ONNX exporter) exports with
  ``custom_translation_table=rnnfast.onnx_translation_table()`` (onnxscript functions).

``PackedSequence`` input exports with ``dynamo=False`` for unidirectional layers: torch's
exporter replaces the packed data by the padded tensor and the batch sizes by the lengths
(``sequence_lens``), as it does for torch.nn's layers.

Not expressible, refused with :class:`OnnxExportError` at export time: LSTM with
``proj_size > 0`` (the ONNX LSTM node has no projection); a bidirectional layer on a
``PackedSequence`` with ``dynamo=False``, and any layer on a ``PackedSequence`` with
``dynamo=True``; a layer or cell with options beyond torch.nn (``layer_norm``,
``zoneout``, ``recurrent_dropout``, ``weight_dropout``: the standard nodes have none),
with either exporter (:func:`refuse_options`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

__all__ = ["OnnxExportError", "onnx_translation_table", "register_symbolics",
           "refuse_options"]

#: Gate blocks of torch's layout, in ONNX's order: LSTM torch i,f,g,o -> ONNX i,o,f,c;
#: GRU torch r,z,n -> ONNX z,r,h; RNN one block.
_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2), "RNN": (0,)}
_OPSET = 9  # the symbolic functions are registered for this opset and all later ones


class OnnxExportError(RuntimeError):
    """A model uses a feature the standard ONNX recurrent nodes cannot express."""


def _refuse(kind: str, has_proj: bool, packed: bool) -> None:
    if has_proj:
        raise OnnxExportError(
            "rnnfast: cannot export an LSTM with proj_size > 0 to ONNX: the standard ONNX "
            "LSTM node has no projection (torch.nn.LSTM with proj_size does not export "
            "either). Export the model without proj_size, or deploy it with "
            "torch.export / torch.jit.trace / torch.jit.script instead.")
    if packed:
        raise OnnxExportError(
            f"rnnfast: torch.onnx.export(..., dynamo=True) cannot export {kind} run on a "
            "PackedSequence (torch.export cannot capture it; torch.nn's layers fail there "
            "too). Export with dynamo=False instead (a unidirectional layer's packed input "
            "becomes the ONNX node's sequence_lens), or export the model on the padded "
            "tensor, or deploy it with torch.jit.script, which keeps PackedSequence input.")


def refuse_packed(kind: str) -> None:
    """Raise :class:`OnnxExportError`: the dynamo exporter cannot take a layer run on a
    PackedSequence."""
    _refuse(kind, False, True)


def refuse_options(description: str, kind: str, options: list[str]) -> None:
    """Raise :class:`OnnxExportError`: the module ``description`` (e.g.
    ``rnnfast.LSTM(layer_norm=True)``) uses ``options`` beyond torch.nn, which the standard
    ONNX ``kind`` node cannot express."""
    raise OnnxExportError(
        f"{description} cannot be exported to ONNX: the standard ONNX {kind} node has no "
        f"{' or '.join(options)} (torch.nn.{kind} has none either). Export a model without "
        "these options, or run it with torch.compile / torch.export instead.")


def _gate_index(kind: str, rows: int) -> list[int]:
    """Row indices that reorder a (G*H, ...) weight or (G*H,) bias from torch's gate order
    to ONNX's."""
    order = _GATE_ORDER[kind]
    hidden = rows // len(order)
    return [g * hidden + j for g in order for j in range(hidden)]


# --------------------------------------------------------------------------- dynamo=True

def _onnx_weights(kind: str, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                  b_hh: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """ONNX's W (1, G*H, I), R (1, G*H, H) and B (1, 2*G*H) from torch's parameters."""
    index = torch.tensor(_gate_index(kind, w_ih.shape[0]), device=w_ih.device)

    def reorder(t: Tensor) -> Tensor:
        return t if kind == "RNN" else t.index_select(0, index)

    bias = None
    if b_ih is not None and b_hh is not None:
        bias = torch.cat([reorder(b_ih), reorder(b_hh)]).unsqueeze(0)
    return reorder(w_ih).unsqueeze(0), reorder(w_hh).unsqueeze(0), bias


def _emit(kind: str, input: Tensor, states: list[Tensor], w_ih: Tensor, w_hh: Tensor,
          b_ih: Optional[Tensor], b_hh: Optional[Tensor], reverse: bool,
          attrs: dict) -> list[Tensor]:
    hidden = w_hh.shape[1]
    w, r, b = _onnx_weights(kind, w_ih, w_hh, b_ih, b_hh)
    steps, batch = input.shape[0], input.shape[1]
    attrs = dict(attrs, hidden_size=hidden, direction="reverse" if reverse else "forward")
    n_out = 1 + len(states)
    outs = torch.onnx.ops.symbolic_multi_out(
        kind, [input, w, r, b, None, *(s.unsqueeze(0) for s in states)], attrs,
        dtypes=[input.dtype] * n_out,
        shapes=[(steps, 1, batch, hidden)] + [(1, batch, hidden)] * (n_out - 1))
    return [outs[0].squeeze(1)] + [s.squeeze(0) for s in outs[1:]]


def dynamo_lstm_layer(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
                      b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                      batch_sizes: Optional[Tensor], reverse: bool
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer as a standard ONNX ``LSTM`` node (during ``torch.onnx.export(...,
    dynamo=True)``)."""
    _refuse("LSTM", w_hr is not None, batch_sizes is not None)
    out, hy, cy = _emit("LSTM", input, [hx, cx], w_ih, w_hh, b_ih, b_hh, reverse, {})
    return out, hy, cy


def dynamo_gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                     b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                     batch_sizes: Optional[Tensor], reverse: bool) -> tuple[Tensor, Tensor]:
    """One GRU layer as a standard ONNX ``GRU`` node (``linear_before_reset=1``)."""
    _refuse("GRU", False, batch_sizes is not None)
    out, hy = _emit("GRU", input, [hx], w_ih, w_hh, b_ih, b_hh, reverse,
                    {"linear_before_reset": 1})
    return out, hy


def dynamo_rnn_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                     b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                     batch_sizes: Optional[Tensor], reverse: bool, relu: bool
                     ) -> tuple[Tensor, Tensor]:
    """One Elman RNN layer as a standard ONNX ``RNN`` node."""
    _refuse("RNN", False, batch_sizes is not None)
    out, hy = _emit("RNN", input, [hx], w_ih, w_hh, b_ih, b_hh, reverse,
                    {"activations": ["Relu" if relu else "Tanh"]})
    return out, hy


# --------------------------------------------------------------------------- dynamo=False

def _symbolic_node(g: Any, kind: str, input: Any, states: list, w_ih: Any, w_hh: Any,
                   b_ih: Any, b_hh: Any, batch_sizes: Any, reverse: Any, attrs: dict) -> list:
    from torch.onnx import symbolic_helper as sh

    reverse = sh._parse_arg(reverse, "b")
    packed = not sh._is_none(batch_sizes)
    if packed and reverse:
        raise OnnxExportError(
            f"rnnfast: cannot export a bidirectional {kind} run on a PackedSequence to ONNX "
            "(torch's exporter turns packed input into sequence_lens for one node per "
            "layer; rnnfast's two directions are two nodes). Export the model on the "
            "padded tensor instead, or deploy it with torch.jit.script, which keeps "
            "PackedSequence input.")

    sizes = sh._get_tensor_sizes(w_hh)
    if not sizes or sizes[0] is None or sizes[1] is None:
        raise OnnxExportError(f"rnnfast: cannot export the {kind}: the shape of its weights "
                              "is unknown to the exporter")
    rows, hidden = sizes[0], sizes[1]

    def reorder(w):
        if kind == "RNN":
            return w
        index = g.op("Constant", value_t=torch.tensor(_gate_index(kind, rows)))
        return g.op("Gather", w, index, axis_i=0)

    inputs = [input, sh._unsqueeze_helper(g, reorder(w_ih), [0]),
              sh._unsqueeze_helper(g, reorder(w_hh), [0])]
    if sh._is_none(b_ih) or sh._is_none(b_hh):
        inputs.append(_missing(g))
    else:
        inputs.append(sh._unsqueeze_helper(
            g, g.op("Concat", reorder(b_ih), reorder(b_hh), axis_i=0), [0]))
    # A packed input: torch's exporter replaces the packed data by the padded tensor and
    # batch_sizes by the lengths (its PackPadded pass), as for torch.nn's layers.
    inputs.append(batch_sizes if packed else _missing(g))  # sequence_lens
    inputs += [sh._unsqueeze_helper(g, s, [0]) for s in states]
    direction = "reverse" if reverse else "forward"
    outs = g.op(kind, *inputs, outputs=1 + len(states), hidden_size_i=hidden,
                direction_s=direction, **attrs)
    return [sh._squeeze_helper(g, outs[0], [1])] + [sh._squeeze_helper(g, s, [0])
                                                    for s in outs[1:]]


def _missing(g: Any) -> Any:
    """An absent optional input."""
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


def _empty(g: Any) -> Any:
    """The saved-for-backward outputs, empty in an exported (inference) graph."""
    return g.op("Constant", value_t=torch.zeros(0))


def _lstm_symbolic(g, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse,
                   need_workspace):
    from torch.onnx import symbolic_helper as sh

    _refuse("LSTM", not sh._is_none(w_hr), False)
    out, hy, cy = _symbolic_node(g, "LSTM", input, [hx, cx], w_ih, w_hh, b_ih, b_hh,
                                 batch_sizes, reverse, {})
    return out, hy, cy, _empty(g), _empty(g)


def _gru_symbolic(g, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace):
    out, hy = _symbolic_node(g, "GRU", input, [hx], w_ih, w_hh, b_ih, b_hh, batch_sizes,
                             reverse, {"linear_before_reset_i": 1})
    return out, hy, _empty(g)


def _rnn_symbolic(g, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu):
    from torch.onnx import symbolic_helper as sh

    activation = "Relu" if sh._parse_arg(relu, "b") else "Tanh"
    out, hy = _symbolic_node(g, "RNN", input, [hx], w_ih, w_hh, b_ih, b_hh, batch_sizes,
                             reverse, {"activations_s": [activation]})
    return out, hy


def register_symbolics(namespace: str = "rnnfast") -> None:
    """Register the TorchScript-based exporter's symbolic functions for the operators of
    ``namespace`` (done for ``rnnfast`` on import)."""
    for name, fn in (("lstm_forward", _lstm_symbolic), ("gru_forward", _gru_symbolic),
                     ("rnn_forward", _rnn_symbolic)):
        torch.onnx.register_custom_op_symbolic(f"{namespace}::{name}", fn, _OPSET)


# ------------------------------------------------------------- translation table (onnxscript)

def onnx_translation_table() -> dict[Callable, Callable]:
    """Translations of rnnfast's operators for ``torch.onnx.export(..., dynamo=True)``.

    Not needed to export a model (rnnfast's layers emit the standard nodes themselves while
    the ONNX exporter captures them); needed for a program that already contains the
    operators, e.g. one made by ``torch.export.export`` outside the exporter::

        ep = torch.export.export(model, (x,))
        torch.onnx.export(ep, dynamo=True,
                          custom_translation_table=rnnfast.onnx_translation_table())

    Returns:
        ``{torch.ops.rnnfast.lstm_forward.default: fn, ...gru_forward..., ...rnn_forward...}``,
        each ``fn`` an onnxscript (trace-mode) function building one standard ONNX node.
    """
    from onnxscript import opset18 as op

    def node(kind, input, states, w_ih, w_hh, b_ih, b_hh, reverse, **attrs):
        rows, hidden = w_hh.shape[0], w_hh.shape[1]

        def reorder(w):
            if kind == "RNN":
                return w
            return op.Gather(w, op.Constant(value_ints=_gate_index(kind, rows)), axis=0)

        bias = None
        if b_ih is not None and b_hh is not None:
            bias = op.Unsqueeze(op.Concat(reorder(b_ih), reorder(b_hh), axis=0), [0])
        outs = getattr(op, kind)(
            input, op.Unsqueeze(reorder(w_ih), [0]), op.Unsqueeze(reorder(w_hh), [0]), bias,
            None, *(op.Unsqueeze(s, [0]) for s in states), hidden_size=hidden,
            direction="reverse" if reverse else "forward", **attrs)
        return [op.Squeeze(outs[0], [1])] + [op.Squeeze(s, [0]) for s in outs[1:]]

    def empty(like):  # the saved-for-backward outputs: (0,) in an inference graph
        return op.Slice(op.Reshape(like, [-1]), [0], [0])

    def lstm_forward(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
                     batch_sizes=None, reverse: bool = False, need_workspace: bool = False):
        _refuse("LSTM", w_hr is not None, batch_sizes is not None)
        out, hy, cy = node("LSTM", input, [hx, cx], w_ih, w_hh, b_ih, b_hh, reverse)
        return out, hy, cy, empty(input), empty(input)

    def gru_forward(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None,
                    reverse: bool = False, need_workspace: bool = False):
        _refuse("GRU", False, batch_sizes is not None)
        out, hy = node("GRU", input, [hx], w_ih, w_hh, b_ih, b_hh, reverse,
                       linear_before_reset=1)
        return out, hy, empty(input)

    def rnn_forward(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None,
                    reverse: bool = False, relu: bool = False):
        _refuse("RNN", False, batch_sizes is not None)
        return tuple(node("RNN", input, [hx], w_ih, w_hh, b_ih, b_hh, reverse,
                          activations=["Relu" if relu else "Tanh"]))

    ops = torch.ops.rnnfast
    return {ops.lstm_forward.default: lstm_forward, ops.gru_forward.default: gru_forward,
            ops.rnn_forward.default: rnn_forward}


register_symbolics()

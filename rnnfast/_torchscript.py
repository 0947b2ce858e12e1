"""TorchScript support: ``torch.jit.trace`` and ``torch.jit.script`` of rnnfast's layers.

Both run rnnfast's own operators (``torch.ops.rnnfast.*``), not torch.nn's kernels.

* **Trace.** Whether forward saves the workspace backward needs (``need_workspace``) is
  decided from grad mode and ``requires_grad`` at call time. A traced graph would freeze
  that decision as a constant (and ``torch.jit.trace``'s check, which re-runs the function
  in another grad mode, failed on it), so while tracing the layers call the scripted
  per-layer functions below, which make the decision inside the graph, at run time.
* **Script.** rnnfast's layers and cells derive from the classes below, whose methods are
  the TorchScript path: torch.nn's input handling, with the loop over layers and directions
  calling rnnfast's operators. Their ``forward`` runs the eager code unless scripted. A
  layer scripted on its own is compiled as a twin with one ``forward`` for tensor input
  (:func:`scriptable`), since a scripted module whose forward is overloaded has no
  ``forward`` to call.

* **Options beyond torch.nn** (``layer_norm``, ``zoneout``, ``recurrent_dropout``,
  ``weight_dropout``): refused by both, with an error naming them
  (:func:`refuse_options`). The TorchScript path is torch.nn's recurrence, which has none
  of them, and a trace would freeze training masks into the graph.

This module must stay TorchScript-compilable: no ``from __future__ import annotations``,
``typing`` annotations only.
"""
import copy
import sys
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, _VF
from torch.nn.utils.rnn import PackedSequence

__all__ = ["lstm_layer", "gru_layer", "rnn_layer", "traced_lstm_layer", "traced_gru_layer",
           "LSTMScript", "OneStateScript", "LSTMCellScript", "GRUCellScript", "RNNCellScript",
           "scriptable", "refuse_options"]


def _grad(t: Optional[Tensor]) -> bool:
    if t is None:
        return False
    return t.requires_grad


def lstm_layer(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
               batch_sizes: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer and direction (see :func:`rnnfast.ops.lstm_layer`), scriptable."""
    need_workspace = torch.is_grad_enabled() and (
        input.requires_grad or hx.requires_grad or cx.requires_grad or w_ih.requires_grad
        or w_hh.requires_grad or _grad(b_ih) or _grad(b_hh) or _grad(w_hr))
    out, hy, cy, _gates, _cells = torch.ops.rnnfast.lstm_forward(
        input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, need_workspace)
    return out, hy, cy


def gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool
              ) -> Tuple[Tensor, Tensor]:
    """One GRU layer and direction (see :func:`rnnfast.ops.gru_layer`), scriptable."""
    need_workspace = torch.is_grad_enabled() and (
        input.requires_grad or hx.requires_grad or w_ih.requires_grad or w_hh.requires_grad
        or _grad(b_ih) or _grad(b_hh))
    out, hy, _workspace = torch.ops.rnnfast.gru_forward(
        input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace)
    return out, hy


def rnn_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool, relu: bool
              ) -> Tuple[Tensor, Tensor]:
    """One Elman RNN layer and direction (see :func:`rnnfast.ops.rnn_layer`), scriptable."""
    out, hy = torch.ops.rnnfast.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                                            reverse, relu)
    return out, hy


def refuse_options(description: str, action: str, options: List[str]) -> None:
    """Raise NotImplementedError: the module ``description`` (e.g.
    ``rnnfast.LSTM(layer_norm=True)``) has ``options`` beyond torch.nn, and cannot be
    ``action`` (``"compiled with torch.jit.script"``, ``"traced with torch.jit.trace"``)."""
    raise NotImplementedError(
        f"{description} cannot be {action}: TorchScript runs torch.nn's recurrence, which "
        f"has no {' or '.join(options)} (and a trace would freeze training-mode masks into "
        "the graph). Use torch.compile or torch.export instead, or a model without these "
        "options.")


_scripted: dict = {}


def _script(fn):
    if fn not in _scripted:
        _scripted[fn] = torch.jit.script(fn)
    return _scripted[fn]


def traced_lstm_layer(input: Tensor, hx: Tensor, cx: Tensor, w_ih: Tensor, w_hh: Tensor,
                      b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                      batch_sizes: Optional[Tensor], reverse: bool
                      ) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`lstm_layer` as a scripted function, for ``torch.jit.trace`` to record as a
    call (so ``need_workspace`` is computed in the traced graph)."""
    return _script(lstm_layer)(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes,
                               reverse)


def traced_gru_layer(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                     b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                     batch_sizes: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor]:
    """:func:`gru_layer` as a scripted function, for ``torch.jit.trace``."""
    return _script(gru_layer)(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)


# --------------------------------------------------------------------- script: layers

def _torch_runs(input: Tensor) -> bool:
    """Whether torch's implementation runs ``input`` (no rnnfast kernel: float16 on the
    CPU), as :func:`rnnfast.ops.runs_kernels` decides in eager mode."""
    return input.device.type == "cpu" and input.dtype == torch.float16


def _stack(mode: str, input: Tensor, hx: Tensor, cx: Optional[Tensor], weights: List[Tensor],
           has_bias: bool, has_proj: bool, num_layers: int, bidirectional: bool, dropout: float,
           training: bool, batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """Layers × directions over time-major or packed input, one operator call each (the
    loop of :func:`rnnfast.functional.lstm`). ``weights`` is the module's flat parameter list.
    Returns ``(output, h_n, c_n)``; ``c_n`` is ``h_n`` for GRU and RNN."""
    num_directions = 2 if bidirectional else 1
    stride = 4 if has_bias else 2
    if has_proj:
        stride += 1
    hs: List[Tensor] = []
    cs: List[Tensor] = []
    x = input
    for layer in range(num_layers):
        if layer > 0 and dropout > 0.0 and training:
            x = F.dropout(x, dropout, True)
        outputs: List[Tensor] = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            base = k * stride
            b_ih: Optional[Tensor] = None
            b_hh: Optional[Tensor] = None
            if has_bias:
                b_ih = weights[base + 2]
                b_hh = weights[base + 3]
            reverse = direction == 1
            if mode == "LSTM":
                w_hr: Optional[Tensor] = None
                if has_proj:
                    w_hr = weights[base + stride - 1]
                assert cx is not None
                y, h, c = lstm_layer(x, hx[k], cx[k], weights[base], weights[base + 1], b_ih,
                                     b_hh, w_hr, batch_sizes, reverse)
                cs.append(c)
            elif mode == "GRU":
                y, h = gru_layer(x, hx[k], weights[base], weights[base + 1], b_ih, b_hh,
                                 batch_sizes, reverse)
            else:
                y, h = rnn_layer(x, hx[k], weights[base], weights[base + 1], b_ih, b_hh,
                                 batch_sizes, reverse, mode == "RNN_RELU")
            outputs.append(y)
            hs.append(h)
        x = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
    h_n = torch.stack(hs, 0)
    return x, h_n, torch.stack(cs, 0) if mode == "LSTM" else h_n


def _run_padded(mode: str, input: Tensor, hx: Tensor, cx: Optional[Tensor],
                weights: List[Tensor], has_bias: bool, has_proj: bool, num_layers: int,
                bidirectional: bool, dropout: float, training: bool, batch_first: bool,
                batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    if batch_sizes is None and batch_first:
        input = input.transpose(0, 1)
    output, h_n, c_n = _stack(mode, input, hx, cx, weights, has_bias, has_proj, num_layers,
                              bidirectional, dropout, training, batch_sizes)
    if batch_sizes is None and batch_first:
        output = output.transpose(0, 1)
    return output, h_n, c_n


class LSTMScript:
    """The TorchScript path of rnnfast.LSTM (a base class of it): torch.nn.LSTM's input
    handling, rnnfast's operators. rnnfast.LSTM.forward calls it when scripted."""

    def _zeros(self, input: Tensor, batch: int) -> Tuple[Tensor, Tensor]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (torch.zeros(layers, batch, real_hidden_size, dtype=input.dtype,
                            device=input.device),
                torch.zeros(layers, batch, self.hidden_size, dtype=input.dtype,
                            device=input.device))

    def _run_script(self, input: Tensor, hx: Tuple[Tensor, Tensor],
                    batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if _torch_runs(input):  # as rnnfast.ops.runs_kernels: torch's implementation
            states = [hx[0], hx[1]]
            if batch_sizes is None:
                result = _VF.lstm(input, states, self._flat_weights, self.bias,
                                  self.num_layers, float(self.dropout), self.training,
                                  self.bidirectional, self.batch_first)
            else:
                result = _VF.lstm(input, batch_sizes, states, self._flat_weights, self.bias,
                                  self.num_layers, float(self.dropout), self.training,
                                  self.bidirectional)
            return result[0], (result[1], result[2])
        output, h_n, c_n = _run_padded(
            "LSTM", input, hx[0], hx[1], self._flat_weights, self.bias, self.proj_size > 0,
            self.num_layers, self.bidirectional, float(self.dropout), self.training,
            self.batch_first, batch_sizes)
        return output, (h_n, c_n)

    def _forward_packed(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]]
                        ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is None:
            hx = self._zeros(data, int(batch_sizes[0]))
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data, hx, batch_sizes)
        output, hidden = self._run_script(data, hx, batch_sizes)
        return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices))

    def _forward_tensor(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]
                        ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            hx = self._zeros(input, input.size(0) if self.batch_first else input.size(1))
        else:
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but "
                                   f"got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        self.check_forward_args(input, hx, None)
        output, hidden = self._run_script(input, hx, None)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1))
        return output, hidden


class OneStateScript:
    """The TorchScript path of rnnfast.GRU and RNN (base class of both); their forward
    calls it when scripted."""

    def _zeros(self, input: Tensor, batch: int) -> Tensor:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        return torch.zeros(layers, batch, self.hidden_size, dtype=input.dtype,
                           device=input.device)

    def _run_script(self, input: Tensor, hx: Tensor, batch_sizes: Optional[Tensor]
                    ) -> Tuple[Tensor, Tensor]:
        if self.mode != "GRU" and self.mode != "RNN_TANH" and self.mode != "RNN_RELU":
            raise ValueError(f"Unknown mode {self.mode}")
        if _torch_runs(input):  # as rnnfast.ops.runs_kernels: torch's implementation
            args = (self._flat_weights, self.bias, self.num_layers, float(self.dropout),
                    self.training, self.bidirectional)
            if self.mode == "GRU":
                if batch_sizes is None:
                    result = _VF.gru(input, hx, *args, self.batch_first)
                else:
                    result = _VF.gru(input, batch_sizes, hx, *args)
            elif self.mode == "RNN_TANH":
                if batch_sizes is None:
                    result = _VF.rnn_tanh(input, hx, *args, self.batch_first)
                else:
                    result = _VF.rnn_tanh(input, batch_sizes, hx, *args)
            else:
                if batch_sizes is None:
                    result = _VF.rnn_relu(input, hx, *args, self.batch_first)
                else:
                    result = _VF.rnn_relu(input, batch_sizes, hx, *args)
            return result[0], result[1]
        output, h_n, _ = _run_padded(
            self.mode, input, hx, None, self._flat_weights, self.bias, False, self.num_layers,
            self.bidirectional, float(self.dropout), self.training, self.batch_first,
            batch_sizes)
        return output, h_n

    def _forward_packed(self, input: PackedSequence, hx: Optional[Tensor]
                        ) -> Tuple[PackedSequence, Tensor]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is None:
            hx = self._zeros(data, int(batch_sizes[0]))
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data, hx, batch_sizes)
        output, hidden = self._run_script(data, hx, batch_sizes)
        return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices))

    def _forward_tensor(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if input.dim() not in (2, 3):
            if self.mode == "GRU":
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            raise ValueError(
                f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            hx = self._zeros(input, input.size(0) if self.batch_first else input.size(1))
        else:
            want = 3 if is_batched else 2
            if hx.dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                                   f"{hx.dim()}-D tensor")
            if not is_batched:
                hx = hx.unsqueeze(1)
        self.check_forward_args(input, hx, None)
        output, hidden = self._run_script(input, hx, None)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, hidden


# --------------------------------------------------------------------- script: cells

class LSTMCellScript:
    """The TorchScript path of rnnfast.LSTMCell (a base class of it); its forward calls it
    when scripted."""

    def _script_forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]]
                        ) -> Tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            hx = (zeros, zeros)
        else:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0)) if not is_batched else hx
        if _torch_runs(input):
            h, c = _VF.lstm_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                 self.bias_hh)
        elif input.device.type == "cpu":
            # One step of B rows in the packed form, as rnnfast.ops.lstm_cell runs it under
            # CPU autocast (where torch.nn's LSTMCell keeps the state's dtype): the same
            # arithmetic as the padded form, and the same autocast rule as eager mode.
            batch_sizes = torch.full([1], input.size(0), dtype=torch.int64)
            _, h, c = lstm_layer(input, hx[0], hx[1], self.weight_ih, self.weight_hh,
                                 self.bias_ih, self.bias_hh, None, batch_sizes, False)
        else:
            _, h, c = lstm_layer(input.unsqueeze(0), hx[0], hx[1], self.weight_ih,
                                 self.weight_hh, self.bias_ih, self.bias_hh, None, None, False)
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCellScript:
    """The TorchScript path of rnnfast.GRUCell (a base class of it); its forward calls it
    when scripted."""

    def _script_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                             device=input.device)
        else:
            hx = hx.unsqueeze(0) if not is_batched else hx
        if _torch_runs(input):
            h = _VF.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                             self.bias_hh)
        else:
            _, h = gru_layer(input.unsqueeze(0), hx, self.weight_ih, self.weight_hh,
                             self.bias_ih, self.bias_hh, None, False)
        return h if is_batched else h.squeeze(0)


class RNNCellScript:
    """The TorchScript path of rnnfast.RNNCell (a base class of it); its forward calls it
    when scripted."""

    def _script_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        if self.nonlinearity != "tanh" and self.nonlinearity != "relu":
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                             device=input.device)
        else:
            hx = hx.unsqueeze(0) if not is_batched else hx
        if _torch_runs(input):
            if self.nonlinearity == "tanh":
                h = _VF.rnn_tanh_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh)
            else:
                h = _VF.rnn_relu_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                                      self.bias_hh)
        else:
            _, h = rnn_layer(input.unsqueeze(0), hx, self.weight_ih, self.weight_hh,
                             self.bias_ih, self.bias_hh, None, False, self.nonlinearity == "relu")
        return h if is_batched else h.squeeze(0)


_PREPARE_PASS = "call_prepare_scriptable_func_impl"
_warned_no_pass = False


def _scripted_on_its_own() -> bool:
    """Whether ``torch.jit.script`` was called on this module itself rather than on a model
    containing it: torch's preparation pass (``call_prepare_scriptable_func_impl``) starts
    with an empty memo and fills it as it descends. False, with a warning (once), when that
    pass is not found in the calling frames (another torch, or a direct call of
    ``__prepare_scriptable__``)."""
    global _warned_no_pass
    frame = sys._getframe(1)
    for _ in range(4):  # scriptable <- __prepare_scriptable__ <- torch's pass
        if frame is None:
            break
        if frame.f_code.co_name == _PREPARE_PASS:
            memo = frame.f_locals.get("memo")
            if isinstance(memo, dict):
                return len(memo) == 0
            break
        frame = frame.f_back
    if not _warned_no_pass:
        _warned_no_pass = True
        warnings.warn(
            f"rnnfast: torch.jit.script's preparation pass ({_PREPARE_PASS}, with its memo) "
            "was not found among the calling frames, so rnnfast cannot tell whether a layer "
            "is scripted on its own; it is compiled as it is, and a layer scripted on its own "
            "then has no callable forward (script a module that contains it instead).",
            UserWarning, stacklevel=3)
    return False


def _top_lstm_forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                      ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """Eager: :meth:`rnnfast.LSTM.forward`. Scripted: tensor input."""
    if not torch.jit.is_scripting():
        return type(self).__mro__[1].forward(self, input, hx)
    return self._forward_tensor(input, hx)


def _top_one_state_forward(self, input: Tensor, hx: Optional[Tensor] = None
                           ) -> Tuple[Tensor, Tensor]:
    """Eager: :meth:`rnnfast.GRU.forward` / :meth:`rnnfast.RNN.forward`. Scripted: tensor
    input."""
    if not torch.jit.is_scripting():
        return type(self).__mro__[1].forward(self, input, hx)
    return self._forward_tensor(input, hx)


_top_classes: dict = {}


def _top_class(cls: type) -> type:
    """The class of a layer scripted on its own: ``cls`` with one ``forward``, for tensor
    input (a scripted module whose forward is overloaded, as torch.nn's and rnnfast's
    layers' are, has no ``forward`` to call)."""
    if cls not in _top_classes:
        forward = _top_lstm_forward if issubclass(cls, LSTMScript) else _top_one_state_forward
        _top_classes[cls] = type(cls.__name__, (cls,), {
            "forward": forward, "__module__": __name__,
            "__qualname__": f"_ScriptedOnItsOwn{cls.__name__}"})
    return _top_classes[cls]


def scriptable(module: torch.nn.Module) -> torch.nn.Module:
    """What ``torch.jit.script`` compiles for an rnnfast layer or cell.

    rnnfast's layers and cells are themselves scriptable: their forward has torch.nn's
    overloads (tensor and ``PackedSequence`` input for the layers) and, when scripted, runs
    the TorchScript path of this module, which calls rnnfast's operators. So inside a model
    the module is compiled as it is. A layer scripted on its own is compiled as a twin
    (a shallow copy sharing its ``Parameter`` objects and attributes) whose class adds one
    ``forward`` for tensor input, since torch leaves a module with an overloaded forward
    without a callable ``forward``. Only a layer whose forward is rnnfast's own gets a twin:
    a subclass that defines its own ``forward`` is compiled as it is, with that forward.
    The module passed in is never changed.
    """
    from .modules import GRU, LSTM, RNN

    options = getattr(module, "_options", None)
    if options is not None and options():
        refuse_options(module._describe_options(), "compiled with torch.jit.script",
                       list(options()))
    if type(module).forward not in (LSTM.forward, GRU.forward, RNN.forward):
        return module
    if not _scripted_on_its_own():
        return module
    twin = copy.copy(module)
    for name in ("_parameters", "_buffers", "_modules"):
        twin.__dict__[name] = dict(module.__dict__[name])
    twin.__class__ = _top_class(type(module))
    return twin

"""Stateful step-by-step inference: :class:`StreamingState`.

A server that feeds a recurrent layer one time step (or one short chunk) at a time keeps
the layer's state between calls. :class:`StreamingState` keeps it for you::

    s = rnnfast.StreamingState(rnnfast.LSTM(80, 256, num_layers=2))
    for frame in frames:          # each [B, 80]
        y = s.step(frame)         # [B, 256]
    saved = s.state               # (h, c): swap sessions
    s.reset(rows=[0])             # a new stream in row 0

Stepping through a sequence gives the same outputs and final state as one call of the
layer on the whole sequence. That includes rnnfast's options beyond torch.nn in evaluation
mode (``layer_norm``; ``zoneout`` in its evaluation form); in training mode, where zoneout
and the dropouts draw masks per sequence, a layer with them is refused.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import ops
from .modules import _STOCHASTIC_OPTIONS, _RecurrentLayer

__all__ = ["StreamingState"]

#: The state in torch.nn's ``hx`` layout: ``h`` (GRU, RNN) or ``(h, c)`` (LSTM).
State = Union[Tensor, Tuple[Tensor, Tensor]]
Rows = Union[int, Sequence[int], Tensor]

_MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


class StreamingState:
    """A recurrent layer together with its state, run one step or chunk at a time.

    Args:
        layer: an ``LSTM``, ``GRU`` or ``RNN`` layer, rnnfast's or torch.nn's (not a cell:
            a cell has no state of its own to carry; not bidirectional: a reverse direction
            needs the whole sequence). It runs in its current mode (``train()``/``eval()``)
            and is not copied: later changes to its weights are seen.
        grad: record autograd history through the steps (for truncated
            backpropagation through time; see :meth:`detach`). Default ``False``: steps run
            under :func:`torch.no_grad`.

    The state has torch.nn's ``hx`` layout, ``h`` of shape ``(L, B, P)`` and, LSTM, ``c``
    of shape ``(L, B, H)`` (``L`` layers, ``B`` rows, ``P`` proj_size or ``H``), always
    with the batch dimension (``B = 1`` for unbatched input). A fresh or :meth:`reset`
    object holds no state (``state is None``): the next step starts from zeros with that
    step's batch size.
    """

    def __init__(self, layer: nn.Module, *, grad: bool = False) -> None:
        if not isinstance(layer, nn.RNNBase) or getattr(layer, "mode", None) not in _MODES:
            raise TypeError("StreamingState(): expected an LSTM, GRU or RNN layer (rnnfast or "
                            f"torch.nn), got {type(layer).__name__}")
        if layer.bidirectional:
            raise ValueError("StreamingState(): a bidirectional layer cannot be streamed: its "
                             "reverse direction needs the whole sequence before its first "
                             "output")
        self.layer = layer
        self.grad = bool(grad)
        #: Step rnnfast layers through their operators directly where possible
        #: (:meth:`_direct`); False always calls the layer.
        self.direct = True
        self._state: Optional[Tuple[Tensor, ...]] = None

    # ------------------------------------------------------------------ the state

    @property
    def is_lstm(self) -> bool:
        return self.layer.mode == "LSTM"

    def _state_sizes(self) -> Tuple[int, ...]:
        """Widths of the state tensors: ``(P, H)`` for the LSTM, ``(H,)`` otherwise."""
        layer = self.layer
        if self.is_lstm:
            return (layer.proj_size or layer.hidden_size, layer.hidden_size)
        return (layer.hidden_size,)

    @property
    def batch_size(self) -> Optional[int]:
        """Rows of the current state, ``None`` when there is none yet."""
        return None if self._state is None else self._state[0].size(1)

    @property
    def state(self) -> Optional[State]:
        """The current state, ``h`` or ``(h, c)`` (``None`` before the first step and after
        :meth:`reset`). Settable, with the same layout, to resume another stream; a 2-D
        ``(L, P)`` (and ``(L, H)``) state is taken as one row. Setting ``None`` resets."""
        if self._state is None:
            return None
        return (self._state[0], self._state[1]) if self.is_lstm else self._state[0]

    @state.setter
    def state(self, value: Optional[State]) -> None:
        self._state = None if value is None else self._checked_state(value)

    def _checked_state(self, value: State) -> Tuple[Tensor, ...]:
        """``value`` as a tuple of 3-D tensors, or a torch-style error naming ``state``
        (the object keeps its previous state)."""
        names = ("h", "c") if self.is_lstm else ("h",)
        if self.is_lstm:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                got = type(value).__name__ if not isinstance(value, (tuple, list)) else \
                    f"{type(value).__name__} of length {len(value)}"
                raise TypeError(f"StreamingState.state: an LSTM's state must be a tuple (h, c) "
                                f"of Tensors, got {got}")
            tensors = tuple(value)
        else:
            tensors = (value,)
        for name, t in zip(names, tensors):
            if not isinstance(t, Tensor):
                raise TypeError(f"StreamingState.state: {name} must be a Tensor, got "
                                f"{type(t).__name__}")
        dims = {t.dim() for t in tensors}
        if len(dims) != 1 or dims.pop() not in (2, 3):
            shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(names, tensors))
            raise RuntimeError("StreamingState.state: expected 3-D states (layers, batch, "
                               f"features), or 2-D for one row, got {shapes}")
        if tensors[0].dim() == 2:
            tensors = tuple(t.unsqueeze(1) for t in tensors)
        layers, batch = self.layer.num_layers, tensors[0].size(1)
        weight = self.layer.weight_hh_l0
        for i, (name, t, size) in enumerate(zip(names, tensors, self._state_sizes())):
            expected = (layers, batch, size)
            if tuple(t.shape) != expected:
                raise RuntimeError(f"StreamingState.state: expected {name} (state[{i}]) of "
                                   f"size {expected}, got {list(t.shape)}")
            if t.dtype != weight.dtype:
                raise RuntimeError(f"StreamingState.state: expected {name} of dtype "
                                   f"{weight.dtype} (the layer's), got {t.dtype}")
            if t.device != weight.device:
                raise RuntimeError(f"StreamingState.state: expected {name} on "
                                   f"{weight.device} (the layer's device), got {t.device}")
        return tensors

    def reset(self, rows: Optional[Rows] = None) -> None:
        """Start over: with ``rows`` ``None`` forget the whole state (the next step starts
        from zeros, with any batch size), else zero the given rows of the state (an index,
        a sequence of indices, an index tensor or a boolean mask of the batch size);
        negative indices count from the end. The other rows are untouched."""
        if rows is None:
            self._state = None
            return
        if self._state is None:
            self._row_index(rows, None)  # the rows are checked all the same
            return
        batch = self._state[0].size(1)
        index = self._row_index(rows, batch).to(self._state[0].device)
        with self._grad_mode():
            self._state = tuple(t.index_fill(1, index, 0) for t in self._state)

    @staticmethod
    def _row_index(rows: Rows, batch: Optional[int]) -> Tensor:
        """``rows`` as an int64 index tensor in ``[0, batch)``."""
        if isinstance(rows, bool) or not isinstance(rows, (int, Tensor, list, tuple, range)):
            raise TypeError("reset(): rows must be None, an int, a sequence of ints or a "
                            f"Tensor, got {type(rows).__name__}")
        index = torch.as_tensor(rows).cpu()
        if index.dtype == torch.bool:
            if index.dim() != 1 or (batch is not None and index.numel() != batch):
                raise IndexError(f"reset(): a boolean rows mask must have shape [{batch}] "
                                 f"(the batch size), got {list(index.shape)}")
            return index.nonzero().flatten()
        if index.is_floating_point() or index.is_complex():
            raise TypeError(f"reset(): rows must be integers, got {index.dtype}")
        index = index.flatten().to(torch.int64)
        if batch is not None and index.numel() > 0:
            bad = index[(index < -batch) | (index >= batch)]
            if bad.numel() > 0:
                raise IndexError(f"reset(): row {int(bad[0])} is out of range for a state of "
                                 f"{batch} rows")
            index = index % batch
        return index

    def detach(self) -> None:
        """Cut the autograd history of the state (truncated BPTT with ``grad=True``)."""
        if self._state is not None:
            self._state = tuple(t.detach() for t in self._state)

    # -------------------------------------------------------------------- steps

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.grad else torch.no_grad()

    def step(self, x: Tensor) -> Tensor:
        """Run one step or one chunk and keep the new state.

        Args:
            x: one step ``[B, I]`` (or ``[I]`` unbatched), or a chunk of ``t`` steps
                ``[t, B, I]`` (``[B, t, I]`` if the layer is ``batch_first``).

        Returns:
            The layer's output for those steps: ``[B, P]`` (``[P]``) for one step,
            ``[t, B, P]`` (``[B, t, P]``) for a chunk.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"step(): argument 'x' must be a Tensor, not {type(x).__name__}")
        dim = x.dim()
        if dim not in (1, 2, 3):
            raise ValueError("step(): expected x of shape [I] or [B, I] (one step) or "
                             "[t, B, I] ([B, t, I] with batch_first; a chunk), got "
                             f"{dim}-D {list(x.shape)}")
        time_dim = 1 if self.layer.batch_first else 0
        if dim == 1:
            seq = x.view(1, 1, -1)
        elif dim == 2:
            seq = x.unsqueeze(time_dim)
        else:
            seq = x
        batch = seq.size(1 - time_dim)
        if self._state is not None and self._state[0].size(1) != batch:
            raise RuntimeError(f"step(): x has batch size {batch}, the state has "
                               f"{self._state[0].size(1)} rows; reset() (or set state) to "
                               "change the batch size")
        self._refuse_training_masks()
        fast = self._direct(seq)
        if fast is not None:
            out, self._state = fast
        else:
            with self._grad_mode():
                out, new = self.layer(seq, self.state)
            self._state = tuple(new) if isinstance(new, (tuple, list)) else (new,)
        if dim == 1:
            return out.view(-1)
        if dim == 2:
            return out.squeeze(time_dim)
        return out

    def _refuse_training_masks(self) -> None:
        """An rnnfast layer in training mode with zoneout, recurrent or weight dropout draws
        its masks once per call over the whole sequence: stepping would draw new ones at
        every step (another model), so it is refused, naming the options."""
        layer = self.layer
        if not isinstance(layer, _RecurrentLayer) or not layer.training:
            return
        drawn = [name for name in _STOCHASTIC_OPTIONS if name in layer._options()]
        if drawn:
            raise NotImplementedError(
                f"StreamingState: {layer._describe_options()} in training mode draws its "
                f"{' and '.join(drawn)} masks once per sequence, which a step-by-step stream "
                "cannot reproduce; stream it in evaluation mode (layer.eval()) instead, or "
                "call the layer on whole sequences to train it.")

    def _direct(self, seq: Tensor) -> Optional[Tuple[Tensor, Tuple[Tensor, ...]]]:
        """The step through rnnfast's operators, one call per layer, without the module's
        Python bookkeeping: only for an rnnfast layer without autograd or dropout, on an
        input its kernels take as it is (else ``None``: the layer's own call, whose checks
        and messages apply). Same operators and arguments as the layer's call, so the same
        results."""
        layer = self.layer
        if (not self.direct or self.grad or not isinstance(layer, _RecurrentLayer)
                or (layer.training and layer.dropout > 0)):
            return None
        if layer.batch_first:
            seq = seq.transpose(0, 1)  # the operators run time-major
        weight = layer.weight_ih_l0
        if (seq.dtype != weight.dtype or seq.device != weight.device
                or seq.size(-1) != layer.input_size or seq.size(0) == 0
                or not ops.runs_kernels(seq) or torch.is_autocast_enabled(seq.device.type)
                or ops._path(seq, (seq,)) != ops._KERNELS):
            return None
        state = self._state
        if state is None:
            batch = seq.size(1)
            state = tuple(seq.new_zeros(layer.num_layers, batch, size)
                          for size in self._state_sizes())
        operators = ops._ops()
        mode = layer.mode
        x, finals = seq, [[] for _ in state]
        # Options (layer_norm; zoneout, in its evaluation form): ops.lstm_layer/gru_layer
        # take them (training mode reaches here only without zoneout or dropouts).
        options = layer._option_kwargs()
        layer_norm = options.get("layer_norm")
        zoneout = 0.0 if layer.training else options.get("zoneout", 0.0)
        with torch.no_grad():
            for k, params in enumerate(layer._layer_params()):
                ln = None if layer_norm is None else layer_norm[k]
                if mode == "LSTM":
                    if options:
                        x, h, c = ops.lstm_layer(x, state[0][k], state[1][k], *params,
                                                 layer_norm=ln, zoneout=zoneout)
                    else:
                        x, h, c, _, _ = operators.lstm_forward(x, state[0][k], state[1][k],
                                                               *params, None, False, False)
                    finals[0].append(h)
                    finals[1].append(c)
                elif mode == "GRU":
                    if options:
                        x, h = ops.gru_layer(x, state[0][k], *params, layer_norm=ln,
                                             zoneout=zoneout)
                    else:
                        x, h, _ = operators.gru_forward(x, state[0][k], *params, None, False,
                                                        False)
                    finals[0].append(h)
                else:
                    x, h = operators.rnn_forward(x, state[0][k], *params, None, False,
                                                 mode == "RNN_RELU")
                    finals[0].append(h)
        if layer.batch_first:
            x = x.transpose(0, 1)
        return x, tuple(torch.stack(f) for f in finals)

    def __repr__(self) -> str:
        rows = "no state" if self._state is None else f"batch {self._state[0].size(1)}"
        return f"StreamingState({self.layer!r}, {rows}, grad={self.grad})"

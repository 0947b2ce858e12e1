"""Drop-in replacements for torch.nn's recurrent layers and cells.

``rnnfast.LSTM``, ``GRU`` and ``RNN`` have exactly torch.nn's constructors,
parameter names, ``state_dict``, forward signatures, return structures and error
messages; their forward and backward run rnnfast's fused kernels (one operator
call per layer and direction, hand-written BPTT). ``LSTMCell``, ``GRUCell`` and
``RNNCell`` likewise, each one fused operator call forward and backward.

``LSTM``, ``GRU``, ``LSTMCell`` and ``GRUCell`` also take keyword-only options beyond
torch.nn (layer normalisation; the layers also zoneout, recurrent and weight dropout),
with the formulas and mask draw order of :mod:`rnnfast.reference`. Left at their defaults
they change nothing: same parameters, ``state_dict`` and results as torch.nn.

The layers derive from ``torch.nn.RNNBase`` (which owns the parameter layout), not
from ``torch.nn.LSTM``/``GRU``/``RNN``: ``torch.compile`` refuses to trace
subclasses of those three, and rnnfast layers must compile with ``fullgraph=True``.
The few class-specific helpers (state-shape checks, state permutation for unsorted
packed batches) are torch.nn's own functions, so checks and messages are the same
by construction.
"""
# No ``from __future__ import annotations`` here: TorchScript reads the annotations of the
# layers' overloaded forward as objects.
import math
from typing import Optional, Union, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional, ops, reference
# The TorchScript paths of the layers and cells (their forward runs them when scripted).
from ._torchscript import (GRUCellScript, LSTMCellScript, LSTMScript, OneStateScript,
                           RNNCellScript)

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]

# TorchScript's overload registration for methods (torch.nn's layers use it for their
# tensor/PackedSequence forward). A torch without it still imports rnnfast; scripting a
# layer then fails with TorchScript's own error about the overloaded forward.
_overload_method = getattr(getattr(torch, "_jit_internal", None), "_overload_method",
                           lambda fn: fn)

_SCALAR_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
                 torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
                 torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
                 torch.bool: "Bool", torch.complex64: "ComplexFloat",
                 torch.complex128: "ComplexDouble"}


def _dtype_name(dtype: torch.dtype) -> str:
    return _SCALAR_NAMES.get(dtype, str(dtype))


def _autocast(input: Tensor) -> bool:
    """Whether autocast is on for ``input``'s device: then, as in torch.nn, the input and
    states need not have the weights' dtype (the operators' autocast kernels cast them,
    rnnfast/autocast.py)."""
    return torch.is_autocast_enabled(input.device.type)


def _check_state_like(weight: Tensor, input: Tensor, states: tuple[Tensor, ...]) -> None:
    """States must match the weights' dtype (unless autocast is on) and the input's device,
    and the input the weights' device (torch's wording)."""
    for t in states:
        if t.dtype != weight.dtype and not _autocast(input):
            raise RuntimeError("mat1 and mat2 must have the same dtype, but got "
                               f"{_dtype_name(t.dtype)} and {_dtype_name(weight.dtype)}")
        if t.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {t.device}")
    if weight.device != input.device:
        raise RuntimeError(
            "Input and parameter tensors are not at the same device, found input tensor at "
            f"{input.device} and parameter tensor at {weight.device}")


# ------------------------------------------------------------- options beyond torch.nn

#: The layers' options beyond torch.nn, with their defaults (the cells take layer_norm).
_OPTION_DEFAULTS = {"layer_norm": False, "zoneout": 0.0, "recurrent_dropout": 0.0,
                    "weight_dropout": 0.0}
#: The options that draw random masks in training mode.
_STOCHASTIC_OPTIONS = ("zoneout", "recurrent_dropout", "weight_dropout")
#: Prefixes of the layer-normalisation parameters' names (reference.LAYER_NORM_NAMES).
_LN_PREFIXES = ("weight_ln_", "bias_ln_")


def _check_options(layer_norm, probabilities: dict) -> dict:
    """The options as stored: ``layer_norm`` a bool (else TypeError, torch's wording for
    bool arguments), each probability a float in [0, 1) (else ValueError naming it)."""
    if not isinstance(layer_norm, bool):
        raise TypeError(f"layer_norm should be of type bool, got: {type(layer_norm).__name__}")
    options = {"layer_norm": layer_norm}
    for name, p in probabilities.items():
        options[name] = reference._check_probability(name, p)
    return options


def _is_layer_norm_name(name: str) -> bool:
    return name.startswith(_LN_PREFIXES)


def _layer_norm_shapes(mode: str, hidden_size: int) -> dict:
    """Name (without layer suffix) -> size of the layer-normalisation parameters of one
    layer and direction (or one cell), in reference.LAYER_NORM_NAMES order."""
    if mode == "LSTM":
        return {"weight_ln_ih": 4 * hidden_size, "weight_ln_hh": 4 * hidden_size,
                "weight_ln_c": hidden_size, "bias_ln_c": hidden_size}
    return {"weight_ln_ih": 3 * hidden_size, "weight_ln_hh": 3 * hidden_size}


def _reset_with_layer_norm(module: nn.Module) -> None:
    """torch.nn's ``reset_parameters`` (every parameter uniform in ``±1/sqrt(H)``, in
    registration order, so the torch.nn parameters, registered first, draw exactly what
    torch.nn's draw), except the layer-normalisation parameters: weights 1, biases 0."""
    stdv = 1.0 / math.sqrt(module.hidden_size) if module.hidden_size > 0 else 0
    for name, weight in module.named_parameters():
        if not _is_layer_norm_name(name):
            nn.init.uniform_(weight, -stdv, stdv)
    with torch.no_grad():
        for name, weight in module.named_parameters():
            if _is_layer_norm_name(name):
                weight.fill_(0.0 if name.startswith("bias_") else 1.0)


class _Options:
    """The options beyond torch.nn of a layer or cell (a base class of rnnfast's layers
    and cells): their non-default values, how they read in messages and in ``repr``, and
    the refusals where the model would be handled the torch.nn way (TorchScript, ONNX)."""

    _public_name = ""
    #: The options this class takes (their defaults are class attributes of it).
    _option_names: tuple = ()

    def _options(self) -> dict:
        """The options set to a non-default value, name -> value ({} for RNN, RNNCell and
        every module left at the defaults)."""
        found = {}
        for name in self._option_names:
            value = getattr(self, name)
            if value != _OPTION_DEFAULTS[name]:
                found[name] = value
        return found

    def _describe_options(self) -> str:
        """E.g. ``rnnfast.LSTM(layer_norm=True, zoneout=0.1)``."""
        args = ", ".join(f"{name}={value!r}" for name, value in self._options().items())
        return f"rnnfast.{self._public_name}({args})"

    def _options_repr(self) -> str:
        return "".join(f", {name}={value!r}" for name, value in self._options().items())

    def _refuse_capture(self, input: Tensor) -> None:
        """With options: refuse an ONNX export (both exporters) or a ``torch.jit.trace``
        that records this call, naming the options (torch.nn's recurrences, which those
        turn the layer into, have none)."""
        if not self._options():
            return
        tracing = torch.jit.is_tracing()
        if ops._onnx_dynamo(input) or (tracing and (ops._legacy_onnx_exporting()
                                                    or ops._onnx_exporting())):
            from .onnx import refuse_options
            refuse_options(self._describe_options(), self._public_name.replace("Cell", ""),
                           list(self._options()))
        if tracing:
            from ._torchscript import refuse_options as refuse_torchscript
            refuse_torchscript(self._describe_options(), "traced with torch.jit.trace",
                               list(self._options()))


class _RecurrentLayer(_Options, nn.RNNBase):
    """The forward logic shared by rnnfast.LSTM, GRU and RNN.

    Subclasses define the state structure (``_num_states``, ``_state_sizes``), the
    rank-mismatch messages, their function in rnnfast.functional (``_functional``, which
    ``_run`` calls with the fused kernels) and torch's implementation (``_torch_fn``, the
    fallback).

    The options beyond torch.nn (LSTM and GRU): :meth:`_setup_options` stores them and
    registers the layer-normalisation parameters after torch.nn's, so that torch.nn's
    parameter bookkeeping (``_flat_weights_names``, ``_all_weights``) is untouched and
    lists torch.nn's parameters only.
    """

    _num_states = 1

    def _setup_options(self, options: dict) -> None:
        """Store the checked ``options`` (:func:`_check_options`) and, with ``layer_norm``,
        register ``weight_ln_ih_l{k}{s}``, ``weight_ln_hh_l{k}{s}`` (and, LSTM,
        ``weight_ln_c_l{k}{s}``, ``bias_ln_c_l{k}{s}``) for every layer and direction,
        weights 1 and biases 0, on the device and dtype of torch.nn's parameters."""
        for name, value in options.items():
            setattr(self, name, value)
        if not options["layer_norm"]:
            return
        like = self._flat()[0]
        shapes = _layer_norm_shapes(self.mode, self.hidden_size)
        for names in self._all_weights:
            suffix = names[0][len("weight_ih"):]  # "_l{k}" or "_l{k}_reverse"
            for base, size in shapes.items():
                value = 0.0 if base.startswith("bias_") else 1.0
                self.register_parameter(base + suffix, nn.Parameter(
                    torch.full((size,), value, dtype=like.dtype, device=like.device)))

    def reset_parameters(self) -> None:
        """torch.nn's initialisation (uniform in ``±1/sqrt(hidden_size)``, drawing exactly
        what torch.nn's draws); layer-normalisation weights 1, biases 0."""
        _reset_with_layer_norm(self)

    def _layer_norm_params(self) -> Optional[list]:
        """The ``layer_norm`` argument of rnnfast.functional/reference: one tuple per layer
        and direction, or None without layer normalisation."""
        if not getattr(self, "layer_norm", False):
            return None
        params = reference.layer_norm_params_from_module(self)
        if params is None:
            raise RuntimeError(f"{self._describe_options()}: the layer has no "
                               "layer-normalisation parameters (weight_ln_ih_l0, ...); "
                               "set layer_norm=True when constructing it")
        return params

    def _option_kwargs(self) -> dict:
        """The options as keyword arguments of rnnfast.functional.lstm/gru and
        rnnfast.reference.lstm/gru ({} without any, so the plain path runs)."""
        if not self._options():
            return {}
        return dict(layer_norm=self._layer_norm_params(), zoneout=self.zoneout,
                    recurrent_dropout=self.recurrent_dropout,
                    weight_dropout=self.weight_dropout)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._options_repr()

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def _rank_error(self, is_batched: bool, states: tuple[Tensor, ...]) -> Optional[str]:
        want = 3 if is_batched else 2
        if states[0].dim() != want:
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            return (f"For {kind} input, hx should also be {want}-D but got "
                    f"{states[0].dim()}-D tensor")
        return None

    def _zero_states(self, input: Tensor, batch: int) -> tuple[Tensor, ...]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        return tuple(torch.zeros(layers, batch, size, dtype=input.dtype, device=input.device)
                     for size in self._state_sizes())

    def _as_hx(self, states: tuple[Tensor, ...]):
        return states if self._num_states > 1 else states[0]

    def _split_hx(self, hx) -> tuple:
        """The states of a user's ``hx``, indexed as torch.nn does (so that a wrong type
        fails the same way)."""
        return (hx,)

    def _check_packed_dtype(self, input: Tensor) -> None:
        """torch.nn.GRU/RNN check a packed input's dtype in Python (check_input)."""

    def _layer_params(self) -> list[tuple]:
        params = []
        for names in self._all_weights:
            w = {name.split("_l")[0]: getattr(self, name) for name in names}
            p = (w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"))
            params.append(p + (w.get("weight_hr"),) if self.mode == "LSTM" else p)
        return params

    def _check_packed_states(self, input: Tensor, hx, batch_sizes: Tensor) -> None:
        if not torch.compiler.is_compiling():
            self.check_forward_args(input, hx, batch_sizes)
            return
        # Compiling: a PackedSequence's batch size is data (batch_sizes[0]), unknown at
        # trace time, so its check is a runtime assertion instead of a Python
        # comparison that would have to guard on it.
        self.check_input(input, batch_sizes)
        layers = self.num_layers * (2 if self.bidirectional else 1)
        mini_batch = int(batch_sizes[0])
        states = hx if isinstance(hx, tuple) else (hx,)
        for i, (t, size) in enumerate(zip(states, self._state_sizes())):
            if t.dim() != 3 or t.size(0) != layers or t.size(2) != size:
                raise RuntimeError(f"Expected hidden[{i}] size ({layers}, batch, {size}), "
                                   f"got {list(t.size())}")
            torch._check(t.size(1) == mini_batch, lambda: "Expected the batch size of hidden "
                         "states to equal the PackedSequence's batch size (batch_sizes[0])")

    def _functional_options(self) -> dict:
        """Keyword arguments of the layer's function in rnnfast.functional beyond those
        every layer passes."""
        return {}

    def _run(self, input: Tensor, states: tuple[Tensor, ...], batch_sizes: Optional[Tensor]
             ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The fused kernels, through rnnfast.functional (time-major or packed input)."""
        output, *finals = self._functional(
            input, *states, self._layer_params(), self.num_layers,
            bidirectional=self.bidirectional, dropout=self.dropout, training=self.training,
            batch_sizes=batch_sizes, **self._functional_options())
        return output, tuple(finals)

    def _torch_fn(self):
        """torch's own implementation of the whole layer (a torch._VF function)."""
        raise NotImplementedError

    def _torch_fallback(self, input: Tensor, states: tuple[Tensor, ...],
                        batch_sizes: Optional[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        options = self._option_kwargs()
        if options:  # torch.nn has no such options: the reference runs them
            fn = reference.lstm if self.mode == "LSTM" else reference.gru
            output, finals = fn(input, self._as_hx(states), reference.params_from_module(self),
                                self.num_layers, self.bidirectional, self.batch_first,
                                self.dropout, self.training, batch_sizes, **options)
            return output, tuple(finals) if isinstance(finals, tuple) else (finals,)
        fn, hx = self._torch_fn(), self._as_hx(states)
        if batch_sizes is None:
            result = fn(input, hx, self._flat(), self.bias, self.num_layers, self.dropout,
                        self.training, self.bidirectional, self.batch_first)
        else:
            result = fn(input, batch_sizes, hx, self._flat(), self.bias, self.num_layers,
                        self.dropout, self.training, self.bidirectional)
        return result[0], tuple(result[1:])

    def _flat(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    def forward(self, input: Union[Tensor, PackedSequence], hx=None):
        """Run the layer; same inputs, outputs and errors as torch.nn's ``forward``."""
        if self._options():
            self._refuse_capture(input[0] if isinstance(input, PackedSequence) else input)
        orig_input = input
        batch_sizes = None
        sorted_indices = None
        unsorted_indices = None
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            if ops._onnx_dynamo(input):  # before torch.export trips over batch_sizes' values
                from .onnx import refuse_packed
                refuse_packed(self.mode)
            # torch.nn reads batch_sizes[0] first (not while tracing: a constant there)
            if not torch.jit.is_tracing() and batch_sizes.numel() == 0:
                raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
            self._check_packed_dtype(input)
            if hx is None:
                self.check_input(input, batch_sizes)
                # traced: the batch size stays data in the graph (as torch.nn's)
                max_batch_size = (batch_sizes[0] if torch.jit.is_tracing()
                                  else int(batch_sizes[0]))
                hx = self._as_hx(self._zero_states(input, max_batch_size))
            else:
                # torch.nn permutes the given state first, then checks it.
                hx = self.permute_hidden(hx, sorted_indices)
                self._check_packed_states(input, hx, batch_sizes)
        else:
            if input.dim() not in (2, 3):
                raise ValueError(self._input_rank_message(input.dim()))
            is_batched = input.dim() == 3
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            if not torch.jit.is_tracing() and input.size(1 if self.batch_first else 0) == 0:
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            max_batch_size = input.size(0) if self.batch_first else input.size(1)
            if hx is None:
                hx = self._as_hx(self._zero_states(input, max_batch_size))
            else:
                given = self._split_hx(hx)
                message = self._rank_error(is_batched, given)
                if message is not None:
                    raise RuntimeError(message)
                if not is_batched:
                    hx = self._as_hx(tuple(t.unsqueeze(1) for t in given))
            self.check_forward_args(input, hx, batch_sizes)
        states = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
        if len(states) != self._num_states:
            raise RuntimeError("lstm expects two hidden states")
        _check_state_like(self._flat()[0], input, states)

        if ops.runs_kernels(input):
            if batch_sizes is None and self.batch_first:
                input = input.transpose(0, 1)
            output, finals = self._run(input, states, batch_sizes)
            if batch_sizes is None and self.batch_first:
                output = output.transpose(0, 1)
        else:
            output, finals = self._torch_fallback(input, states, batch_sizes)

        if isinstance(orig_input, PackedSequence):
            output_packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return output_packed, self.permute_hidden(self._as_hx(finals), unsorted_indices)
        if not is_batched:
            output = output.squeeze(batch_dim)
            finals = tuple(t.squeeze(1) for t in finals)
        return output, self.permute_hidden(self._as_hx(finals), unsorted_indices)

    def _input_rank_message(self, dim: int) -> str:
        return f"{self.mode}: Expected input to be 2D or 3D, got {dim}D instead"

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles: the layer itself, or, scripted on its own, a
        twin with one forward for tensor input (rnnfast/_torchscript.py)."""
        from ._torchscript import scriptable
        return scriptable(self)


class LSTM(LSTMScript, _RecurrentLayer):
    r"""Multi-layer LSTM, a drop-in replacement for :class:`torch.nn.LSTM`.

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h (and cell state c).
        num_layers: number of stacked layers. Default: 1.
        bias: use ``b_ih`` and ``b_hh``. Default: True.
        batch_first: input and output are (B, T, *) instead of (T, B, *). Default: False.
        dropout: dropout on the outputs of each layer but the last, in training
            mode. Default: 0.
        bidirectional: add a reverse-direction LSTM per layer. Default: False.
        proj_size: if > 0, project h to this size (``weight_hr_l{k}``). Default: 0.
        device, dtype: factory keyword arguments for the parameters.

    Keyword-only options beyond torch.nn (formulas and mask draw order in
    :mod:`rnnfast.reference`; the defaults leave the layer exactly torch.nn's, parameters
    and ``state_dict`` included):

    Args:
        layer_norm: layer-normalised LSTM: ``LN(x W_ih^T) + LN(h W_hh^T) + b`` (each LN
            over all 4H gate columns) and ``h = o * tanh(LN(c))``; adds the parameters
            ``weight_ln_ih_l{k}{s}`` (4H), ``weight_ln_hh_l{k}{s}`` (4H),
            ``weight_ln_c_l{k}{s}`` (H), initialised to 1, and ``bias_ln_c_l{k}{s}`` (H),
            initialised to 0 (``s`` is ``""`` or ``"_reverse"``). Default: False.
        zoneout: probability that each element of h and c keeps its previous value at a
            step; training draws masks, evaluation uses ``p * old + (1 - p) * new``.
            Default: 0.
        recurrent_dropout: variational dropout of h where it enters ``W_hh`` (one mask per
            sequence, layer and direction); training only. Default: 0.
        weight_dropout: DropConnect on ``W_hh`` (one mask per call, layer and direction);
            training only. Default: 0.

    Masks are drawn from torch's generator of the input's device: the same
    ``torch.manual_seed`` gives the same masks as :func:`rnnfast.reference.lstm`.
    A layer with options cannot be scripted, traced, exported to ONNX or dynamically
    quantized (torch.nn's LSTM has no such options); it compiles with torch.compile.

    Inputs: ``input, (h_0, c_0)`` exactly as torch.nn.LSTM: ``input`` is (T, B, I),
    (B, T, I) with ``batch_first``, unbatched (T, I), or a
    :class:`~torch.nn.utils.rnn.PackedSequence`; ``(h_0, c_0)`` is optional.

    Outputs: ``output, (h_n, c_n)`` exactly as torch.nn.LSTM.

    float32, float64 and bfloat16 run rnnfast's kernels (bfloat16 on the CPU: float32
    arithmetic and cell state on up-converted values); float16 on the CPU falls back to
    torch's own implementation.

    Example::

        >>> m = rnnfast.LSTM(10, 20, num_layers=2)
        >>> m.load_state_dict(torch.nn.LSTM(10, 20, num_layers=2).state_dict())
        >>> out, (h, c) = m(torch.randn(5, 3, 10))
    """

    _num_states = 2
    _functional = staticmethod(functional.lstm)
    _public_name = "LSTM"
    _option_names = tuple(_OPTION_DEFAULTS)
    # The options' defaults (also what a layer pickled before they existed reads).
    layer_norm = False
    zoneout = 0.0
    recurrent_dropout = 0.0
    weight_dropout = 0.0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, layer_norm: bool = False,
                 zoneout: float = 0.0, recurrent_dropout: float = 0.0,
                 weight_dropout: float = 0.0) -> None:
        options = _check_options(layer_norm, dict(zoneout=zoneout,
                                                  recurrent_dropout=recurrent_dropout,
                                                  weight_dropout=weight_dropout))
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype)
        self._setup_options(options)

    def _functional_options(self) -> dict:
        return self._option_kwargs()

    # torch.nn.LSTM's own checks and state permutation (same messages by construction).
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args  # type: ignore[assignment]
    permute_hidden = nn.LSTM.permute_hidden  # type: ignore[assignment]

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.proj_size if self.proj_size > 0 else self.hidden_size, self.hidden_size)

    def _split_hx(self, hx) -> tuple:
        return (hx[0], hx[1])

    def _check_packed_dtype(self, input: Tensor) -> None:
        # torch.nn.LSTM does not check a packed input in Python; its kernel's matmul does.
        weight = self._flat()[0]
        if input.dtype != weight.dtype and not _autocast(input):
            raise RuntimeError("mat1 and mat2 must have the same dtype, but got "
                               f"{_dtype_name(input.dtype)} and {_dtype_name(weight.dtype)}")

    def _check_packed_states(self, input: Tensor, hx, batch_sizes: Tensor) -> None:
        hx[0].size(2)  # torch.nn.LSTM's kernel reads this first: IndexError below 3-D
        super()._check_packed_states(input, hx, batch_sizes)

    def _rank_error(self, is_batched: bool, states: tuple[Tensor, ...]) -> Optional[str]:
        want = 3 if is_batched else 2
        if states[0].dim() != want or states[1].dim() != want:
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            return (f"For {kind} input, hx and cx should also be {want}-D but got "
                    f"({states[0].dim()}-D, {states[1].dim()}-D) tensors")
        return None

    @overload
    @_overload_method
    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]: ...

    def forward(self, input, hx=None):
        """Run the LSTM; same inputs, outputs and errors as :meth:`torch.nn.LSTM.forward`."""
        if not torch.jit.is_scripting():
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):  # scripted (rnnfast/_torchscript.py)
            return self._forward_packed(input, hx)
        else:
            return self._forward_tensor(input, hx)

    def _torch_fn(self):
        return torch._VF.lstm


class GRU(OneStateScript, _RecurrentLayer):
    r"""Multi-layer GRU, a drop-in replacement for :class:`torch.nn.GRU`.

    PyTorch's GRU variant: gates r, z, n with the reset gate applied after the
    recurrent product, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout,
        bidirectional, device, dtype: as :class:`torch.nn.GRU` (no ``proj_size``).

    Keyword-only options beyond torch.nn, as :class:`LSTM`'s (formulas in
    :mod:`rnnfast.reference`; defaults leave the layer exactly torch.nn's):

    Args:
        layer_norm: ``gi = LN(x W_ih^T) + b_ih``, ``gh = LN(h W_hh^T) + b_hh`` (each LN
            over 3H); adds ``weight_ln_ih_l{k}{s}`` and ``weight_ln_hh_l{k}{s}`` (3H),
            initialised to 1. Default: False.
        zoneout, recurrent_dropout, weight_dropout: as :class:`LSTM` (zoneout of h only).

    Inputs: ``input, h_0`` and outputs ``output, h_n`` exactly as torch.nn.GRU.
    float32, float64 and bfloat16 run rnnfast's kernels; float16 on the CPU falls back to torch
    (to rnnfast.reference with options).
    """

    _functional = staticmethod(functional.gru)
    _public_name = "GRU"
    _option_names = tuple(_OPTION_DEFAULTS)
    layer_norm = False
    zoneout = 0.0
    recurrent_dropout = 0.0
    weight_dropout = 0.0

    def __init__(self, *args, layer_norm: bool = False, zoneout: float = 0.0,
                 recurrent_dropout: float = 0.0, weight_dropout: float = 0.0,
                 **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        options = _check_options(layer_norm, dict(zoneout=zoneout,
                                                  recurrent_dropout=recurrent_dropout,
                                                  weight_dropout=weight_dropout))
        super().__init__("GRU", *args, **kwargs)
        self._setup_options(options)

    def _functional_options(self) -> dict:
        return self._option_kwargs()

    @overload
    @_overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]: ...

    @overload
    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None
                ) -> tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        """Run the GRU; same inputs, outputs and errors as :meth:`torch.nn.GRU.forward`."""
        if not torch.jit.is_scripting():
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):  # scripted (rnnfast/_torchscript.py)
            return self._forward_packed(input, hx)
        else:
            return self._forward_tensor(input, hx)

    def _torch_fn(self):
        return torch._VF.gru


class RNN(OneStateScript, _RecurrentLayer):
    r"""Multi-layer Elman RNN, a drop-in replacement for :class:`torch.nn.RNN`.

    ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu with
    ``nonlinearity='relu'``).

    Args:
        input_size, hidden_size, num_layers, nonlinearity, bias, batch_first,
        dropout, bidirectional, device, dtype: as :class:`torch.nn.RNN`, including
        its positional order (``nonlinearity`` is the fourth argument).

    Inputs: ``input, h_0`` and outputs ``output, h_n`` exactly as torch.nn.RNN.
    float32, float64 and bfloat16 run rnnfast's kernels; float16 on the CPU falls back to torch.
    """

    _functional = staticmethod(functional.rnn)
    _public_name = "RNN"

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)

    def _input_rank_message(self, dim: int) -> str:
        return f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead"

    @overload
    @_overload_method
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]: ...

    @overload
    @_overload_method
    def forward(self, input: PackedSequence, hx: Optional[Tensor] = None
                ) -> tuple[PackedSequence, Tensor]: ...

    def forward(self, input, hx=None):
        """Run the RNN; same inputs, outputs and errors as :meth:`torch.nn.RNN.forward`."""
        if not torch.jit.is_scripting():
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):  # scripted (rnnfast/_torchscript.py)
            return self._forward_packed(input, hx)
        else:
            return self._forward_tensor(input, hx)

    def _functional_options(self) -> dict:
        return {"nonlinearity": self.nonlinearity}

    def _torch_fn(self):
        return torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu


# ----------------------------------------------------------------------------- cells

class _RecurrentCell(_Options, nn.RNNCellBase):
    """Shared logic of rnnfast's cells: one time step, one fused operator call."""

    _name = ""
    _num_states = 1

    def _setup_layer_norm(self, layer_norm: bool) -> None:
        """Store ``layer_norm`` and, if set, register the cell's layer-normalisation
        parameters (``weight_ln_ih``, ``weight_ln_hh`` and, LSTMCell, ``weight_ln_c``,
        ``bias_ln_c``) after torch.nn's: weights 1, biases 0."""
        self.layer_norm = layer_norm
        if not layer_norm:
            return
        like = self.weight_ih
        mode = "LSTM" if self._name == "LSTMCell" else "GRU"
        for name, size in _layer_norm_shapes(mode, self.hidden_size).items():
            value = 0.0 if name.startswith("bias_") else 1.0
            self.register_parameter(name, nn.Parameter(
                torch.full((size,), value, dtype=like.dtype, device=like.device)))

    def reset_parameters(self) -> None:
        """torch.nn's initialisation (uniform in ``±1/sqrt(hidden_size)``, drawing exactly
        what torch.nn's draws); layer-normalisation weights 1, biases 0."""
        _reset_with_layer_norm(self)

    def _layer_norm_params(self) -> Optional[tuple]:
        """The ``layer_norm`` argument of the layer operators for this cell, or None."""
        if not getattr(self, "layer_norm", False):
            return None
        params = reference.cell_layer_norm_params_from_module(self)
        if params is None:
            raise RuntimeError(f"{self._describe_options()}: the cell has no "
                               "layer-normalisation parameters (weight_ln_ih, ...); set "
                               "layer_norm=True when constructing it")
        return params

    def extra_repr(self) -> str:
        return super().extra_repr() + self._options_repr()

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles: the cell itself (refused with options,
        rnnfast/_torchscript.py)."""
        from ._torchscript import scriptable
        return scriptable(self)

    def _check_cell_inputs(self, input: Tensor, hx) -> None:
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._name}: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead")
        if hx is None:
            return
        if self._num_states > 1:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"{self._name}: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        elif hx.dim() not in (1, 2):
            raise ValueError(f"{self._name}: Expected hidden to be 1D or 2D, got "
                             f"{hx.dim()}D instead")

    def _check_cell_sizes(self, input: Tensor, states: tuple[Tensor, ...]) -> None:
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        for i, t in enumerate(states):
            if t.size(0) != input.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} "
                                   f"batch size {t.size(0)}")
            if t.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {t.size(1)}, "
                                   f"expected {self.hidden_size}")

    def _prepare(self, input: Tensor, hx) -> tuple[Tensor, tuple[Tensor, ...], bool]:
        """Batch the input and states and check them as torch's cell kernels do."""
        self._check_cell_inputs(input, hx)
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            states = (zeros,) * self._num_states
        else:
            if self._num_states == 1:
                states = (hx,)
            elif not is_batched:
                states = (hx[0], hx[1])  # torch.nn.LSTMCell indexes an unbatched hx
            elif isinstance(hx, Tensor):
                raise TypeError("lstm_cell(): argument 'hx' (position 2) must be tuple of "
                                "Tensors, not Tensor")
            else:
                states = tuple(hx)
                if len(states) != 2:
                    raise RuntimeError("lstm_cell expects two hidden states")
            if not is_batched:
                states = tuple(t.unsqueeze(0) for t in states)
        if not torch.jit.is_tracing():  # traced, these would be constants (the operator checks)
            self._check_cell_sizes(input, states)
        if input.dtype != self.weight_ih.dtype and not _autocast(input):
            raise RuntimeError("mat1 and mat2 must have the same dtype, but got "
                               f"{_dtype_name(input.dtype)} and "
                               f"{_dtype_name(self.weight_ih.dtype)}")
        _check_state_like(self.weight_hh, input, states)
        return input, states, is_batched


class LSTMCell(LSTMCellScript, _RecurrentCell):
    r"""An LSTM cell, a drop-in replacement for :class:`torch.nn.LSTMCell`.

    Args:
        input_size, hidden_size, bias, device, dtype: as torch.nn.LSTMCell.
        layer_norm: keyword-only; the layer-normalised LSTM step of
            :mod:`rnnfast.reference` (as :class:`LSTM`'s ``layer_norm``), with the
            parameters ``weight_ln_ih`` (4H), ``weight_ln_hh`` (4H), ``weight_ln_c`` (H),
            initialised to 1, and ``bias_ln_c`` (H), initialised to 0. Default: False
            (exactly torch.nn.LSTMCell). A cell sees one step, not a sequence, so it takes
            no zoneout or recurrent/weight dropout: those are the layers' options.

    ``forward(input, (h, c)=None) -> (h', c')`` with input (B, I) or (I,).
    """

    _name = "LSTMCell"
    _public_name = "LSTMCell"
    _option_names = ("layer_norm",)
    _num_states = 2
    layer_norm = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, layer_norm: bool = False) -> None:
        _check_options(layer_norm, {})
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)
        self._setup_layer_norm(layer_norm)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
                ) -> tuple[Tensor, Tensor]:
        """One step; same inputs, outputs and errors as :meth:`torch.nn.LSTMCell.forward`."""
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        return self._script_forward(input, hx)  # rnnfast/_torchscript.py

    def _eager_forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]]
                       ) -> tuple[Tensor, Tensor]:
        if self.layer_norm:
            self._refuse_capture(input)
        input, (h, c), is_batched = self._prepare(input, hx)
        layer_norm = self._layer_norm_params()
        if layer_norm is not None:
            if ops.runs_kernels(input):  # one step of the layer-normalised layer
                _, h, c = ops.lstm_layer(input.unsqueeze(0), h, c, self.weight_ih,
                                         self.weight_hh, self.bias_ih, self.bias_hh,
                                         layer_norm=layer_norm)
            else:
                h, c = reference.lstm_cell(input, h, c, self.weight_ih, self.weight_hh,
                                           self.bias_ih, self.bias_hh, layer_norm=layer_norm)
        elif ops.runs_kernels(input):
            h, c = ops.lstm_cell(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih,
                                 self.bias_hh)
        else:
            h, c = torch._VF.lstm_cell(input, (h, c), self.weight_ih, self.weight_hh,
                                       self.bias_ih, self.bias_hh)
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(GRUCellScript, _RecurrentCell):
    r"""A GRU cell, a drop-in replacement for :class:`torch.nn.GRUCell`.

    Args:
        input_size, hidden_size, bias, device, dtype: as torch.nn.GRUCell.
        layer_norm: keyword-only; the layer-normalised GRU step of :mod:`rnnfast.reference`
            (as :class:`GRU`'s ``layer_norm``), with the parameters ``weight_ln_ih`` and
            ``weight_ln_hh`` (3H), initialised to 1. Default: False (exactly
            torch.nn.GRUCell). No zoneout or recurrent/weight dropout: a cell sees one
            step, not a sequence; those are the layers' options.

    ``forward(input, h=None) -> h'`` with input (B, I) or (I,).
    """

    _name = "GRUCell"
    _public_name = "GRUCell"
    _option_names = ("layer_norm",)
    layer_norm = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None, *, layer_norm: bool = False) -> None:
        _check_options(layer_norm, {})
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)
        self._setup_layer_norm(layer_norm)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step; same inputs, outputs and errors as :meth:`torch.nn.GRUCell.forward`."""
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        return self._script_forward(input, hx)  # rnnfast/_torchscript.py

    def _eager_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if self.layer_norm:
            self._refuse_capture(input)
        input, (h,), is_batched = self._prepare(input, hx)
        layer_norm = self._layer_norm_params()
        if layer_norm is not None:
            if ops.runs_kernels(input):  # one step of the layer-normalised layer
                _, h = ops.gru_layer(input.unsqueeze(0), h, self.weight_ih, self.weight_hh,
                                     self.bias_ih, self.bias_hh, layer_norm=layer_norm)
            else:
                h = reference.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih,
                                       self.bias_hh, layer_norm=layer_norm)
        elif ops.runs_kernels(input):
            _, h = ops.gru_layer(input.unsqueeze(0), h, self.weight_ih, self.weight_hh,
                                 self.bias_ih, self.bias_hh)
        else:
            h = torch._VF.gru_cell(input, h, self.weight_ih, self.weight_hh, self.bias_ih,
                                   self.bias_hh)
        return h if is_batched else h.squeeze(0)


class RNNCell(RNNCellScript, _RecurrentCell):
    r"""An Elman RNN cell, a drop-in replacement for :class:`torch.nn.RNNCell`.

    Args:
        input_size, hidden_size, bias, nonlinearity ('tanh' or 'relu'), device,
        dtype: as torch.nn.RNNCell.

    ``forward(input, h=None) -> h'`` with input (B, I) or (I,).
    """

    _name = "RNNCell"
    _public_name = "RNNCell"
    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step; same inputs, outputs and errors as :meth:`torch.nn.RNNCell.forward`."""
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx)
        return self._script_forward(input, hx)  # rnnfast/_torchscript.py

    def _eager_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        input, (h,), is_batched = self._prepare(input, hx)
        if ops.runs_kernels(input):
            _, h = ops.rnn_layer(input.unsqueeze(0), h, self.weight_ih, self.weight_hh,
                                 self.bias_ih, self.bias_hh, nonlinearity=self.nonlinearity)
        else:
            fn = torch._VF.rnn_tanh_cell if self.nonlinearity == "tanh" else torch._VF.rnn_relu_cell
            h = fn(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if is_batched else h.squeeze(0)

"""Autocast (``torch.autocast``) kernels of rnnfast's forward operators.

Under autocast an rnnfast layer or cell returns the dtypes torch.nn's returns. torch's
autocast lists (``aten/src/ATen/autocast_mode.cpp``) do not name ``lstm``, ``gru`` or
``rnn_tanh``/``rnn_relu`` themselves, so torch.nn's dtypes follow from what runs inside:

* **CUDA**: the fused cells (``_thnn_fused_lstm_cell``/``_thnn_fused_gru_cell``, used
  without cuDNN) and ``lstm_cell``/``gru_cell``/``rnn_tanh_cell``/``rnn_relu_cell`` are
  on the lower-precision list, and cuDNN's whole-layer operator ``_cudnn_rnn`` has its
  own autocast wrapper (``aten/src/ATen/cudnn/AutocastRNN.cpp``): every layer and cell
  computes and returns the autocast dtype, float16 by default. rnnfast's rule: all
  floating arguments to that dtype. One difference is kept on purpose: torch's cuDNN
  wrapper casts to float16 whatever the autocast dtype, so under
  ``torch.autocast("cuda", dtype=torch.bfloat16)`` torch.nn's layers (not its cells)
  return float16, where rnnfast's return the bfloat16 asked for (float16's range is what
  bfloat16 autocast is chosen to avoid).
* **CPU**: only the matrix products (``linear``, ``mm``...) and oneDNN's LSTM layer
  (``mkldnn_rnn_layer``) are on the lower-precision list; the elementwise state update
  runs in the promoted dtype of the products (bfloat16) and the incoming state. Hence,
  with a float32 model and ``torch.autocast("cpu", torch.bfloat16)``:

  ========================================== =============================================
  torch.nn                                   returns
  ========================================== =============================================
  ``RNN``, ``RNNCell``                       bfloat16 (``h' = act(products)``)
  ``GRU``, ``GRUCell``                       float32, the state's dtype
                                             (``h' = (1 - z) * n + z * h``)
  ``LSTM``, padded, no projection, oneDNN    bfloat16 (oneDNN's layer, cast whole)
  ``LSTM`` packed, or with ``proj_size``,    ``c``: the state's dtype; ``h`` and the
  or with oneDNN disabled; ``LSTMCell``      output: ``c``'s, or bfloat16 after the
                                             projection
  ========================================== =============================================

  rnnfast's rule for each operator is that table, read from its arguments: the state
  dtype is that of ``hx``/``cx`` (the layers create zero states in the input's dtype, as
  torch.nn's do), the form (packed or not) and ``w_hr`` tell the LSTM cases apart. The
  LSTM cell runs its step in the packed form under CPU autocast
  (:func:`rnnfast.ops.lstm_cell`) to get the cell's row of the table. Where torch
  computes a product in bfloat16 but keeps the state in float32, rnnfast computes in
  float32 (its kernels do not mix dtypes): same dtype, values within bfloat16 rounding of
  torch.nn's and closer to the float32 result.

Float64 arguments are never cast (autocast leaves float64 alone). CPU float16 autocast
(``torch.autocast("cpu", torch.float16)``), where the table asks for float16 (no rnnfast
CPU kernel), runs :mod:`rnnfast.reference`'s plain-torch code in float16.

The kernels are registered for the ``AutocastCPU`` and ``AutocastCUDA`` dispatch keys of
each namespace's ``lstm_forward``, ``gru_forward`` and ``rnn_forward`` (C++ kernels via
``torch.library.Library``, and the same functions as Python-dispatcher kernels for
tracing). The backward operators need none: they receive the forward's dtypes.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _registry, reference

__all__ = ["autocast_dtypes", "register"]

#: Positions in the forward operators' arguments (csrc/core/schemas.h).
_HX, _LSTM_CX, _LSTM_W_HR, _LSTM_BATCH_SIZES = 1, 2, 7, 8
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _onednn_lstm(input: Tensor) -> bool:
    """Whether torch.nn.LSTM runs this padded, projection-free input through oneDNN's
    layer operator, which autocast casts whole (aten's ``use_mkldnn``: oneDNN enabled, a
    float32, bfloat16 or float16 input). torch decides once per stack, on the module's
    input; here each layer's input is seen, which above the first layer is already in the
    autocast dtype, so every floating dtype but float64 counts (torch's further checks of
    CPU support for the half types are not mirrored)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    return input.dtype in _ONEDNN_DTYPES and input.numel() != 0


def autocast_dtypes(kind: str, device_type: str, args: tuple) -> Optional[tuple]:
    """The dtypes the forward operator of ``kind`` (``"lstm"``, ``"gru"``, ``"rnn"``)
    runs in under ``device_type``'s autocast with these arguments.

    Returns:
        ``None`` to leave the call alone (a float64 argument), else
        ``(compute_dtype, output_dtype)``: every floating argument is cast to
        ``compute_dtype``; the output and ``h_n`` are then cast to ``output_dtype``
        (different only for an LSTM with projection on the CPU, whose cell state stays in
        ``compute_dtype``).
    """
    if any(isinstance(a, Tensor) and a.dtype == torch.float64 for a in args):
        return None
    low = torch.get_autocast_dtype(device_type)
    if device_type != "cpu" or kind == "rnn":
        return low, low
    if kind == "gru":
        state = torch.promote_types(args[_HX].dtype, low)
        return state, state
    w_hr, batch_sizes = args[_LSTM_W_HR], args[_LSTM_BATCH_SIZES]
    if w_hr is None and batch_sizes is None and _onednn_lstm(args[0]):
        return low, low
    state = torch.promote_types(args[_LSTM_CX].dtype, low)
    return state, (low if w_hr is not None else state)


def _empty_saved(like: Tensor) -> Tensor:
    return like.new_empty((0,), dtype=torch.float32)


def _composite(kind: str, args: tuple) -> tuple:
    """The operator's results from rnnfast.reference (float16 on the CPU), with empty
    saved buffers: autograd records the plain-torch operations themselves."""
    if kind == "lstm":
        (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse, _) = args
        y, h, c = reference.lstm_layer(input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       batch_sizes, reverse)
        return y, h, c, _empty_saved(y), _empty_saved(y)
    if kind == "gru":
        input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, _ = args
        y, h = reference.gru_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
        return y, h, _empty_saved(y)
    input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, relu = args
    return reference.rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse,
                               "relu" if relu else "tanh")


def _kernel(ns: str, op: Any, kind: str, device_type: str, key: Any) -> Callable:
    def autocast_kernel(*args: Any) -> tuple:
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            dtypes = autocast_dtypes(kind, device_type, args)
            if dtypes is None:
                return op(*args)
            compute, output = dtypes
            args = tuple(a.to(compute) if isinstance(a, Tensor) and a.is_floating_point()
                         else a for a in args)
            if ns == "rnnfast" and device_type == "cpu" and compute == torch.float16:
                result = _composite(kind, args)
            else:
                result = op(*args)
            if output != compute:
                result = (result[0].to(output), result[1].to(output), *result[2:])
            return tuple(result)

    return autocast_kernel


def register(ns: str) -> None:
    """Register the autocast kernels (CPU and CUDA) of namespace ``ns``'s forward
    operators (``rnnfast``, or the emulator's ``rnnfast_emu``).

    The registration reads torch internals (dispatch keys, Python-dispatcher kernels); if a
    torch lacks one, rnnfast still imports, without autocast kernels, and says so: under
    ``torch.autocast`` the layers then need inputs, states and weights of one dtype."""
    try:
        _register(ns)
    except (AttributeError, ImportError, TypeError) as error:
        warnings.warn(f"rnnfast: autocast kernels of the {ns} operators not registered "
                      f"({type(error).__name__}: {error}); under torch.autocast rnnfast's "
                      "layers and cells will not cast their arguments.", UserWarning)


def _register(ns: str) -> None:
    lib = _registry.library(ns)
    for kind, name, op in _registry.forward_ops(ns):
        for device_type in ("cpu", "cuda"):
            key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
            key = getattr(torch._C.DispatchKey, key_name)
            kernel = _kernel(ns, op, kind, device_type, key)
            lib.impl(name, lambda _keyset, *args, _k=kernel: _k(*args), key_name,
                     with_keyset=True)
            if op.has_kernel_for_dispatch_key(key):
                op.py_kernels.pop(key, None)
            op.py_impl(key)(kernel)

"""Functional form of rnnfast's recurrent layers (whole stacks, all options).

These functions take the parameters explicitly and run a multi-layer, optionally
bidirectional stack with one fused operator call per layer and direction; the
modules in :mod:`rnnfast.modules` are thin wrappers around them.

:func:`lstm` and :func:`gru` also take the options beyond torch.nn (layer
normalisation, zoneout, recurrent and weight dropout), with the formulas and the mask
draw order of :mod:`rnnfast.reference`: the same seed gives the same masks, and so the
same results, as :func:`rnnfast.reference.lstm`/:func:`~rnnfast.reference.gru`.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from . import ops
# The loop over layers and directions, and the drawing of the options' masks in their
# documented order, are the reference's (plain torch, one definition each).
from .reference import LayerMasks, LayerNormParams, _any_option, _layers, _options_params

__all__ = ["lstm", "gru", "rnn"]

# Parameters of one (layer, direction): w_ih, w_hh, b_ih, b_hh, w_hr (None where
# absent; GRU and RNN have no w_hr).
LayerParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]
GateParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]


def lstm(input: Tensor, hx: Tensor, cx: Tensor, params: Sequence[LayerParams], num_layers: int,
         bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
         batch_sizes: Optional[Tensor] = None, *,
         layer_norm: Optional[Sequence[LayerNormParams]] = None, zoneout: float = 0.0,
         recurrent_dropout: float = 0.0, weight_dropout: float = 0.0,
         masks: Optional[Sequence[Optional[LayerMasks]]] = None
         ) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-layer LSTM over a time-major or packed sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) with ``batch_sizes``.
        hx: (L*D, B, P) initial hidden states (D = 2 if bidirectional else 1).
        cx: (L*D, B, H) initial cell states.
        params: L*D tuples ``(w_ih, w_hh, b_ih, b_hh, w_hr)``, layer-major,
            forward direction before reverse, as in torch.nn.LSTM.
        num_layers: L.
        bidirectional: run a reverse direction too and concatenate features.
        dropout: dropout probability on the outputs of each layer but the last.
        training: apply dropout (only when True).
        batch_sizes: PackedSequence batch sizes (T,) int64 CPU, or None.
        layer_norm: one ``(w_ln_ih, w_ln_hh, w_ln_c, b_ln_c)`` tuple per layer and
            direction (same order as ``params``; shapes (4H,), (4H,), (H,), (H,)) for the
            layer-normalised LSTM, or None.
        zoneout: zoneout probability of h and c, in [0, 1): training draws masks,
            evaluation mixes ``p * old + (1 - p) * new``.
        recurrent_dropout: variational dropout of h where it enters ``w_hh``, in [0, 1);
            training only.
        weight_dropout: DropConnect on ``w_hh``, in [0, 1); training only.
        masks: training only: one :class:`rnnfast.reference.LayerMasks` (or None) per
            layer and direction, used instead of drawing any.

    Returns:
        ``(output, h_n, c_n)``: output (T, B, D*P) or (N, D*P); h_n (L*D, B, P);
        c_n (L*D, B, H).

    With options, each layer and direction is one :func:`rnnfast.ops.lstm_layer` call
    with its ``layer_norm``, ``masks`` and ``zoneout``; in training mode its masks are
    drawn (:func:`rnnfast.reference.draw_masks`) just before it runs.
    """
    if not _any_option(layer_norm, zoneout, recurrent_dropout, weight_dropout, masks):
        def layer_fn(x, state, p, bs, reverse):
            out, h, c = ops.lstm_layer(x, state[0], state[1], *p, batch_sizes=bs,
                                       reverse=reverse)
            return out, (h, c)

        stack_params: Sequence = params
    else:
        def run(x, state, p, bs, reverse, ln, layer_masks, p_zoneout):
            out, h, c = ops.lstm_layer(x, state[0], state[1], *p, batch_sizes=bs,
                                       reverse=reverse, layer_norm=ln, masks=layer_masks,
                                       zoneout=p_zoneout)
            return out, (h, c)

        layer_fn, stack_params = _options_params(
            run, params, 4, True, training, layer_norm, zoneout, recurrent_dropout,
            weight_dropout, masks)
    output, (h_n, c_n) = _layers(layer_fn, input, (hx, cx), stack_params, num_layers,
                                 bidirectional, dropout, training, batch_sizes)
    return output, h_n, c_n


def gru(input: Tensor, hx: Tensor, params: Sequence[GateParams], num_layers: int,
        bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
        batch_sizes: Optional[Tensor] = None, *,
        layer_norm: Optional[Sequence[LayerNormParams]] = None, zoneout: float = 0.0,
        recurrent_dropout: float = 0.0, weight_dropout: float = 0.0,
        masks: Optional[Sequence[Optional[LayerMasks]]] = None) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU over a time-major or packed sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) with ``batch_sizes``.
        hx: (L*D, B, H) initial hidden states.
        params: L*D tuples ``(w_ih, w_hh, b_ih, b_hh)``, layer-major, forward
            direction first, torch.nn.GRU layout (gates r, z, n).
        num_layers, bidirectional, dropout, training, batch_sizes: as :func:`lstm`.
        layer_norm: one ``(w_ln_ih, w_ln_hh)`` tuple (each (3H,)) per layer and direction,
            or None.
        zoneout, recurrent_dropout, weight_dropout, masks: as :func:`lstm` (no
            ``zoneout_c`` mask); each layer and direction is then one
            :func:`rnnfast.ops.gru_layer` call with its options.

    Returns:
        ``(output, h_n)``: output (T, B, D*H) or (N, D*H); h_n (L*D, B, H).
    """
    if not _any_option(layer_norm, zoneout, recurrent_dropout, weight_dropout, masks):
        def layer_fn(x, state, p, bs, reverse):
            out, h = ops.gru_layer(x, state[0], *p, batch_sizes=bs, reverse=reverse)
            return out, (h,)

        stack_params: Sequence = params
    else:
        def run(x, state, p, bs, reverse, ln, layer_masks, p_zoneout):
            out, h = ops.gru_layer(x, state[0], *p[:4], batch_sizes=bs, reverse=reverse,
                                   layer_norm=ln, masks=layer_masks, zoneout=p_zoneout)
            return out, (h,)

        layer_fn, stack_params = _options_params(
            run, params, 3, False, training, layer_norm, zoneout, recurrent_dropout,
            weight_dropout, masks)
    output, (h_n,) = _layers(layer_fn, input, (hx,), stack_params, num_layers, bidirectional,
                             dropout, training, batch_sizes)
    return output, h_n


def rnn(input: Tensor, hx: Tensor, params: Sequence[GateParams], num_layers: int,
        nonlinearity: str = "tanh", bidirectional: bool = False, dropout: float = 0.0,
        training: bool = False, batch_sizes: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Multi-layer Elman RNN with ``nonlinearity`` ``"tanh"`` or ``"relu"``.

    Arguments and results as :func:`gru`, with torch.nn.RNN's parameter layout.
    """
    def layer_fn(x, state, p, bs, reverse):
        out, h = ops.rnn_layer(x, state[0], *p, batch_sizes=bs, reverse=reverse,
                               nonlinearity=nonlinearity)
        return out, (h,)

    output, (h_n,) = _layers(layer_fn, input, (hx,), params, num_layers, bidirectional, dropout,
                             training, batch_sizes)
    return output, h_n

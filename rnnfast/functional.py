"""Functional form of rnnfast's recurrent layers (whole stacks, all options).

These functions take the parameters explicitly and run a multi-layer, optionally
bidirectional stack with one fused operator call per layer and direction; the
modules in :mod:`rnnfast.modules` are thin wrappers around them.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from . import ops
# The loop over layers and directions is the reference's (plain torch, one definition).
from .reference import _layers

__all__ = ["lstm", "gru", "rnn"]

# Parameters of one (layer, direction): w_ih, w_hh, b_ih, b_hh, w_hr (None where
# absent; GRU and RNN have no w_hr).
LayerParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]
GateParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]


def lstm(input: Tensor, hx: Tensor, cx: Tensor, params: Sequence[LayerParams], num_layers: int,
         bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
         batch_sizes: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
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

    Returns:
        ``(output, h_n, c_n)``: output (T, B, D*P) or (N, D*P); h_n (L*D, B, P);
        c_n (L*D, B, H).
    """
    def layer_fn(x, state, p, bs, reverse):
        out, h, c = ops.lstm_layer(x, state[0], state[1], *p, batch_sizes=bs, reverse=reverse)
        return out, (h, c)

    output, (h_n, c_n) = _layers(layer_fn, input, (hx, cx), params, num_layers, bidirectional,
                                 dropout, training, batch_sizes)
    return output, h_n, c_n


def gru(input: Tensor, hx: Tensor, params: Sequence[GateParams], num_layers: int,
        bidirectional: bool = False, dropout: float = 0.0, training: bool = False,
        batch_sizes: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU over a time-major or packed sequence.

    Args:
        input: (T, B, I) time-major, or packed data (N, I) with ``batch_sizes``.
        hx: (L*D, B, H) initial hidden states.
        params: L*D tuples ``(w_ih, w_hh, b_ih, b_hh)``, layer-major, forward
            direction first, torch.nn.GRU layout (gates r, z, n).
        num_layers, bidirectional, dropout, training, batch_sizes: as :func:`lstm`.

    Returns:
        ``(output, h_n)``: output (T, B, D*H) or (N, D*H); h_n (L*D, B, H).
    """
    def layer_fn(x, state, p, bs, reverse):
        out, h = ops.gru_layer(x, state[0], *p, batch_sizes=bs, reverse=reverse)
        return out, (h,)

    output, (h_n,) = _layers(layer_fn, input, (hx,), params, num_layers, bidirectional, dropout,
                             training, batch_sizes)
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

"""Functional form of rnnfast's recurrent layers (whole stacks, all options).

These functions take the parameters explicitly and run a multi-layer, optionally
bidirectional stack with one fused operator call per layer and direction; the
modules in :mod:`rnnfast.modules` are thin wrappers around them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops

__all__ = ["lstm"]

# Parameters of one (layer, direction): w_ih, w_hh, b_ih, b_hh, w_hr (None where absent).
LayerParams = tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]


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
    num_directions = 2 if bidirectional else 1
    layer_input = input
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(num_directions):
            idx = layer * num_directions + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = params[idx]
            out, h, c = ops.lstm_layer(layer_input, hx[idx], cx[idx], w_ih, w_hh, b_ih, b_hh,
                                       w_hr, batch_sizes, direction == 1)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
        if dropout > 0.0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return layer_input, torch.stack(h_n, 0), torch.stack(c_n, 0)

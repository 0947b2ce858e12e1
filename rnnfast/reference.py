"""Pure-PyTorch reference implementation of the LSTM: the executable spec of rnnfast.

Everything here is written with plain torch operations and a Python loop over time, so
autograd provides the gradients. It is slow on purpose: the aim is to be obviously right
and easy to read, and every fused kernel in rnnfast is tested against it.

This module imports nothing from the rest of rnnfast, so it works without the compiled
extension.

Shapes (same letters as the kernels' documentation):

- ``T`` time steps, ``B`` batch, ``I`` input size, ``H`` hidden size,
- ``P`` size of the recurrent state ``h``: the projection size if there is a projection
  (``w_hr`` given), otherwise ``H``,
- ``N`` total number of rows of packed data (``sum(batch_sizes)``).

The gate order is PyTorch's: input ``i``, forget ``f``, cell candidate ``g``, output ``o``.
For one step::

    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh        # (B, 4H)
    i, f, g, o = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    c' = f * c + i * g                                    # (B, H)
    h' = o * tanh(c')                                     # (B, H)
    h' = h' @ w_hr.T          (only with a projection)    # (B, P)
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LayerParams", "lstm_cell", "lstm_layer", "lstm", "params_from_module"]

#: Weights of one layer and direction: ``(w_ih, w_hh, b_ih, b_hh, w_hr)``.
#: ``b_ih``/``b_hh`` are ``None`` without bias, ``w_hr`` is ``None`` without projection.
LayerParams = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One LSTM step.

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, P)``.
        c: previous cell state, ``(B, H)``.
        w_ih: input weights, ``(4H, I)``, gate blocks in order i, f, g, o.
        w_hh: recurrent weights, ``(4H, P)``.
        b_ih: input bias ``(4H,)`` or ``None``.
        b_hh: recurrent bias ``(4H,)`` or ``None``.
        w_hr: projection weights ``(P, H)`` or ``None``.

    Returns:
        ``(h_new, c_new)`` with shapes ``(B, P)`` and ``(B, H)``.
    """
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Run one layer in one direction over a whole sequence.

    Args:
        x: time-major input ``(T, B, I)``, or, when ``batch_sizes`` is given, packed data
            ``(N, I)`` laid out like ``PackedSequence.data`` (step 0's rows, then step 1's...).
        h0: initial hidden state ``(B, P)``; for packed input ``B = batch_sizes[0]``.
        c0: initial cell state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh, w_hr: as in :func:`lstm_cell`.
        batch_sizes: ``None`` for padded input, else a 1-D int64 tensor of length ``T``
            whose entries are non-increasing (as in ``PackedSequence``): at step ``t`` the
            first ``batch_sizes[t]`` rows of the state are active.
        reverse: walk the sequence from its last step to its first.

    Returns:
        ``(y, h_n, c_n)``: ``y`` is ``(T, B, P)`` (or ``(N, P)`` packed), with the output of
        step ``t`` stored at step ``t`` in both directions; ``h_n``/``c_n`` are ``(B, P)``
        and ``(B, H)``, each sequence's state after the last step it took part in.

    Packed sequences: rows stay in a full ``(B, .)`` state tensor. A step updates only its
    first ``batch_sizes[t]`` rows and leaves the others untouched, which gives both
    directions their meaning with one loop:

    - forward, a sequence that has ended keeps its last state (its final state);
    - reverse, a sequence that has not started yet still holds its ``h0``/``c0``, which it
      picks up at its own last step, the first one it processes; every sequence ends at
      step 0, so the final states are the states after step 0.
    """
    if batch_sizes is None:
        steps = x.shape[0]
        sizes: List[int] = [x.shape[1]] * steps
        xs = list(x.unbind(0))  # T tensors of (B, I)
    else:
        sizes = [int(b) for b in batch_sizes.tolist()]
        steps = len(sizes)
        xs = list(x.split(sizes, dim=0))  # T tensors of (batch_sizes[t], I)

    h, c = h0, c0
    ys: List[Optional[Tensor]] = [None] * steps
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        b = sizes[t]
        h_t, c_t = lstm_cell(xs[t], h[:b], c[:b], w_ih, w_hh, b_ih, b_hh, w_hr)
        ys[t] = h_t
        # Active rows take the new state, inactive rows keep theirs.
        h = torch.cat([h_t, h[b:]], dim=0)
        c = torch.cat([c_t, c[b:]], dim=0)

    if batch_sizes is None:
        if steps == 0:
            y = x.new_empty((0, x.shape[1], h0.shape[-1]))
        else:
            y = torch.stack(ys, dim=0)  # type: ignore[arg-type]
    else:
        y = torch.cat(ys, dim=0) if steps else x.new_empty((0, h0.shape[-1]))  # type: ignore[arg-type]
    return y, h, c


def lstm(
    input: Tensor,
    hx: Optional[Tuple[Tensor, Tensor]],
    params: Sequence[LayerParams],
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    dropout: float = 0.0,
    training: bool = False,
    batch_sizes: Optional[Tensor] = None,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """A multi-layer, optionally bidirectional LSTM, with the semantics of ``torch.nn.LSTM``.

    Args:
        input: ``(T, B, I)`` (``(B, T, I)`` if ``batch_first``), unbatched ``(T, I)`` (in
            both layouts), or
            packed data ``(N, I)`` when ``batch_sizes`` is given (``batch_first`` is then
            ignored, as for ``PackedSequence``).
        hx: ``(h0, c0)`` of shapes ``(L*D, B, P)`` and ``(L*D, B, H)`` (without the batch
            dimension for unbatched input; in the packed batch order for packed input), or
            ``None`` for zeros. Index ``l*D + d`` is layer ``l``, direction ``d``.
        params: one :data:`LayerParams` tuple per layer and direction, in the order
            ``l*D + d`` (see :func:`params_from_module`).
        num_layers: ``L``.
        bidirectional: ``D = 2`` if true, else ``1``.
        batch_first: layout of ``input`` and of the output (padded input only).
        dropout: probability of dropout on the outputs of every layer but the last.
        training: dropout is applied only when training.
        batch_sizes: ``None``, or the ``PackedSequence.batch_sizes`` of packed ``input``.

    Returns:
        ``(output, (h_n, c_n))``: output ``(T, B, D*P)`` (same layout as ``input``, or
        ``(N, D*P)`` packed), ``h_n`` ``(L*D, B, P)``, ``c_n`` ``(L*D, B, H)``.
    """
    num_directions = 2 if bidirectional else 1
    assert len(params) == num_layers * num_directions

    unbatched = batch_sizes is None and input.dim() == 2
    batch_dim = 0 if batch_first else 1
    if unbatched:  # (T, I) in either layout: add the batch dimension where it belongs
        input = input.unsqueeze(batch_dim)
        if hx is not None:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
    if batch_first and batch_sizes is None:
        input = input.transpose(0, 1)

    if batch_sizes is None:
        batch = input.shape[1]
    else:
        batch = int(batch_sizes[0]) if len(batch_sizes) > 0 else 0
    hidden_size = params[0][1].shape[0] // 4  # w_hh is (4H, P)
    state_size = params[0][1].shape[1]
    if hx is None:
        zeros = dict(dtype=input.dtype, device=input.device)
        h0 = torch.zeros(num_layers * num_directions, batch, state_size, **zeros)
        c0 = torch.zeros(num_layers * num_directions, batch, hidden_size, **zeros)
    else:
        h0, c0 = hx

    h_n: List[Tensor] = []
    c_n: List[Tensor] = []
    layer_input = input
    for layer in range(num_layers):
        if layer > 0 and dropout > 0.0 and training:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
        outputs = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = params[k]
            y, h, c = lstm_layer(
                layer_input, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_hr,
                batch_sizes=batch_sizes, reverse=direction == 1,
            )
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)

    output = layer_input
    h_out = torch.stack(h_n, dim=0)
    c_out = torch.stack(c_n, dim=0)
    if batch_first and batch_sizes is None:
        output = output.transpose(0, 1)
    if unbatched:
        output = output.squeeze(batch_dim)
        h_out = h_out.squeeze(1)
        c_out = c_out.squeeze(1)
    return output, (h_out, c_out)


def params_from_module(m: torch.nn.Module) -> List[LayerParams]:
    """Collect the weights of a ``torch.nn.LSTM``-like module for :func:`lstm`.

    Parameters are looked up by torch.nn.LSTM's names: ``weight_ih_l{k}{suffix}``,
    ``weight_hh_l{k}{suffix}``, ``bias_ih_l{k}{suffix}``, ``bias_hh_l{k}{suffix}`` and
    ``weight_hr_l{k}{suffix}`` with ``suffix`` ``""`` or ``"_reverse"``; missing biases or
    projections become ``None``.

    Returns:
        One ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` tuple per layer and direction, in the order
        ``layer * num_directions + direction``.
    """
    num_directions = 2 if getattr(m, "bidirectional", False) else 1
    params: List[LayerParams] = []
    for layer in range(m.num_layers):
        for direction in range(num_directions):
            sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            params.append((
                getattr(m, "weight_ih" + sfx),
                getattr(m, "weight_hh" + sfx),
                getattr(m, "bias_ih" + sfx, None),
                getattr(m, "bias_hh" + sfx, None),
                getattr(m, "weight_hr" + sfx, None),
            ))
    return params

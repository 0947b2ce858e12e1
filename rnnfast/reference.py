"""Pure-PyTorch reference implementation of rnnfast's recurrent layers (LSTM, GRU and
the Elman RNN with tanh or ReLU): the executable spec of rnnfast.

Everything here is written with plain torch operations and a Python loop over time, so
autograd provides the gradients. It is slow on purpose: the aim is to be obviously right
and easy to read, and every fused kernel in rnnfast is tested against it.

This module imports nothing from the rest of rnnfast, so it works without the compiled
extension.

Shapes (same letters as the kernels' documentation):

- ``T`` time steps, ``B`` batch, ``I`` input size, ``H`` hidden size,
- ``P`` size of the recurrent state ``h``: the projection size if there is a projection
  (LSTM only, ``w_hr`` given), otherwise ``H``,
- ``N`` total number of rows of packed data (``sum(batch_sizes)``).

Gate orders are PyTorch's. One LSTM step (gates input ``i``, forget ``f``, cell candidate
``g``, output ``o``)::

    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh        # (B, 4H)
    i, f, g, o = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    c' = f * c + i * g                                    # (B, H)
    h' = o * tanh(c')                                     # (B, H)
    h' = h' @ w_hr.T          (only with a projection)    # (B, P)

One GRU step (PyTorch's variant, gates reset ``r``, update ``z``, new ``n``; the reset
gate multiplies the recurrent product *after* the matmul, bias included)::

    gi = x @ w_ih.T + b_ih                                # (B, 3H): [gi_r, gi_z, gi_n]
    gh = h @ w_hh.T + b_hh                                # (B, 3H): [gh_r, gh_z, gh_n]
    r = sigmoid(gi_r + gh_r)
    z = sigmoid(gi_z + gh_z)
    n = tanh(gi_n + r * gh_n)
    h' = (1 - z) * n + z * h                              # (B, H)

One Elman RNN step (``act`` is tanh or relu)::

    h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)       # (B, H)

Options beyond torch.nn
-----------------------

``G`` is the number of gate blocks (4 LSTM, 3 GRU, 1 RNN). ``LN(v; w, b)`` normalises
over the last dimension with the biased variance and ``eps = 1e-5`` (:data:`LN_EPS`)::

    LN(v; w, b) = w * (v - mean(v)) / sqrt(var(v) + 1e-5) + b

Layer normalisation (``layer_norm``, LSTM and GRU). One LSTM step; the cell state that is
carried is ``c'``, not its normalised value, and each LN of the gates runs over all 4H
columns together::

    gates = LN(x @ w_ih.T; w_ln_ih, 0) + LN(h @ w_hh.T; w_ln_hh, 0) + b_ih + b_hh
    i, f, g, o = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    c' = f * c + i * g
    h' = o * tanh(LN(c'; w_ln_c, b_ln_c))
    h' = h' @ w_hr.T          (only with a projection)

One GRU step (each LN over 3H)::

    gi = LN(x @ w_ih.T; w_ln_ih, 0) + b_ih
    gh = LN(h @ w_hh.T; w_ln_hh, 0) + b_hh
    r, z, n, h' as above

The parameters of layer ``k`` in direction suffix ``s`` (``""`` or ``"_reverse"``) are
``weight_ln_ih_l{k}{s}`` (GH), ``weight_ln_hh_l{k}{s}`` (GH) and, LSTM only,
``weight_ln_c_l{k}{s}`` (H) and ``bias_ln_c_l{k}{s}`` (H); see
:func:`layer_norm_params_from_module`.

Weight dropout (``weight_dropout = p``, DropConnect on ``w_hh``; training only): one mask
``Mw`` of ``w_hh``'s shape ``(GH, P)`` per call, layer and direction; every step uses
``w_hh * Mw`` in place of ``w_hh`` (so gradients reach ``w_hh`` through the mask).

Recurrent dropout (``recurrent_dropout = p``, variational; training only): one mask ``Mr``
``(B, P)`` per call, layer and direction, applied to ``h`` where it enters the recurrent
product only: ``(h * Mr) @ w_hh.T`` replaces ``h @ w_hh.T``. The carried state (the GRU's
``z * h`` term) and the output are not dropped.

Zoneout (``zoneout = p``): after the step, each state element keeps its previous value
with probability ``p``. Training, with boolean masks ``Zh`` ``(T, B, P)`` and (LSTM)
``Zc`` ``(T, B, H)``, True meaning "keep"::

    h_t = where(Zh[t], h_{t-1}, h'_t)        c_t = where(Zc[t], c_{t-1}, c'_t)

Evaluation (no masks)::

    h_t = p * h_{t-1} + (1 - p) * h'_t       c_t = p * c_{t-1} + (1 - p) * c'_t

``h'_t``/``c'_t`` are the step's results above (with a projection, ``h`` is the projected
state); the output at step ``t`` is the zoned-out ``h_t``. ``Zh[t]`` belongs to time step
``t`` in both directions (the reverse direction reads ``Zh[T-1]`` first). For packed input
``T = len(batch_sizes)``, ``B = batch_sizes[0]`` and step ``t`` uses the first
``batch_sizes[t]`` rows of each mask; for unbatched input ``B = 1``.

Draw order (:func:`draw_masks`, called by :func:`lstm`, :func:`gru` and :func:`rnn` in
training mode): for each layer, forward direction then reverse, the masks of that layer
and direction are drawn just before it runs, from torch's default generator of the input's
device, in float32, in this order (a mask is drawn only when its probability is > 0)::

    Mw = (torch.rand(G*H, P) >= weight_dropout).float() / (1 - weight_dropout)
    Mr = (torch.rand(B, P) >= recurrent_dropout).float() / (1 - recurrent_dropout)
    Zh = torch.rand(T, B, P) < zoneout
    Zc = torch.rand(T, B, H) < zoneout                   (LSTM only)

torch.nn's inter-layer ``dropout`` keeps its place: it is drawn on a layer's output after
both of that layer's directions ran, so before the masks of the next layer. Float masks
are float32 tensors, converted to the computation's dtype where they are applied. The
same seed gives the same masks, and so the same results, on any device for which
``torch.rand`` agrees. Explicit masks (:class:`LayerMasks`, argument ``masks``) replace
the draws, so that other implementations can be tested on the very same masks.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LayerParams", "CellParams", "NONLINEARITIES",
    "lstm_cell", "gru_cell", "rnn_cell",
    "lstm_layer", "gru_layer", "rnn_layer",
    "lstm", "gru", "rnn",
    "params_from_module", "cell_params_from_module",
    "LN_EPS", "LayerNormParams", "LayerMasks", "layer_norm", "zoneout_step", "draw_masks",
    "layer_norm_params_from_module", "cell_layer_norm_params_from_module",
    "LAYER_NORM_NAMES",
]

#: Weights of one layer and direction: ``(w_ih, w_hh, b_ih, b_hh, w_hr)``.
#: ``b_ih``/``b_hh`` are ``None`` without bias, ``w_hr`` is ``None`` without projection
#: (always ``None`` for GRU and RNN, which have no projection).
LayerParams = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]

#: Weights of a single cell (``torch.nn.LSTMCell``/``GRUCell``/``RNNCell``):
#: ``(w_ih, w_hh, b_ih, b_hh)``, biases ``None`` without bias.
CellParams = Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]

#: The Elman RNN's activations, by torch.nn.RNN's ``nonlinearity`` names.
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}

#: One time step of a recurrence: ``(x_t, states) -> new_states``. ``x_t`` is ``(b, I)``
#: and every state ``(b, .)`` for the ``b`` active rows; ``new_states[0]`` is the step's
#: output (``h``).
Step = Callable[[Tensor, Tuple[Tensor, ...]], Tuple[Tensor, ...]]

#: The eps of every layer normalisation (torch.nn.LayerNorm's default).
LN_EPS = 1e-5

#: Layer-normalisation weights of one layer and direction (or one cell):
#: LSTM ``(w_ln_ih, w_ln_hh, w_ln_c, b_ln_c)`` of shapes ``(4H,)``, ``(4H,)``, ``(H,)``,
#: ``(H,)``; GRU ``(w_ln_ih, w_ln_hh)`` of shapes ``(3H,)``, ``(3H,)``.
LayerNormParams = Tuple[Tensor, ...]


class LayerMasks(NamedTuple):
    """The training-mode masks of one layer and direction (see the module docstring).
    ``None`` leaves that regularisation out."""

    #: Weight dropout: multiplier of ``w_hh``, ``(G*H, P)``.
    weight: Optional[Tensor] = None
    #: Recurrent dropout: multiplier of ``h`` where it enters ``w_hh``, ``(B, P)``.
    recurrent: Optional[Tensor] = None
    #: Zoneout of ``h``: boolean ``(T, B, P)``, True keeps the previous value.
    zoneout_h: Optional[Tensor] = None
    #: Zoneout of the LSTM's ``c``: boolean ``(T, B, H)``.
    zoneout_c: Optional[Tensor] = None


def layer_norm(v: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``LN(v; weight, bias)``: normalise over the last dimension (biased variance,
    ``eps`` :data:`LN_EPS`), then scale by ``weight`` and shift by ``bias`` (none if
    ``None``)."""
    return F.layer_norm(v, (v.shape[-1],), weight, bias, LN_EPS)


def zoneout_step(prev: Tensor, new: Tensor, p: float, mask: Optional[Tensor] = None) -> Tensor:
    """Zoneout of one state after one step: ``where(mask, prev, new)`` with a (training)
    ``mask`` (True or non-zero keeps ``prev``), else ``p * prev + (1 - p) * new``
    (evaluation; ``new`` itself when ``p == 0``)."""
    if mask is not None:
        return torch.where(mask != 0, prev, new)
    if p == 0.0:
        return new
    return p * prev + (1 - p) * new


def _mask_like(mask: Optional[Tensor], t: Tensor) -> Optional[Tensor]:
    """A float mask in ``t``'s dtype (masks are drawn in float32)."""
    return None if mask is None else mask.to(t.dtype)


# ---------------------------------------------------------------------------- cells

def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    w_hr: Optional[Tensor] = None,
    *,
    layer_norm: Optional[LayerNormParams] = None,
    recurrent_mask: Optional[Tensor] = None,
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
        layer_norm: ``(w_ln_ih, w_ln_hh, w_ln_c, b_ln_c)`` for the layer-normalised LSTM
            (see the module docstring), or ``None``.
        recurrent_mask: recurrent-dropout multiplier ``(B, P)`` of ``h`` in the recurrent
            product, or ``None``.

    Returns:
        ``(h_new, c_new)`` with shapes ``(B, P)`` and ``(B, H)``.
    """
    if recurrent_mask is not None:  # h enters the LSTM step only through w_hh
        h = h * _mask_like(recurrent_mask, h)
    if layer_norm is None:
        gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H)
    else:
        gates = (_layer_norm(F.linear(x, w_ih), layer_norm[0])
                 + _layer_norm(F.linear(h, w_hh), layer_norm[1]))
        gates = _add_bias(_add_bias(gates, b_ih), b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c_new = f * c + i * g
    if layer_norm is None:
        h_new = o * torch.tanh(c_new)
    else:
        h_new = o * torch.tanh(_layer_norm(c_new, layer_norm[2], layer_norm[3]))
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def gru_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    *,
    layer_norm: Optional[LayerNormParams] = None,
    recurrent_mask: Optional[Tensor] = None,
) -> Tensor:
    """One GRU step, PyTorch's variant (reset gate applied after the recurrent matmul).

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, H)``.
        w_ih: input weights, ``(3H, I)``, gate blocks in order r, z, n.
        w_hh: recurrent weights, ``(3H, H)``.
        b_ih: input bias ``(3H,)`` or ``None``.
        b_hh: recurrent bias ``(3H,)`` or ``None``.
        layer_norm: ``(w_ln_ih, w_ln_hh)`` for the layer-normalised GRU, or ``None``.
        recurrent_mask: recurrent-dropout multiplier ``(B, H)`` of ``h`` in the recurrent
            product (not in the carried ``z * h`` term), or ``None``.

    Returns:
        ``h_new``, ``(B, H)``.
    """
    h_in = h if recurrent_mask is None else h * _mask_like(recurrent_mask, h)
    if layer_norm is None:
        gi = F.linear(x, w_ih, b_ih)  # (B, 3H)
        gh = F.linear(h_in, w_hh, b_hh)  # (B, 3H)
    else:
        gi = _add_bias(_layer_norm(F.linear(x, w_ih), layer_norm[0]), b_ih)
        gh = _add_bias(_layer_norm(F.linear(h_in, w_hh), layer_norm[1]), b_hh)
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)  # 3 x (B, H)
    gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(gi_r + gh_r)
    z = torch.sigmoid(gi_z + gh_z)
    n = torch.tanh(gi_n + r * gh_n)  # b_hn stays inside the product with r
    return (1 - z) * n + z * h


def rnn_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    nonlinearity: str = "tanh",
    *,
    recurrent_mask: Optional[Tensor] = None,
) -> Tensor:
    """One Elman RNN step: ``h' = act(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)``.

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, H)``.
        w_ih: input weights, ``(H, I)``.
        w_hh: recurrent weights, ``(H, H)``.
        b_ih: input bias ``(H,)`` or ``None``.
        b_hh: recurrent bias ``(H,)`` or ``None``.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        recurrent_mask: recurrent-dropout multiplier ``(B, H)`` of ``h`` in the recurrent
            product, or ``None``.

    Returns:
        ``h_new``, ``(B, H)``.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    act = NONLINEARITIES[nonlinearity]
    if recurrent_mask is not None:
        h = h * _mask_like(recurrent_mask, h)
    return act(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


def _layer_norm(v: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return layer_norm(v, weight, bias)


def _add_bias(v: Tensor, bias: Optional[Tensor]) -> Tensor:
    return v if bias is None else v + bias


# ------------------------------------------------------------ one layer, one direction

def _scan(
    step: Step,
    x: Tensor,
    states: Tuple[Tensor, ...],
    batch_sizes: Optional[Tensor],
    reverse: bool,
    indexed: bool = False,
) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """Run ``step`` over a whole sequence: the time loop shared by all layer kinds.

    Args:
        step: one time step, see :data:`Step`.
        x: time-major ``(T, B, I)``, or packed ``(N, I)`` when ``batch_sizes`` is given.
        states: the initial states, each ``(B, .)``; ``states[0]`` is ``h``, whose new
            value is the step's output.
        batch_sizes: ``None`` for padded input, else the non-increasing per-step batch
            sizes of packed input (see :func:`lstm_layer`).
        reverse: walk the sequence from its last step to its first.
        indexed: call ``step(x_t, states, t)`` with the time step ``t`` (for per-step
            masks) instead of ``step(x_t, states)``.

    Returns:
        ``(y, final_states)``: ``y`` is ``(T, B, P)`` or ``(N, P)`` (``P`` the width of
        ``states[0]``), the output of step ``t`` stored at step ``t`` in both directions.

    Packed sequences: rows stay in full ``(B, .)`` state tensors. A step updates only its
    first ``batch_sizes[t]`` rows and leaves the others untouched, which gives both
    directions their meaning with one loop:

    - forward, a sequence that has ended keeps its last state (its final state);
    - reverse, a sequence that has not started yet still holds its initial state, which
      it picks up at its own last step, the first one it processes; every sequence ends
      at step 0, so the final states are the states after step 0.
    """
    if batch_sizes is None:
        steps = x.shape[0]
        sizes: List[int] = [x.shape[1]] * steps
        xs = list(x.unbind(0))  # T tensors of (B, I)
    else:
        sizes = [int(b) for b in batch_sizes.tolist()]
        steps = len(sizes)
        xs = list(x.split(sizes, dim=0))  # T tensors of (batch_sizes[t], I)

    ys: List[Optional[Tensor]] = [None] * steps
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        b = sizes[t]
        active = tuple(s[:b] for s in states)
        new = step(xs[t], active, t) if indexed else step(xs[t], active)  # type: ignore[call-arg]
        ys[t] = new[0]
        # Active rows take the new state, inactive rows keep theirs.
        states = tuple(torch.cat([n, s[b:]], dim=0) for n, s in zip(new, states))

    width = states[0].shape[-1]
    if steps == 0:
        shape = (0, x.shape[1], width) if batch_sizes is None else (0, width)
        y = x.new_empty(shape)
    elif batch_sizes is None:
        y = torch.stack(ys, dim=0)  # type: ignore[arg-type]
    else:
        y = torch.cat(ys, dim=0)  # type: ignore[arg-type]
    return y, states


def _scan_h(
    cell: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    h0: Tensor,
    batch_sizes: Optional[Tensor],
    reverse: bool,
) -> Tuple[Tensor, Tensor]:
    """:func:`_scan` for a recurrence whose only state is ``h``: ``cell(x_t, h) -> h'``.
    Returns ``(y, h_n)``."""
    y, (h,) = _scan(lambda x_t, state: (cell(x_t, state[0]),), x, (h0,), batch_sizes, reverse)
    return y, h


#: One step with recurrent dropout: ``(x_t, states, recurrent_mask) -> new_states``, the
#: mask ``(b, P)`` (already cut to the active rows) or ``None``.
MaskedStep = Callable[[Tensor, Tuple[Tensor, ...], Optional[Tensor]], Tuple[Tensor, ...]]


def _has_options(masks: Optional[LayerMasks], zoneout: float,
                 layer_norm: Optional[LayerNormParams] = None) -> bool:
    return (layer_norm is not None or zoneout != 0.0
            or (masks is not None and any(m is not None for m in masks)))


def _check_layer_masks(masks: LayerMasks, x: Tensor, states: Tuple[Tensor, ...],
                       w_hh: Tensor, batch_sizes: Optional[Tensor]) -> None:
    """Shapes of explicit masks against the layer's: ValueError naming the mask."""
    if batch_sizes is None:
        steps = x.shape[0]
    else:
        steps = len(batch_sizes)
    batch = states[0].shape[0]
    width, hidden = states[0].shape[-1], states[-1].shape[-1]
    expected = {
        "weight": tuple(w_hh.shape),
        "recurrent": (batch, width),
        "zoneout_h": (steps, batch, width),
        "zoneout_c": (steps, batch, hidden),
    }
    for name, mask in zip(LayerMasks._fields, masks):
        if mask is None:
            continue
        if name == "zoneout_c" and len(states) == 1:
            raise ValueError("masks.zoneout_c: only the LSTM has a cell state to zone out")
        if tuple(mask.shape) != expected[name]:
            raise ValueError(f"masks.{name}: expected shape {expected[name]}, "
                             f"got {tuple(mask.shape)}")


def _scan_options(
    cell: MaskedStep,
    x: Tensor,
    states: Tuple[Tensor, ...],
    batch_sizes: Optional[Tensor],
    reverse: bool,
    masks: Optional[LayerMasks],
    zoneout: float,
) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """:func:`_scan` with recurrent dropout and zoneout (weight dropout and layer
    normalisation are the caller's, inside ``cell``).

    ``masks.recurrent`` (rows cut to the active ones) goes to ``cell``; with
    ``masks.zoneout_h``/``zoneout_c`` given, states zone out with those training masks
    (a state without a mask does not), otherwise with ``zoneout > 0`` every state mixes
    in evaluation form (:func:`zoneout_step`)."""
    masks = LayerMasks() if masks is None else masks
    recurrent = masks.recurrent
    zone_masks = (masks.zoneout_h, masks.zoneout_c)[:len(states)]
    training_zoneout = any(m is not None for m in zone_masks)
    p = 0.0 if training_zoneout else zoneout

    def step(x_t: Tensor, state: Tuple[Tensor, ...], t: int) -> Tuple[Tensor, ...]:
        b = x_t.shape[0]
        new = cell(x_t, state, None if recurrent is None else recurrent[:b])
        return tuple(zoneout_step(prev, nxt, p, None if m is None else m[t, :b])
                     for prev, nxt, m in zip(state, new, zone_masks))

    return _scan(step, x, states, batch_sizes, reverse, indexed=True)


def _dropped_weight(w_hh: Tensor, masks: Optional[LayerMasks]) -> Tensor:
    """``w_hh``, times the weight-dropout mask if there is one."""
    if masks is None or masks.weight is None:
        return w_hh
    return w_hh * _mask_like(masks.weight, w_hh)


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
    *,
    layer_norm: Optional[LayerNormParams] = None,
    masks: Optional[LayerMasks] = None,
    zoneout: float = 0.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Run one LSTM layer in one direction over a whole sequence.

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
        layer_norm: ``(w_ln_ih, w_ln_hh, w_ln_c, b_ln_c)`` for the layer-normalised LSTM,
            or ``None``.
        masks: training-mode weight-dropout, recurrent-dropout and zoneout masks
            (:class:`LayerMasks`, shapes checked), or ``None``.
        zoneout: zoneout probability of the evaluation form, used only when ``masks``
            has no zoneout mask.

    Returns:
        ``(y, h_n, c_n)``: ``y`` is ``(T, B, P)`` (or ``(N, P)`` packed), with the output of
        step ``t`` stored at step ``t`` in both directions; ``h_n``/``c_n`` are ``(B, P)``
        and ``(B, H)``, each sequence's state after the last step it took part in (see
        :func:`_scan` for what this means for packed sequences in each direction).
    """
    if not _has_options(masks, zoneout, layer_norm):
        def step(x_t: Tensor, state: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
            return lstm_cell(x_t, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_hr)

        y, (h, c) = _scan(step, x, (h0, c0), batch_sizes, reverse)
        return y, h, c

    if masks is not None:
        _check_layer_masks(masks, x, (h0, c0), w_hh, batch_sizes)
    w_rec = _dropped_weight(w_hh, masks)

    def masked_step(x_t: Tensor, state: Tuple[Tensor, ...], rec: Optional[Tensor]
                    ) -> Tuple[Tensor, ...]:
        return lstm_cell(x_t, state[0], state[1], w_ih, w_rec, b_ih, b_hh, w_hr,
                         layer_norm=layer_norm, recurrent_mask=rec)

    y, (h, c) = _scan_options(masked_step, x, (h0, c0), batch_sizes, reverse, masks, zoneout)
    return y, h, c


def gru_layer(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    *,
    layer_norm: Optional[LayerNormParams] = None,
    masks: Optional[LayerMasks] = None,
    zoneout: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Run one GRU layer in one direction over a whole sequence.

    Args:
        x: ``(T, B, I)`` or packed ``(N, I)``, as in :func:`lstm_layer`.
        h0: initial hidden state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh: as in :func:`gru_cell`.
        batch_sizes, reverse: as in :func:`lstm_layer`.
        layer_norm: ``(w_ln_ih, w_ln_hh)`` for the layer-normalised GRU, or ``None``.
        masks, zoneout: as in :func:`lstm_layer` (no ``zoneout_c``).

    Returns:
        ``(y, h_n)``: ``y`` ``(T, B, H)`` or ``(N, H)``, ``h_n`` ``(B, H)``.
    """
    if not _has_options(masks, zoneout, layer_norm):
        return _scan_h(lambda x_t, h: gru_cell(x_t, h, w_ih, w_hh, b_ih, b_hh), x, h0,
                       batch_sizes, reverse)
    if masks is not None:
        _check_layer_masks(masks, x, (h0,), w_hh, batch_sizes)
    w_rec = _dropped_weight(w_hh, masks)

    def masked_step(x_t: Tensor, state: Tuple[Tensor, ...], rec: Optional[Tensor]
                    ) -> Tuple[Tensor, ...]:
        return (gru_cell(x_t, state[0], w_ih, w_rec, b_ih, b_hh, layer_norm=layer_norm,
                         recurrent_mask=rec),)

    y, (h,) = _scan_options(masked_step, x, (h0,), batch_sizes, reverse, masks, zoneout)
    return y, h


def rnn_layer(
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    batch_sizes: Optional[Tensor] = None,
    reverse: bool = False,
    nonlinearity: str = "tanh",
    *,
    masks: Optional[LayerMasks] = None,
    zoneout: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Run one Elman RNN layer in one direction over a whole sequence.

    Args:
        x: ``(T, B, I)`` or packed ``(N, I)``, as in :func:`lstm_layer`.
        h0: initial hidden state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh, nonlinearity: as in :func:`rnn_cell`.
        batch_sizes, reverse: as in :func:`lstm_layer`.
        masks, zoneout: as in :func:`lstm_layer` (no ``zoneout_c``; no layer
            normalisation for the Elman RNN).

    Returns:
        ``(y, h_n)``: ``y`` ``(T, B, H)`` or ``(N, H)``, ``h_n`` ``(B, H)``.
    """
    if not _has_options(masks, zoneout):
        return _scan_h(lambda x_t, h: rnn_cell(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity),
                       x, h0, batch_sizes, reverse)
    if masks is not None:
        _check_layer_masks(masks, x, (h0,), w_hh, batch_sizes)
    w_rec = _dropped_weight(w_hh, masks)

    def masked_step(x_t: Tensor, state: Tuple[Tensor, ...], rec: Optional[Tensor]
                    ) -> Tuple[Tensor, ...]:
        return (rnn_cell(x_t, state[0], w_ih, w_rec, b_ih, b_hh, nonlinearity,
                         recurrent_mask=rec),)

    y, (h,) = _scan_options(masked_step, x, (h0,), batch_sizes, reverse, masks, zoneout)
    return y, h


# ------------------------------------------------------------------------ full stacks

#: One layer in one direction for :func:`_stack`:
#: ``(x, initial_states, params, batch_sizes, reverse) -> (y, final_states)``.
LayerFn = Callable[
    [Tensor, Tuple[Tensor, ...], LayerParams, Optional[Tensor], bool],
    Tuple[Tensor, Tuple[Tensor, ...]],
]


def _layers(
    layer_fn: Callable[[Tensor, Tuple[Tensor, ...], tuple, Optional[Tensor], bool],
                       Tuple[Tensor, Tuple[Tensor, ...]]],
    input: Tensor,
    states: Tuple[Tensor, ...],
    params: Sequence[tuple],
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    training: bool,
    batch_sizes: Optional[Tensor],
) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """The loop over layers and directions: layer ``l``, direction ``d`` runs
    ``layer_fn`` on the previous layer's output (dropout between layers when training)
    with ``s[l*D + d]`` of each of ``states`` and ``params[l*D + d]``; a layer's output
    is its directions' outputs concatenated along features.

    ``input`` is time-major ``(T, B, I)`` or packed ``(N, I)``, each state ``(L*D, B, .)``.
    Returns ``(output, final_states)``, each final state ``(L*D, B, .)``. Plain torch;
    :mod:`rnnfast.functional` runs its stacks with it too.
    """
    num_directions = 2 if bidirectional else 1
    finals: List[List[Tensor]] = [[] for _ in states]
    layer_input = input
    for layer in range(num_layers):
        if layer > 0 and dropout > 0.0 and training:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
        outputs = []
        for direction in range(num_directions):
            k = layer * num_directions + direction
            y, new_states = layer_fn(layer_input, tuple(s[k] for s in states), params[k],
                                     batch_sizes, direction == 1)
            outputs.append(y)
            for acc, s in zip(finals, new_states):
                acc.append(s)
        layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=-1)
    return layer_input, tuple(torch.stack(acc, dim=0) for acc in finals)


def _stack(
    layer_fn: LayerFn,
    input: Tensor,
    hx: Optional[Tuple[Tensor, ...]],
    state_sizes: Sequence[int],
    params: Sequence[LayerParams],
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    dropout: float,
    training: bool,
    batch_sizes: Optional[Tensor],
) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """The multi-layer, bidirectional driver shared by :func:`lstm`, :func:`gru` and
    :func:`rnn`: input layouts, zero initial states, dropout between layers, and the
    stacking of the final states.

    Args:
        layer_fn: runs one layer in one direction, see :data:`LayerFn`.
        input: as in :func:`lstm`.
        hx: the initial states, each ``(L*D, B, size)`` (``(L*D, size)`` unbatched), or
            ``None`` for zeros of widths ``state_sizes``.
        state_sizes: width of each state (``(P, H)`` for the LSTM, ``(H,)`` otherwise).
        params, num_layers, bidirectional, batch_first, dropout, training, batch_sizes:
            as in :func:`lstm`.

    Returns:
        ``(output, final_states)``, each final state ``(L*D, B, size)`` (without ``B``
        for unbatched input).
    """
    num_directions = 2 if bidirectional else 1
    assert len(params) == num_layers * num_directions

    unbatched = batch_sizes is None and input.dim() == 2
    batch_dim = 0 if batch_first else 1
    if unbatched:  # (T, I) in either layout: add the batch dimension where it belongs
        input = input.unsqueeze(batch_dim)
        if hx is not None:
            hx = tuple(s.unsqueeze(1) for s in hx)
    if batch_first and batch_sizes is None:
        input = input.transpose(0, 1)

    if batch_sizes is None:
        batch = input.shape[1]
    else:
        batch = int(batch_sizes[0]) if len(batch_sizes) > 0 else 0
    if hx is None:
        hx = tuple(
            torch.zeros(num_layers * num_directions, batch, size,
                        dtype=input.dtype, device=input.device)
            for size in state_sizes
        )

    output, stacked = _layers(layer_fn, input, hx, params, num_layers, bidirectional, dropout,
                              training, batch_sizes)
    if batch_first and batch_sizes is None:
        output = output.transpose(0, 1)
    if unbatched:
        output = output.squeeze(batch_dim)
        stacked = tuple(s.squeeze(1) for s in stacked)
    return output, stacked


def _check_probability(name: str, p: float) -> float:
    """``p`` as a float in [0, 1), else a ValueError naming the argument."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} probability has to be between 0 and 1 (1 excluded), "
                         f"but got {p}")
    return float(p)


def draw_masks(
    gates: int,
    hidden_size: int,
    state_size: int,
    steps: int,
    batch: int,
    *,
    weight_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    zoneout: float = 0.0,
    cell_state: bool = False,
    device: Optional[torch.device] = None,
) -> LayerMasks:
    """Draw the training-mode masks of one layer and direction, in the documented order
    (module docstring): weight dropout, recurrent dropout, zoneout of ``h``, zoneout of
    ``c`` (only with ``cell_state``, the LSTM's), each only when its probability is > 0,
    from torch's default generator of ``device`` (default: the CPU), in float32.

    Args:
        gates: ``G``, gate blocks in ``w_hh`` (4 LSTM, 3 GRU, 1 RNN).
        hidden_size: ``H``.
        state_size: ``P``, the width of ``h`` (the projection size, or ``H``).
        steps: ``T`` (``len(batch_sizes)`` for packed input).
        batch: ``B`` (``batch_sizes[0]`` for packed input, 1 unbatched).
        weight_dropout, recurrent_dropout, zoneout: the probabilities, in [0, 1).
        cell_state: draw ``zoneout_c`` too.
        device: where to draw.

    Returns:
        :class:`LayerMasks` with ``weight`` ``(G*H, P)`` and ``recurrent`` ``(B, P)``
        (float32, kept entries ``1 / (1 - p)``, dropped 0), ``zoneout_h`` ``(T, B, P)``
        and ``zoneout_c`` ``(T, B, H)`` (bool, True keeps the previous state).
    """
    weight_dropout = _check_probability("weight_dropout", weight_dropout)
    recurrent_dropout = _check_probability("recurrent_dropout", recurrent_dropout)
    zoneout = _check_probability("zoneout", zoneout)

    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, dtype=torch.float32, device=device)

    weight = recurrent = zone_h = zone_c = None
    if weight_dropout > 0.0:
        weight = (rand(gates * hidden_size, state_size) >= weight_dropout).to(torch.float32)
        weight = weight / (1 - weight_dropout)
    if recurrent_dropout > 0.0:
        recurrent = (rand(batch, state_size) >= recurrent_dropout).to(torch.float32)
        recurrent = recurrent / (1 - recurrent_dropout)
    if zoneout > 0.0:
        zone_h = rand(steps, batch, state_size) < zoneout
        if cell_state:
            zone_c = rand(steps, batch, hidden_size) < zoneout
    return LayerMasks(weight, recurrent, zone_h, zone_c)


#: One layer in one direction with the options of :func:`_options_stack`:
#: ``(x, states, params, batch_sizes, reverse, layer_norm, masks, zoneout) -> (y, states)``.
OptionsLayerFn = Callable[..., Tuple[Tensor, Tuple[Tensor, ...]]]


def _options_params(
    run: OptionsLayerFn,
    params: Sequence[LayerParams],
    gates: int,
    cell_state: bool,
    training: bool,
    layer_norm: Optional[Sequence[Optional[LayerNormParams]]],
    zoneout: float,
    recurrent_dropout: float,
    weight_dropout: float,
    masks: Optional[Sequence[Optional[LayerMasks]]],
) -> Tuple[LayerFn, List[tuple]]:
    """The :data:`LayerFn` and per-layer parameters that :func:`_stack` runs for the
    options beyond torch.nn: each entry of the returned list is ``(params[k],
    layer_norm[k], masks[k])``; the layer function draws the masks of layer and direction
    ``k`` (:func:`draw_masks`) just before running it, in training mode, unless ``masks``
    gives them."""
    zoneout = _check_probability("zoneout", zoneout)
    recurrent_dropout = _check_probability("recurrent_dropout", recurrent_dropout)
    weight_dropout = _check_probability("weight_dropout", weight_dropout)
    count = len(params)
    if layer_norm is not None and len(layer_norm) != count:
        raise ValueError(f"layer_norm: expected {count} entries (one per layer and "
                         f"direction), got {len(layer_norm)}")
    if masks is not None:
        if not training:
            raise ValueError("masks are training-mode masks: they need training=True")
        if len(masks) != count:
            raise ValueError(f"masks: expected {count} entries (one per layer and "
                             f"direction), got {len(masks)}")
    draw = training and masks is None and (zoneout > 0.0 or recurrent_dropout > 0.0
                                           or weight_dropout > 0.0)

    def layer_fn(x, states, entry, sizes, reverse):
        p, ln, layer_masks = entry
        if draw:
            w_hh = p[1]
            steps = x.shape[0] if sizes is None else len(sizes)
            layer_masks = draw_masks(
                gates, w_hh.shape[0] // gates, w_hh.shape[1], steps, states[0].shape[0],
                weight_dropout=weight_dropout, recurrent_dropout=recurrent_dropout,
                zoneout=zoneout, cell_state=cell_state, device=x.device)
        # Training zoneout runs on masks only; the p-mixing form is evaluation's.
        return run(x, states, p, sizes, reverse, ln, layer_masks,
                   0.0 if training else zoneout)

    entries = []
    for k, p in enumerate(params):
        ln = None if layer_norm is None else layer_norm[k]
        given = None
        if masks is not None:
            given = LayerMasks() if masks[k] is None else LayerMasks(*masks[k])
        entries.append((p, ln, given))
    return layer_fn, entries


def _any_option(layer_norm, zoneout, recurrent_dropout, weight_dropout, masks) -> bool:
    return (layer_norm is not None or masks is not None or zoneout != 0.0
            or recurrent_dropout != 0.0 or weight_dropout != 0.0)


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
    *,
    layer_norm: Optional[Sequence[LayerNormParams]] = None,
    zoneout: float = 0.0,
    recurrent_dropout: float = 0.0,
    weight_dropout: float = 0.0,
    masks: Optional[Sequence[Optional[LayerMasks]]] = None,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """A multi-layer, optionally bidirectional LSTM, with the semantics of ``torch.nn.LSTM``
    and, optionally, layer normalisation, zoneout, recurrent and weight dropout (see the
    module docstring for the formulas and the order in which masks are drawn).

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
        layer_norm: one ``(w_ln_ih, w_ln_hh, w_ln_c, b_ln_c)`` tuple per layer and
            direction (see :func:`layer_norm_params_from_module`), or ``None`` for the plain
            LSTM.
        zoneout: zoneout probability of ``h`` and ``c``, in [0, 1): training mode draws
            masks, evaluation mixes with ``p``.
        recurrent_dropout: recurrent (variational) dropout probability, in [0, 1);
            training mode only.
        weight_dropout: dropout probability of ``w_hh``'s entries, in [0, 1); training
            mode only.
        masks: training mode only: one :class:`LayerMasks` (or ``None``: none) per layer
            and direction, used instead of drawing any (``zoneout``,
            ``recurrent_dropout`` and ``weight_dropout`` then do not matter in training
            mode). Shapes as in :func:`draw_masks`, time-major whatever ``batch_first``.

    Returns:
        ``(output, (h_n, c_n))``: output ``(T, B, D*P)`` (same layout as ``input``, or
        ``(N, D*P)`` packed), ``h_n`` ``(L*D, B, P)``, ``c_n`` ``(L*D, B, H)``.
    """
    hidden_size = params[0][1].shape[0] // 4  # w_hh is (4H, P)
    state_size = params[0][1].shape[1]
    if not _any_option(layer_norm, zoneout, recurrent_dropout, weight_dropout, masks):
        def layer_fn(x, states, p, sizes, reverse):
            w_ih, w_hh, b_ih, b_hh, w_hr = p
            y, h, c = lstm_layer(x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr,
                                 batch_sizes=sizes, reverse=reverse)
            return y, (h, c)

        stack_params: Sequence = params
    else:
        def run(x, states, p, sizes, reverse, ln, layer_masks, p_zoneout):
            y, h, c = lstm_layer(x, states[0], states[1], *p, batch_sizes=sizes,
                                 reverse=reverse, layer_norm=ln, masks=layer_masks,
                                 zoneout=p_zoneout)
            return y, (h, c)

        layer_fn, stack_params = _options_params(
            run, params, 4, True, training, layer_norm, zoneout, recurrent_dropout,
            weight_dropout, masks)
    output, (h_n, c_n) = _stack(
        layer_fn, input, hx, (state_size, hidden_size), stack_params, num_layers,
        bidirectional, batch_first, dropout, training, batch_sizes,
    )
    return output, (h_n, c_n)


def _h_only(layer: Callable[..., Tuple[Tensor, Tensor]], name: str, **layer_kwargs) -> LayerFn:
    """The :data:`LayerFn` of ``layer`` (:func:`gru_layer` or :func:`rnn_layer`, called
    with ``layer_kwargs``): a recurrence whose only state is ``h``, without projection
    (``name`` says whose, in the assertion)."""
    def layer_fn(x, states, p, sizes, reverse):
        w_ih, w_hh, b_ih, b_hh, w_hr = p
        assert w_hr is None, f"{name} has no projection"
        y, h = layer(x, states[0], w_ih, w_hh, b_ih, b_hh, batch_sizes=sizes, reverse=reverse,
                     **layer_kwargs)
        return y, (h,)

    return layer_fn


def gru(
    input: Tensor,
    hx: Optional[Tensor],
    params: Sequence[LayerParams],
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    dropout: float = 0.0,
    training: bool = False,
    batch_sizes: Optional[Tensor] = None,
    *,
    layer_norm: Optional[Sequence[LayerNormParams]] = None,
    zoneout: float = 0.0,
    recurrent_dropout: float = 0.0,
    weight_dropout: float = 0.0,
    masks: Optional[Sequence[Optional[LayerMasks]]] = None,
) -> Tuple[Tensor, Tensor]:
    """A multi-layer, optionally bidirectional GRU, with the semantics of ``torch.nn.GRU``
    and the options of :func:`lstm`.

    Args:
        input: as in :func:`lstm`.
        hx: ``h0`` of shape ``(L*D, B, H)`` (``(L*D, H)`` unbatched), or ``None`` for zeros.
        params: one :data:`LayerParams` tuple per layer and direction (``w_hr`` ``None``),
            ``w_ih`` ``(3H, I)`` (``(3H, D*H)`` above the first layer), ``w_hh`` ``(3H, H)``.
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes: as in
            :func:`lstm`.
        layer_norm: one ``(w_ln_ih, w_ln_hh)`` tuple per layer and direction, or ``None``.
        zoneout, recurrent_dropout, weight_dropout, masks: as in :func:`lstm` (no
            ``zoneout_c`` mask).

    Returns:
        ``(output, h_n)``: output ``(T, B, D*H)`` (layout as ``input``, or ``(N, D*H)``
        packed), ``h_n`` ``(L*D, B, H)``.
    """
    hidden_size = params[0][1].shape[1]  # w_hh is (3H, H)
    layer_fn, stack_params = _single_state_options(
        gru_layer, "GRU", 3, params, training, layer_norm, zoneout, recurrent_dropout,
        weight_dropout, masks)
    output, (h_n,) = _stack(
        layer_fn, input, None if hx is None else (hx,), (hidden_size,), stack_params,
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes,
    )
    return output, h_n


def _single_state_options(layer: Callable[..., Tuple[Tensor, Tensor]], name: str, gates: int,
                          params: Sequence[LayerParams], training: bool,
                          layer_norm: Optional[Sequence[LayerNormParams]], zoneout: float,
                          recurrent_dropout: float, weight_dropout: float,
                          masks: Optional[Sequence[Optional[LayerMasks]]],
                          **layer_kwargs) -> Tuple[LayerFn, Sequence]:
    """The layer function and per-layer parameters of :func:`gru` and :func:`rnn`: plain
    (:func:`_h_only`) without options, else :func:`_options_params`'s."""
    if not _any_option(layer_norm, zoneout, recurrent_dropout, weight_dropout, masks):
        return _h_only(layer, name, **layer_kwargs), params

    def run(x, states, p, sizes, reverse, ln, layer_masks, p_zoneout):
        w_ih, w_hh, b_ih, b_hh, w_hr = p
        assert w_hr is None, f"{name} has no projection"
        extra = dict(layer_kwargs)
        if ln is not None:
            extra["layer_norm"] = ln
        y, h = layer(x, states[0], w_ih, w_hh, b_ih, b_hh, batch_sizes=sizes, reverse=reverse,
                     masks=layer_masks, zoneout=p_zoneout, **extra)
        return y, (h,)

    return _options_params(run, params, gates, False, training, layer_norm, zoneout,
                           recurrent_dropout, weight_dropout, masks)


def rnn(
    input: Tensor,
    hx: Optional[Tensor],
    params: Sequence[LayerParams],
    num_layers: int,
    bidirectional: bool,
    batch_first: bool,
    dropout: float = 0.0,
    training: bool = False,
    batch_sizes: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
    *,
    zoneout: float = 0.0,
    recurrent_dropout: float = 0.0,
    weight_dropout: float = 0.0,
    masks: Optional[Sequence[Optional[LayerMasks]]] = None,
) -> Tuple[Tensor, Tensor]:
    """A multi-layer, optionally bidirectional Elman RNN, with the semantics of
    ``torch.nn.RNN`` and the options of :func:`lstm` but layer normalisation.

    Args:
        input: as in :func:`lstm`.
        hx: ``h0`` of shape ``(L*D, B, H)`` (``(L*D, H)`` unbatched), or ``None`` for zeros.
        params: one :data:`LayerParams` tuple per layer and direction (``w_hr`` ``None``),
            ``w_ih`` ``(H, I)`` (``(H, D*H)`` above the first layer), ``w_hh`` ``(H, H)``.
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes: as in
            :func:`lstm`.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        zoneout, recurrent_dropout, weight_dropout, masks: as in :func:`gru`.

    Returns:
        ``(output, h_n)``: as in :func:`gru`.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")

    hidden_size = params[0][1].shape[1]  # w_hh is (H, H)
    layer_fn, stack_params = _single_state_options(
        rnn_layer, "RNN", 1, params, training, None, zoneout, recurrent_dropout,
        weight_dropout, masks, nonlinearity=nonlinearity)
    output, (h_n,) = _stack(
        layer_fn, input, None if hx is None else (hx,), (hidden_size,), stack_params,
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes,
    )
    return output, h_n


# --------------------------------------------------------------------- module weights

def params_from_module(m: torch.nn.Module) -> List[LayerParams]:
    """Collect the weights of a ``torch.nn.LSTM``/``GRU``/``RNN``-like module for
    :func:`lstm`, :func:`gru` or :func:`rnn`.

    Parameters are looked up by torch.nn's names: ``weight_ih_l{k}{suffix}``,
    ``weight_hh_l{k}{suffix}``, ``bias_ih_l{k}{suffix}``, ``bias_hh_l{k}{suffix}`` and
    ``weight_hr_l{k}{suffix}`` with ``suffix`` ``""`` or ``"_reverse"``; missing biases or
    projections (GRU and RNN never have one) become ``None``.

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


def cell_params_from_module(m: torch.nn.Module) -> CellParams:
    """The weights ``(w_ih, w_hh, b_ih, b_hh)`` of a ``torch.nn.LSTMCell``/``GRUCell``/
    ``RNNCell``-like module (names ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``;
    biases ``None`` when absent), in the argument order of :func:`lstm_cell`,
    :func:`gru_cell` and :func:`rnn_cell`."""
    return (m.weight_ih, m.weight_hh, getattr(m, "bias_ih", None), getattr(m, "bias_hh", None))


#: Names of the layer-normalisation parameters, in :data:`LayerNormParams` order (the
#: last two exist for the LSTM only).
LAYER_NORM_NAMES = ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")


def layer_norm_params_from_module(m: torch.nn.Module) -> Optional[List[LayerNormParams]]:
    """The layer-normalisation weights of a layer module for the ``layer_norm`` argument
    of :func:`lstm` and :func:`gru`: ``weight_ln_ih_l{k}{suffix}``,
    ``weight_ln_hh_l{k}{suffix}`` and, where present (LSTM), ``weight_ln_c_l{k}{suffix}``
    and ``bias_ln_c_l{k}{suffix}``, one tuple per layer and direction in the order
    ``layer * num_directions + direction``; ``None`` if the module has none
    (no ``weight_ln_ih_l0``)."""
    if getattr(m, "weight_ln_ih_l0", None) is None:
        return None
    num_directions = 2 if getattr(m, "bidirectional", False) else 1
    result: List[LayerNormParams] = []
    for layer in range(m.num_layers):
        for direction in range(num_directions):
            sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
            found = [getattr(m, name + sfx, None) for name in LAYER_NORM_NAMES]
            result.append(tuple(t for t in found if t is not None))
    return result


def cell_layer_norm_params_from_module(m: torch.nn.Module) -> Optional[LayerNormParams]:
    """The layer-normalisation weights of a cell module (``weight_ln_ih``,
    ``weight_ln_hh`` and, LSTM, ``weight_ln_c``, ``bias_ln_c``) for the ``layer_norm``
    argument of :func:`lstm_cell` and :func:`gru_cell`; ``None`` if it has none."""
    if getattr(m, "weight_ln_ih", None) is None:
        return None
    found = [getattr(m, name, None) for name in LAYER_NORM_NAMES]
    return tuple(t for t in found if t is not None)

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
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LayerParams", "CellParams", "NONLINEARITIES",
    "lstm_cell", "gru_cell", "rnn_cell",
    "lstm_layer", "gru_layer", "rnn_layer",
    "lstm", "gru", "rnn",
    "params_from_module", "cell_params_from_module",
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


def gru_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
) -> Tensor:
    """One GRU step, PyTorch's variant (reset gate applied after the recurrent matmul).

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, H)``.
        w_ih: input weights, ``(3H, I)``, gate blocks in order r, z, n.
        w_hh: recurrent weights, ``(3H, H)``.
        b_ih: input bias ``(3H,)`` or ``None``.
        b_hh: recurrent bias ``(3H,)`` or ``None``.

    Returns:
        ``h_new``, ``(B, H)``.
    """
    gi_r, gi_z, gi_n = F.linear(x, w_ih, b_ih).chunk(3, dim=-1)  # 3 x (B, H)
    gh_r, gh_z, gh_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)  # 3 x (B, H)
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

    Returns:
        ``h_new``, ``(B, H)``.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    act = NONLINEARITIES[nonlinearity]
    return act(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


# ------------------------------------------------------------ one layer, one direction

def _scan(
    step: Step,
    x: Tensor,
    states: Tuple[Tensor, ...],
    batch_sizes: Optional[Tensor],
    reverse: bool,
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
        new = step(xs[t], tuple(s[:b] for s in states))
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

    Returns:
        ``(y, h_n, c_n)``: ``y`` is ``(T, B, P)`` (or ``(N, P)`` packed), with the output of
        step ``t`` stored at step ``t`` in both directions; ``h_n``/``c_n`` are ``(B, P)``
        and ``(B, H)``, each sequence's state after the last step it took part in (see
        :func:`_scan` for what this means for packed sequences in each direction).
    """
    def step(x_t: Tensor, state: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        return lstm_cell(x_t, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_hr)

    y, (h, c) = _scan(step, x, (h0, c0), batch_sizes, reverse)
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
) -> Tuple[Tensor, Tensor]:
    """Run one GRU layer in one direction over a whole sequence.

    Args:
        x: ``(T, B, I)`` or packed ``(N, I)``, as in :func:`lstm_layer`.
        h0: initial hidden state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh: as in :func:`gru_cell`.
        batch_sizes, reverse: as in :func:`lstm_layer`.

    Returns:
        ``(y, h_n)``: ``y`` ``(T, B, H)`` or ``(N, H)``, ``h_n`` ``(B, H)``.
    """
    return _scan_h(lambda x_t, h: gru_cell(x_t, h, w_ih, w_hh, b_ih, b_hh), x, h0, batch_sizes,
                   reverse)


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
) -> Tuple[Tensor, Tensor]:
    """Run one Elman RNN layer in one direction over a whole sequence.

    Args:
        x: ``(T, B, I)`` or packed ``(N, I)``, as in :func:`lstm_layer`.
        h0: initial hidden state ``(B, H)``.
        w_ih, w_hh, b_ih, b_hh, nonlinearity: as in :func:`rnn_cell`.
        batch_sizes, reverse: as in :func:`lstm_layer`.

    Returns:
        ``(y, h_n)``: ``y`` ``(T, B, H)`` or ``(N, H)``, ``h_n`` ``(B, H)``.
    """
    return _scan_h(lambda x_t, h: rnn_cell(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity), x, h0,
                   batch_sizes, reverse)


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
    def layer_fn(x, states, p, sizes, reverse):
        w_ih, w_hh, b_ih, b_hh, w_hr = p
        y, h, c = lstm_layer(x, states[0], states[1], w_ih, w_hh, b_ih, b_hh, w_hr,
                             batch_sizes=sizes, reverse=reverse)
        return y, (h, c)

    hidden_size = params[0][1].shape[0] // 4  # w_hh is (4H, P)
    state_size = params[0][1].shape[1]
    output, (h_n, c_n) = _stack(
        layer_fn, input, hx, (state_size, hidden_size), params, num_layers, bidirectional,
        batch_first, dropout, training, batch_sizes,
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
) -> Tuple[Tensor, Tensor]:
    """A multi-layer, optionally bidirectional GRU, with the semantics of ``torch.nn.GRU``.

    Args:
        input: as in :func:`lstm`.
        hx: ``h0`` of shape ``(L*D, B, H)`` (``(L*D, H)`` unbatched), or ``None`` for zeros.
        params: one :data:`LayerParams` tuple per layer and direction (``w_hr`` ``None``),
            ``w_ih`` ``(3H, I)`` (``(3H, D*H)`` above the first layer), ``w_hh`` ``(3H, H)``.
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes: as in
            :func:`lstm`.

    Returns:
        ``(output, h_n)``: output ``(T, B, D*H)`` (layout as ``input``, or ``(N, D*H)``
        packed), ``h_n`` ``(L*D, B, H)``.
    """
    hidden_size = params[0][1].shape[1]  # w_hh is (3H, H)
    output, (h_n,) = _stack(
        _h_only(gru_layer, "GRU"), input, None if hx is None else (hx,), (hidden_size,), params,
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes,
    )
    return output, h_n


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
) -> Tuple[Tensor, Tensor]:
    """A multi-layer, optionally bidirectional Elman RNN, with the semantics of
    ``torch.nn.RNN``.

    Args:
        input: as in :func:`lstm`.
        hx: ``h0`` of shape ``(L*D, B, H)`` (``(L*D, H)`` unbatched), or ``None`` for zeros.
        params: one :data:`LayerParams` tuple per layer and direction (``w_hr`` ``None``),
            ``w_ih`` ``(H, I)`` (``(H, D*H)`` above the first layer), ``w_hh`` ``(H, H)``.
        num_layers, bidirectional, batch_first, dropout, training, batch_sizes: as in
            :func:`lstm`.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``(output, h_n)``: as in :func:`gru`.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")

    hidden_size = params[0][1].shape[1]  # w_hh is (H, H)
    output, (h_n,) = _stack(
        _h_only(rnn_layer, "RNN", nonlinearity=nonlinearity), input,
        None if hx is None else (hx,), (hidden_size,), params, num_layers, bidirectional,
        batch_first, dropout, training, batch_sizes,
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

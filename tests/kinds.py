"""The cell kinds under test, in one table.

Each entry of :data:`KINDS` describes one kind of recurrence as the tests see it: the
torch.nn layer and cell classes, their rnnfast counterparts, the extra constructor
arguments that select the kind (``nonlinearity``, ``proj_size``), and the custom operators
``torch.ops.rnnfast.<op>_forward`` / ``<op>_backward`` that run one layer of it, with an
extension-cpp-style :func:`sample_inputs` generator of operator arguments.

tests/test_layers.py, tests/test_cells.py and tests/test_ops.py are parametrised over this
table, so a new kind (or a new option that changes the kernels, as ``proj_size`` does) is
covered by every one of their checks once it has an entry here.

Kept out of conftest.py on purpose: this module imports rnnfast (and so the compiled
extension), which tests/test_reference.py must be able to run without.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Dict, Iterator, List, Optional, Tuple, Union

import pytest
import torch
from torch import nn

import rnnfast
from rnnfast import reference

State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of recurrence (see the module docstring)."""

    name: str
    #: torch.nn layer class and the rnnfast one (same constructor).
    torch_layer: type
    fast_layer: type
    #: torch.nn cell class and the rnnfast one; None where the kind has no cell
    #: (torch.nn.LSTMCell has no projection).
    torch_cell: Optional[type]
    fast_cell: Optional[type]
    #: Constructor keyword arguments that select this kind (layers; cells get the same
    #: minus ``proj_size``).
    kwargs: Dict[str, object]
    #: Operator family: torch.ops.rnnfast.<op>_forward / <op>_backward.
    op: str
    #: Gate blocks in w_ih / w_hh (4 LSTM, 3 GRU, 1 RNN).
    gates: int

    def __str__(self) -> str:  # pytest ids
        return self.name

    @property
    def nonlinearity(self) -> Optional[str]:
        """torch.nn.RNN's nonlinearity ('tanh' or 'relu'), None for LSTM/GRU."""
        return self.kwargs.get("nonlinearity")

    # ------------------------------------------------------------------ layers

    @property
    def proj_size(self) -> int:
        return int(self.kwargs.get("proj_size", 0))

    @property
    def has_cell_state(self) -> bool:
        """LSTM: the state is ``(h, c)``; otherwise one tensor ``h``."""
        return self.op == "lstm"

    @property
    def state_names(self) -> Tuple[str, ...]:
        """The final states a layer returns after ``output``."""
        return ("h_n", "c_n") if self.has_cell_state else ("h_n",)

    def state_size(self, hidden_size: int) -> int:
        """Width of ``h``: proj_size if set, else hidden_size."""
        return self.proj_size or hidden_size

    def supports_hidden_size(self, hidden_size: int) -> bool:
        """torch.nn requires proj_size < hidden_size."""
        return self.proj_size < hidden_size

    def layer_pair(self, input_size: int, hidden_size: int, dtype=torch.float32,
                   **kwargs) -> Tuple[nn.Module, nn.Module]:
        """A torch.nn layer and the rnnfast one with identical weights."""
        ref, fast = self.layer_modules(input_size, hidden_size, dtype=dtype, **kwargs)
        fast.load_state_dict(ref.state_dict())
        return ref, fast

    def layer_modules(self, *args, **kwargs) -> Tuple[nn.Module, nn.Module]:
        """(torch.nn layer, rnnfast layer) built with the same arguments (weights differ).
        ``kwargs`` override the kind's own (e.g. another proj_size)."""
        kwargs = {**self.kwargs, **kwargs}
        return self.torch_layer(*args, **kwargs), self.fast_layer(*args, **kwargs)

    def layer_state(self, form: str, num_states: int, batch: int, hidden_size: int,
                    dtype: torch.dtype, proj_size: Optional[int] = None) -> State:
        """Random initial state of a layer: ``h0`` ``(L*D, B, P)`` (and ``c0``
        ``(L*D, B, H)`` for LSTM), without B if unbatched. P is ``proj_size`` (default:
        the kind's) or, if that is 0, H."""
        lead = (num_states,) if form == "unbatched" else (num_states, batch)
        width = (self.proj_size if proj_size is None else proj_size) or hidden_size
        h = torch.randn(*lead, width, dtype=dtype)
        if not self.has_cell_state:
            return h
        return h, torch.randn(*lead, hidden_size, dtype=dtype)

    # ------------------------------------------------------------------- cells

    @property
    def cell_kwargs(self) -> Dict[str, object]:
        return {k: v for k, v in self.kwargs.items() if k != "proj_size"}

    def cell_modules(self, *args, **kwargs) -> Tuple[nn.Module, nn.Module]:
        """(torch.nn cell, rnnfast cell) built with the same arguments (weights differ)."""
        kwargs = {**self.cell_kwargs, **kwargs}
        return self.torch_cell(*args, **kwargs), self.fast_cell(*args, **kwargs)

    def cell_pair(self, input_size: int, hidden_size: int, dtype=torch.float32,
                  **kwargs) -> Tuple[nn.Module, nn.Module]:
        """A torch.nn cell and the rnnfast one with identical weights."""
        ref, fast = self.cell_modules(input_size, hidden_size, dtype=dtype, **kwargs)
        fast.load_state_dict(ref.state_dict())
        return ref, fast

    def cell_state(self, *shape: int, dtype: torch.dtype = torch.float32) -> State:
        """Random cell state of ``shape``: ``h`` or, for LSTM, ``(h, c)``."""
        h = torch.randn(*shape, dtype=dtype)
        if not self.has_cell_state:
            return h
        return h, torch.randn(*shape, dtype=dtype)

    # --------------------------------------------------------------- operators

    @property
    def forward_op(self):
        return getattr(torch.ops.rnnfast, f"{self.op}_forward").default

    @property
    def backward_op(self):
        return getattr(torch.ops.rnnfast, f"{self.op}_backward").default

    @property
    def has_workspace(self) -> bool:
        """Whether <op>_forward takes ``need_workspace`` (rnn_forward takes ``relu``
        instead: its backward needs only the output)."""
        return self.op != "rnn"


KINDS: Dict[str, Kind] = {
    k.name: k for k in [
        Kind("lstm", nn.LSTM, rnnfast.LSTM, nn.LSTMCell, rnnfast.LSTMCell, {}, "lstm", 4),
        Kind("lstm_proj", nn.LSTM, rnnfast.LSTM, None, None, {"proj_size": 3}, "lstm", 4),
        Kind("gru", nn.GRU, rnnfast.GRU, nn.GRUCell, rnnfast.GRUCell, {}, "gru", 3),
        Kind("rnn_tanh", nn.RNN, rnnfast.RNN, nn.RNNCell, rnnfast.RNNCell,
             {"nonlinearity": "tanh"}, "rnn", 1),
        Kind("rnn_relu", nn.RNN, rnnfast.RNN, nn.RNNCell, rnnfast.RNNCell,
             {"nonlinearity": "relu"}, "rnn", 1),
    ]
}

#: Kinds that have a cell class (every one but the projected LSTM).
CELL_KINDS: Dict[str, Kind] = {n: k for n, k in KINDS.items() if k.torch_cell is not None}


def kind_params(kinds: Dict[str, Kind] = KINDS) -> List:
    """``pytest.param(kind, id=name)`` for each kind: parametrize("kind", kind_params())."""
    return [pytest.param(k, id=k.name) for k in kinds.values()]


# =========================================================================== operators
#
# Small sizes: gradcheck perturbs every input element.
T, B, I, H = 4, 3, 2, 3
BATCH_SIZES = [3, 2, 2, 1]  # packed: N = 8 rows, B = 3 sequences

#: (reverse, bias, packed) of every operator sample, and their ids.
OP_CASES = list(itertools.product([False, True], [True, False], [False, True]))
OP_CASE_IDS = ["-".join([("rev" if r else "fwd"), ("bias" if b else "nobias"),
                         ("packed" if k else "padded")]) for r, b, k in OP_CASES]


@dataclasses.dataclass
class OpSample:
    """Arguments for one call of ``kind``'s operators."""

    kind: Kind
    id: str
    #: The tensor inputs of <op>_forward by name, in schema order (None: absent).
    tensors: Dict[str, Optional[torch.Tensor]]
    batch_sizes: Optional[torch.Tensor]
    reverse: bool

    @property
    def has_bias(self) -> bool:
        return self.tensors["b_ih"] is not None

    def forward_args(self, need_workspace: bool = True) -> tuple:
        """Every positional argument of <op>_forward. For rnn_forward the last one is
        ``relu`` (it has no workspace), whatever ``need_workspace`` says."""
        flag = self.kind.nonlinearity == "relu" if self.kind.op == "rnn" else need_workspace
        return (*self.tensors.values(), self.batch_sizes, self.reverse, flag)

    def forward(self, need_workspace: bool = True) -> tuple:
        return self.kind.forward_op(*self.forward_args(need_workspace))

    def reference(self, tensors: Optional[Dict[str, Optional[torch.Tensor]]] = None):
        """rnnfast.reference's layer function on ``tensors`` (default: the sample's):
        ``(output, hy)`` or ``(output, hy, cy)``."""
        t = self.tensors if tensors is None else tensors
        common = dict(batch_sizes=self.batch_sizes, reverse=self.reverse)
        if self.kind.op == "lstm":
            return reference.lstm_layer(t["x"], t["hx"], t["cx"], t["w_ih"], t["w_hh"],
                                        t["b_ih"], t["b_hh"], t["w_hr"], **common)
        if self.kind.op == "gru":
            return reference.gru_layer(t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"],
                                       t["b_hh"], **common)
        return reference.rnn_layer(t["x"], t["hx"], t["w_ih"], t["w_hh"], t["b_ih"],
                                   t["b_hh"], nonlinearity=self.kind.nonlinearity, **common)

    def backward_args(self, grads: Tuple[Optional[torch.Tensor], ...], forward_outputs: tuple,
                      need_grad_input: bool = True) -> tuple:
        """Every positional argument of <op>_backward, for upstream gradients ``grads`` on
        (output, hy[, cy]) and the outputs of ``self.forward(True)``."""
        t = self.tensors
        tail = (self.batch_sizes, self.reverse)
        if self.kind.op == "lstm":
            out, _, _, gates, cells = forward_outputs
            return (*grads, t["x"], t["hx"], t["cx"], t["w_ih"], t["w_hh"], t["w_hr"], out,
                    gates, cells, *tail, self.has_bias, need_grad_input)
        if self.kind.op == "gru":
            out, _, workspace = forward_outputs
            return (*grads, t["x"], t["hx"], t["w_ih"], t["w_hh"], out, workspace, *tail,
                    self.has_bias, need_grad_input)
        out = forward_outputs[0]
        return (*grads, t["x"], t["hx"], t["w_ih"], t["w_hh"], out, *tail,
                self.kind.nonlinearity == "relu", self.has_bias, need_grad_input)


#: What each <op>_backward returns, in order: (name, the forward inputs whose gradient it
#: is). A bias gradient shared by b_ih and b_hh (LSTM, RNN: they enter as a sum) names
#: both; a gradient of an absent input (no bias, no projection) must be empty.
BACKWARD_OUTPUTS = {
    "lstm": [("grad_input", ("x",)), ("grad_hx", ("hx",)), ("grad_cx", ("cx",)),
             ("grad_w_ih", ("w_ih",)), ("grad_w_hh", ("w_hh",)),
             ("grad_bias", ("b_ih", "b_hh")), ("grad_w_hr", ("w_hr",))],
    # b_hn sits inside r * (W_hn h + b_hn): the two bias gradients differ in the n block
    "gru": [("grad_input", ("x",)), ("grad_hx", ("hx",)), ("grad_w_ih", ("w_ih",)),
            ("grad_w_hh", ("w_hh",)), ("grad_b_ih", ("b_ih",)), ("grad_b_hh", ("b_hh",))],
    "rnn": [("grad_input", ("x",)), ("grad_hx", ("hx",)), ("grad_w_ih", ("w_ih",)),
            ("grad_w_hh", ("w_hh",)), ("grad_bias", ("b_ih", "b_hh"))],
}

#: The differentiable outputs of <op>_forward (the rest is workspace).
FORWARD_OUTPUTS = {"lstm": ("output", "hy", "cy"), "gru": ("output", "hy"),
                   "rnn": ("output", "hy")}


def _draw_tensors(kind: Kind, bias: bool, packed: bool, dtype, device):
    if packed:
        x = torch.randn(sum(BATCH_SIZES), I, dtype=dtype)
    else:
        x = torch.randn(T, B, I, dtype=dtype)
    state = kind.proj_size or H
    g = kind.gates

    def rnd(*shape):
        return torch.randn(*shape, dtype=dtype) * 0.5

    tensors = {"x": x, "hx": rnd(B, state)}
    if kind.has_cell_state:
        tensors["cx"] = rnd(B, H)
    tensors.update(w_ih=rnd(g * H, I), w_hh=rnd(g * H, state),
                   b_ih=rnd(g * H) if bias else None, b_hh=rnd(g * H) if bias else None)
    if kind.has_cell_state:
        tensors["w_hr"] = rnd(state, H) if kind.proj_size else None
    return {n: None if t is None else t.to(device) for n, t in tensors.items()}


def preactivations(sample: OpSample) -> torch.Tensor:
    """Every pre-activation ``x W_ih^T + b_ih + h W_hh^T + b_hh`` of an RNN sample."""
    t = sample.tensors
    pres = []

    def step(x_t, state):
        pre = torch.nn.functional.linear(x_t, t["w_ih"], t["b_ih"]) + \
            torch.nn.functional.linear(state[0], t["w_hh"], t["b_hh"])
        pres.append(pre.detach().flatten())
        return (torch.relu(pre),)

    with torch.no_grad():
        reference._scan(step, t["x"], (t["hx"],), sample.batch_sizes, sample.reverse)
    return torch.cat(pres)


#: relu samples keep every pre-activation this far from relu's kink at 0.
RELU_KINK_MARGIN = 1e-2


def make_sample(kind: Kind, reverse: bool, bias: bool, packed: bool,
                dtype: torch.dtype = torch.float64, device="cpu",
                requires_grad: bool = False) -> OpSample:
    """One operator sample (T=4, B=3, I=2, H=3, proj_size from the kind).

    For relu, redraw until no pre-activation lies within 1e-2 of relu's kink at 0 and
    both branches occur: gradcheck's finite differences (eps 1e-6) are only valid where
    the function is differentiable, and 1e-2 is far beyond what a perturbation of 1e-6
    can move a pre-activation."""
    case_id = OP_CASE_IDS[OP_CASES.index((reverse, bias, packed))]
    batch_sizes = torch.tensor(BATCH_SIZES, dtype=torch.int64) if packed else None
    for _ in range(100):
        tensors = _draw_tensors(kind, bias, packed, dtype, device)
        sample = OpSample(kind, case_id, tensors, batch_sizes, reverse)
        if kind.nonlinearity != "relu":
            break
        pres = preactivations(sample)
        if pres.abs().min() > RELU_KINK_MARGIN and (pres > 0).any() and (pres < 0).any():
            break
    else:
        raise AssertionError("could not draw relu RNN inputs away from the kink")
    if requires_grad:
        for t in sample.tensors.values():
            if t is not None:
                t.requires_grad_(True)
    return sample


def sample_inputs(kind: Kind, dtype: torch.dtype = torch.float64, device="cpu",
                  requires_grad: bool = False) -> Iterator[OpSample]:
    """Every operator sample of ``kind``: forward and reverse, with and without bias,
    padded and packed."""
    for reverse, bias, packed in OP_CASES:
        yield make_sample(kind, reverse, bias, packed, dtype, device, requires_grad)


def half_fraction_params(kinds: Dict[str, Kind] = KINDS) -> List:
    """``pytest.param(kind, reverse, bias, packed)`` for half of the operator cases of each
    kind, for the expensive checks (torch.library.opcheck): one half-fraction of the 2^3
    design (reverse, bias, packed), which still has each level of every factor paired with
    each level of every other. Kinds sharing an operator alternate halves, so that
    together they call it on all eight cases."""
    params = []
    seen_ops: Dict[str, int] = {}
    for kind in kinds.values():
        half = seen_ops.get(kind.op, 0) % 2
        seen_ops[kind.op] = seen_ops.get(kind.op, 0) + 1
        for case, case_id in zip(OP_CASES, OP_CASE_IDS):
            reverse, bias, packed = case
            if (reverse + (not bias) + packed) % 2 == half:
                params.append(pytest.param(kind, *case, id=f"{kind.name}-{case_id}"))
    return params

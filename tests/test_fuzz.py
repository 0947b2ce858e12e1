"""Differential fuzzing of rnnfast against torch.nn with hypothesis.

Every constructor option and input form is drawn: input/hidden sizes from a set with 1 and
primes, 1-3 layers, bidirectional, batch_first, bias, proj_size (LSTM), unbatched input,
PackedSequence with random lengths (sorted, enforce_sorted=True; unsorted,
enforce_sorted=False), with and without hx, float32/float64, train/eval, dropout 0 or 0.5.
Each example builds a torch.nn module and an rnnfast module with identical weights, runs
forward and backward on both with the same input, state and upstream gradients, and
compares the output, the final states and every gradient (input, h0, c0, each parameter).
Dropout is compared under the same torch.manual_seed: rnnfast draws its inter-layer masks
with F.dropout on the same tensors in the same order as torch.nn, so the masks are equal.

Budget: a fixed, derandomized set of examples (the same ones on every run, no example
database): 270 layer examples (LSTM 100, GRU 70, RNN tanh 50, RNN relu 50) and 160 cell
examples in CI. ``RNNFAST_FUZZ_EXAMPLES=N`` runs N examples per test instead (e.g. 5000 for
a long local run); ``RNNFAST_FUZZ_RANDOM=1`` draws fresh examples instead of the fixed set.
0 mismatches is the bar.

Tolerances (tests/conftest.py): float64 1e-10 absolute/relative: the two implementations
sum in different orders, so agreement is ~1e-15 relative, and 1e-10 leaves room for
error growth through 3 layers and 7 steps; float32 atol 1e-5 / rtol 1e-4 (~1000 ulp, the
same error growth at float32 precision, plus rnnfast's float32 activations, which are
within a few ulp of the C library's). Sizes stay small: the CI budget runs in ~10 s
(2 cores); 2000 random examples per test took 224 s, with 0 mismatches.
"""
from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    FORMS,
    assert_results_close,
    make_h0,
    make_hx,
    make_input,
    run_rnn,
    torch_native_cpu_rnn,
)
from kinds import CELL_KINDS, KINDS

#: input/hidden sizes: 1, small primes, a power of two
SIZES = [1, 2, 3, 5, 7, 8, 11, 13]
STEPS = [1, 2, 3, 5, 7]
BATCHES = [1, 2, 3, 5]


def fuzz_settings(default_examples: int) -> settings:
    examples = int(os.environ.get("RNNFAST_FUZZ_EXAMPLES", default_examples))
    return settings(max_examples=examples, deadline=None, database=None,
                    derandomize=os.environ.get("RNNFAST_FUZZ_RANDOM", "0") != "1",
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                    print_blob=True)


#: kind -> (torch.nn class, rnnfast class, extra kwargs), from tests/kinds.py (the
#: projected LSTM aside: layer_cases draws proj_size itself).
LAYERS = {n: (k.torch_layer, k.fast_layer, k.kwargs) for n, k in KINDS.items()
          if not k.proj_size}


@st.composite
def layer_cases(draw, kind):
    hidden_size = draw(st.sampled_from(SIZES))
    num_layers = draw(st.integers(1, 3))
    proj_size = 0
    if kind == "lstm" and hidden_size > 1 and draw(st.booleans()):
        proj_size = draw(st.integers(1, hidden_size - 1))
    return dict(
        kwargs=dict(input_size=draw(st.sampled_from(SIZES)), hidden_size=hidden_size,
                    num_layers=num_layers, bias=draw(st.booleans()),
                    batch_first=draw(st.booleans()), bidirectional=draw(st.booleans()),
                    dropout=draw(st.sampled_from([0.0, 0.5])) if num_layers > 1 else 0.0,
                    **({"proj_size": proj_size} if kind == "lstm" else {})),
        form=draw(st.sampled_from(FORMS)),
        steps=draw(st.sampled_from(STEPS)),
        batch=draw(st.sampled_from(BATCHES)),
        with_hx=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        training=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def check_layer(kind, case):
    ref_cls, fast_cls, extra = LAYERS[kind]
    kwargs, dtype, form = case["kwargs"], case["dtype"], case["form"]
    torch.manual_seed(case["seed"])
    ref = ref_cls(**kwargs, **extra, dtype=dtype)
    fast = fast_cls(**kwargs, **extra, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    ref.train(case["training"])
    fast.train(case["training"])
    steps, batch = case["steps"], case["batch"]
    x, lengths = make_input(form, steps, batch, kwargs["input_size"], kwargs["batch_first"],
                            dtype)
    hx = None
    if case["with_hx"]:
        states = kwargs["num_layers"] * (2 if kwargs["bidirectional"] else 1)
        if kind == "lstm":
            hx = make_hx(form, states, batch, kwargs["proj_size"] or kwargs["hidden_size"],
                         kwargs["hidden_size"], dtype)
        else:
            hx = make_h0(form, states, batch, kwargs["hidden_size"], dtype)
    # The same RNG state before each forward: equal dropout masks.
    rng = torch.get_rng_state()
    with torch_native_cpu_rnn():
        expected, grads = run_rnn(ref, x, hx, form, kwargs["batch_first"], lengths)
    torch.set_rng_state(rng)
    got, _ = run_rnn(fast, x, hx, form, kwargs["batch_first"], lengths, grads)
    assert_results_close(got, expected, dtype)


def _features(kind, case):
    """The options an example exercises, for the coverage check."""
    kw = case["kwargs"]
    feats = {case["form"], case["dtype"], ("hx", case["with_hx"]),
             ("layers", kw["num_layers"]), ("bidirectional", kw["bidirectional"]),
             ("batch_first", kw["batch_first"]), ("bias", kw["bias"]),
             ("train", case["training"]),
             ("dropout_train", kw["dropout"] > 0 and case["training"]),
             ("size1", 1 in (kw["input_size"], kw["hidden_size"], case["steps"], case["batch"]))}
    if kind == "lstm":
        feats.add(("proj", kw["proj_size"] > 0))
    return feats


def _expected_features(kind):
    feats = set(FORMS) | {torch.float32, torch.float64}
    for name, values in [("hx", (True, False)), ("layers", (1, 2, 3)),
                         ("bidirectional", (True, False)), ("batch_first", (True, False)),
                         ("bias", (True, False)), ("train", (True, False)),
                         ("dropout_train", (True, False)), ("size1", (True, False))]:
        feats |= {(name, v) for v in values}
    if kind == "lstm":
        feats |= {("proj", True), ("proj", False)}
    return feats


def _layer_test(kind, examples):
    seen = set()

    @fuzz_settings(examples)
    @given(case=layer_cases(kind))
    def run(case):
        seen.update(_features(kind, case))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropout with 1 layer etc. are not drawn anyway
            check_layer(kind, case)

    def test():
        run()
        # Each option value occurred in at least one example (when the budget allows).
        if int(os.environ.get("RNNFAST_FUZZ_EXAMPLES", examples)) >= 50:
            missing = _expected_features(kind) - seen
            assert not missing, f"the fuzzed examples never exercised {missing}"
    test.__doc__ = f"{kind}: {examples} derandomized examples against torch.nn (CI budget)."
    return test


test_fuzz_lstm = _layer_test("lstm", 100)
test_fuzz_gru = _layer_test("gru", 70)
test_fuzz_rnn_tanh = _layer_test("rnn_tanh", 50)
test_fuzz_rnn_relu = _layer_test("rnn_relu", 50)


# ------------------------------------------------------------------------------ cells

CELLS = {n: (k.torch_cell, k.fast_cell, k.cell_kwargs) for n, k in CELL_KINDS.items()}


@st.composite
def cell_cases(draw):
    return dict(
        input_size=draw(st.sampled_from(SIZES)),
        hidden_size=draw(st.sampled_from(SIZES)),
        bias=draw(st.booleans()),
        batch=draw(st.sampled_from([None, 0, 1, 2, 3, 7])),  # None: unbatched
        with_hx=draw(st.booleans()),
        steps=draw(st.sampled_from([1, 2, 3])),  # the cell unrolled in a Python loop
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def run_cell(m, xs, hx, grads):
    """Unroll cell ``m`` over ``xs`` from ``hx``; backward from ``grads`` on every step's
    state; return states and gradients (input, initial state, parameters)."""
    m.zero_grad(set_to_none=True)
    xs = xs.detach().clone().requires_grad_(True)
    leaves = ()
    state = None
    if hx is not None:
        leaves = tuple(t.detach().clone().requires_grad_(True) for t in hx)
        state = leaves if len(leaves) == 2 else leaves[0]
    outs = []
    for t in range(xs.shape[0]):
        state = m(xs[t], state)
        outs.extend(state if isinstance(state, tuple) else (state,))
    loss = sum((o * g).sum() for o, g in zip(outs, grads))
    loss.backward()
    res = {f"state{i}": o.detach() for i, o in enumerate(outs)}
    res["grad_input"] = xs.grad
    res.update({f"grad_hx{i}": leaf.grad for i, leaf in enumerate(leaves)})
    res.update({"grad." + n: p.grad for n, p in m.named_parameters()})
    return res


def _cell_test(kind, examples):
    @fuzz_settings(examples)
    @given(case=cell_cases())
    def test(case):
        ref_cls, fast_cls, extra = CELLS[kind]
        dtype, batch, H = case["dtype"], case["batch"], case["hidden_size"]
        torch.manual_seed(case["seed"])
        ref = ref_cls(case["input_size"], H, bias=case["bias"], dtype=dtype, **extra)
        fast = fast_cls(case["input_size"], H, bias=case["bias"], dtype=dtype, **extra)
        fast.load_state_dict(ref.state_dict())
        lead = () if batch is None else (batch,)
        xs = torch.randn(case["steps"], *lead, case["input_size"], dtype=dtype)
        hx = None
        if case["with_hx"]:
            hx = tuple(torch.randn(*lead, H, dtype=dtype) for _ in range(2 if kind == "lstm"
                                                                          else 1))
        n_states = 2 if kind == "lstm" else 1
        grads = [torch.randn(*lead, H, dtype=dtype) for _ in range(case["steps"] * n_states)]
        expected = run_cell(ref, xs, hx, grads)
        got = run_cell(fast, xs, hx, grads)
        assert_results_close(got, expected, dtype)
    return test


test_fuzz_lstm_cell = _cell_test("lstm", 40)
test_fuzz_gru_cell = _cell_test("gru", 40)
test_fuzz_rnn_tanh_cell = _cell_test("rnn_tanh", 40)
test_fuzz_rnn_relu_cell = _cell_test("rnn_relu", 40)


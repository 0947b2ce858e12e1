"""Bad input never crashes, hangs or corrupts state.

Every case in the tables below is run against a torch.nn module and the rnnfast module with
identical weights. Expectations:

* ``SAME``: same exception type and the same message (str equality).
* ``TYPE``: same exception type; the message differs because torch.nn's text comes out of
  its C++ internals by accident (oneDNN, an index_select inside permute_hidden, a matmul
  inside the cell, pybind's argument parser) rather than from a check of the input. Each
  such case says where torch's message comes from.
* ``STRICTER``: torch.nn accepts the input silently and computes something (documented
  divergence; rnnfast raises a clear RuntimeError instead). The test asserts both sides, so
  that a change in either is noticed.

After every case the same module pair must still agree on a valid call (outputs, final
states, every gradient) and the parameters must be bit-for-bit unchanged: an error leaves
no state behind. NaN and Inf in the input must come out at the same positions as in
torch.nn. torch.nn runs on ATen's native CPU path (oneDNN off), whose messages are the
reference ones (oneDNN replaces some of them with 'get_mkldnn_dtype: unsupported data type').

A watchdog (faulthandler) turns a hang into a failure with a traceback.
"""
from __future__ import annotations

import faulthandler
import re

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnfast
from conftest import (
    assert_results_close,
    capture_error,
    make_h0,
    make_hx,
    make_input,
    run_rnn,
    torch_native_cpu_rnn,
)
from kinds import CELL_KINDS, KINDS

I, H, L = 5, 7, 2  # input_size, hidden_size, num_layers of the modules under test

#: kind -> (torch.nn class, rnnfast class, extra kwargs), from tests/kinds.py (the
#: projected LSTM aside: these modules have no projection).
LAYERS = {n: (k.torch_layer, k.fast_layer, k.kwargs) for n, k in KINDS.items()
          if not k.proj_size}
CELLS = {n: (k.torch_cell, k.fast_cell, k.cell_kwargs) for n, k in CELL_KINDS.items()}


@pytest.fixture(autouse=True)
def _watchdog():
    """A hang (deadlock in a kernel, an endless loop on bad sizes) fails the run after 120 s
    with every thread's traceback, instead of blocking CI."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def layer_pair(kind, dtype=torch.float32, **kwargs):
    ref_cls, fast_cls, extra = LAYERS[kind]
    ref = ref_cls(I, H, num_layers=L, dtype=dtype, **extra, **kwargs)
    fast = fast_cls(I, H, num_layers=L, dtype=dtype, **extra, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def cell_pair(kind, dtype=torch.float32):
    ref_cls, fast_cls, extra = CELLS[kind]
    ref = ref_cls(I, H, dtype=dtype, **extra)
    fast = fast_cls(I, H, dtype=dtype, **extra)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def state(kind, *shape, dtype=torch.float32, device="cpu"):
    """A zero state of ``shape``: ``(h, c)`` for LSTM (c's last dim H), else one tensor."""
    h = torch.zeros(*shape, dtype=dtype, device=device)
    if kind == "lstm":
        return (h, torch.zeros(*shape[:-1], H, dtype=dtype, device=device))
    return h


def x3(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype).to(device)


def packed(lengths=(4, 2, 3), enforce_sorted=False, dtype=torch.float32, size=I, device="cpu"):
    x = torch.randn(max(lengths), len(lengths), size, dtype=dtype).to(device)
    if device == "meta":
        return pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    return pack_padded_sequence(x, list(lengths), enforce_sorted=enforce_sorted)


def sorted_packed(**kwargs):
    return packed(lengths=(4, 3, 2), enforce_sorted=True, **kwargs)


SAME, TYPE, STRICTER = "same", "type", "stricter"
ALL = tuple(LAYERS)
LSTM_ONLY = ("lstm",)
NOT_LSTM = ("gru", "rnn_tanh", "rnn_relu")

# name -> (call(module, kind), expectation, kinds, why for TYPE/STRICTER)
# Modules: input_size 5, hidden_size 7, num_layers 2, unidirectional; so a state is (2, B, 7).
LAYER_CASES = {
    # ---- input rank, size, empty dimensions
    "input_0d": (lambda m, k: m(torch.tensor(1.0)), SAME, ALL, ""),
    "input_1d": (lambda m, k: m(x3(5)), SAME, ALL, ""),
    "input_4d": (lambda m, k: m(x3(2, 3, 4, 5)), SAME, ALL, ""),
    "input_size_batched": (lambda m, k: m(x3(3, 2, 6)), SAME, ALL, ""),
    "input_size_unbatched": (lambda m, k: m(x3(3, 6)), SAME, ALL, ""),
    "input_size_zero": (lambda m, k: m(x3(3, 2, 0)), SAME, ALL, ""),
    "empty_time": (lambda m, k: m(x3(0, 2, 5)), SAME, ALL, ""),
    "empty_time_unbatched": (lambda m, k: m(x3(0, 5)), SAME, ALL, ""),
    "empty_time_with_hx": (lambda m, k: m(x3(0, 2, 5), state(k, 2, 2, 7)), SAME, ALL, ""),
    "empty_batch_wrong_hx": (lambda m, k: m(x3(3, 0, 5), state(k, 2, 1, 7)), SAME, ALL, ""),
    # ---- input dtype
    "input_int64": (lambda m, k: m(torch.ones(3, 2, 5, dtype=torch.int64)), SAME, ALL, ""),
    "input_int32_unbatched": (lambda m, k: m(torch.ones(3, 5, dtype=torch.int32)), SAME, ALL,
                              ""),
    "input_bool": (lambda m, k: m(torch.ones(3, 2, 5, dtype=torch.bool)), SAME, ALL, ""),
    "input_float64": (lambda m, k: m(x3(3, 2, 5, dtype=torch.float64)), SAME, ALL, ""),
    "input_float16": (lambda m, k: m(x3(3, 2, 5, dtype=torch.float16)), SAME, ALL, ""),
    "input_complex": (lambda m, k: m(x3(3, 2, 5).to(torch.complex64)), SAME, ALL, ""),
    # ---- non-tensor arguments
    "input_none": (lambda m, k: m(None), SAME, ALL, ""),
    "input_list": (lambda m, k: m([[1.0] * 5] * 3), SAME, ALL, ""),
    "input_numpy": (lambda m, k: m(x3(3, 2, 5).numpy()), SAME, ALL, ""),
    "hx_int": (lambda m, k: m(x3(3, 2, 5), 3), SAME, ALL, ""),
    "hx_str": (lambda m, k: m(x3(3, 2, 5), "hx"), SAME, ALL, ""),
    "hx_tuple_of_ints": (lambda m, k: m(x3(3, 2, 5), (1, 2)), SAME, ALL, ""),
    "hx_tuple_of_none": (lambda m, k: m(x3(3, 2, 5), (None, None)), SAME, ALL, ""),
    "extra_positional": (lambda m, k: m(x3(3, 2, 5), None, 1), SAME, ALL, ""),
    "unknown_keyword": (lambda m, k: m(x3(3, 2, 5), foo=1), SAME, ALL, ""),
    # ---- hx structure (tuple arity, tensor where a tuple is due and vice versa)
    "lstm_hx_single_tensor": (lambda m, k: m(x3(3, 2, 5), torch.zeros(2, 2, 7)), SAME,
                              LSTM_ONLY, ""),
    "lstm_hx_1_tuple": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7),)), SAME, LSTM_ONLY,
                        ""),
    "lstm_hx_1_list": (lambda m, k: m(x3(3, 2, 5), [torch.zeros(2, 2, 7)]), SAME, LSTM_ONLY,
                       ""),
    "lstm_hx_3_tuple": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7),) * 3), SAME,
                        LSTM_ONLY, ""),
    "lstm_hx_c_none": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7), None)), SAME,
                       LSTM_ONLY, ""),
    "gru_rnn_hx_tuple": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7),)), SAME, NOT_LSTM,
                         ""),
    "gru_rnn_hx_2_tuple": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7),) * 2), SAME,
                           NOT_LSTM, ""),
    "gru_rnn_hx_list": (lambda m, k: m(x3(3, 2, 5), [torch.zeros(2, 2, 7)]), SAME, NOT_LSTM,
                        ""),
    # ---- hx shapes
    "hx_rank_2_batched": (lambda m, k: m(x3(3, 2, 5), state(k, 2, 7)), SAME, ALL, ""),
    "hx_rank_3_unbatched": (lambda m, k: m(x3(3, 5), state(k, 2, 1, 7)), SAME, ALL, ""),
    "hx_layers": (lambda m, k: m(x3(3, 2, 5), state(k, 3, 2, 7)), SAME, ALL, ""),
    "hx_batch": (lambda m, k: m(x3(3, 2, 5), state(k, 2, 3, 7)), SAME, ALL, ""),
    "hx_hidden": (lambda m, k: m(x3(3, 2, 5), state(k, 2, 2, 6)), SAME, ALL, ""),
    "unbatched_hx_hidden": (lambda m, k: m(x3(3, 5), state(k, 2, 6)), SAME, ALL, ""),
    "lstm_cx_shape": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7), torch.zeros(2, 2, 6))),
                      SAME, LSTM_ONLY, ""),
    "lstm_cx_rank": (lambda m, k: m(x3(3, 2, 5), (torch.zeros(2, 2, 7), torch.zeros(2, 7))),
                     SAME, LSTM_ONLY, ""),
    # ---- hx dtype
    "hx_float64": (lambda m, k: m(x3(3, 2, 5), state(k, 2, 2, 7, dtype=torch.float64)), SAME,
                   ALL, ""),
    "hx_int64": (lambda m, k: m(x3(3, 2, 5), state(k, 2, 2, 7, dtype=torch.int64)), SAME, ALL,
                 ""),
    # ---- devices: this machine has no GPU; 'meta' is the second device at hand
    "input_meta": (lambda m, k: m(x3(3, 2, 5, device="meta")), SAME, ALL, ""),
    "input_meta_unbatched": (lambda m, k: m(x3(3, 5, device="meta")), SAME, ALL, ""),
    "input_meta_hx_cpu": (lambda m, k: m(x3(3, 2, 5, device="meta"), state(k, 2, 2, 7)), SAME,
                          ALL, ""),
    "hx_meta": (lambda m, k: m(x3(3, 2, 5), state(k, 2, 2, 7, device="meta")), SAME, ALL, ""),
    "packed_meta": (lambda m, k: m(sorted_packed(device="meta")), TYPE, ALL,
                    "torch: 'Tensor on device cpu is not on the expected device meta!' from "
                    "the meta kernel of its packed matmul"),
    "packed_hx_meta": (lambda m, k: m(sorted_packed(), state(k, 2, 3, 7, device="meta")), TYPE,
                       ALL, "torch: the meta kernel's device message, as above"),
    # ---- PackedSequence: dtype, size, hx
    "packed_input_float64": (lambda m, k: m(sorted_packed(dtype=torch.float64)), SAME, ALL, ""),
    "packed_input_int64": (lambda m, k: m(PackedSequence(torch.ones(9, 5, dtype=torch.long),
                                                         torch.tensor([4, 3, 2]))), SAME, ALL,
                           ""),
    "packed_input_size": (lambda m, k: m(sorted_packed(size=6)), SAME, NOT_LSTM, ""),
    "lstm_packed_input_size": (lambda m, k: m(sorted_packed(size=6)), TYPE, LSTM_ONLY,
                               "torch.nn.LSTM does not check packed input in Python: 'mat1 and "
                               "mat2 shapes cannot be multiplied' from its kernel"),
    "packed_hx_int": (lambda m, k: m(sorted_packed(), 5), SAME, NOT_LSTM, ""),
    "lstm_packed_hx_int": (lambda m, k: m(sorted_packed(), 5), TYPE, LSTM_ONLY,
                           "torch: pybind's 'lstm() received an invalid combination of "
                           "arguments' listing its C++ signature"),
    "packed_hx_rank_2": (lambda m, k: m(sorted_packed(), state(k, 3, 7)), SAME, ALL, ""),
    "packed_unsorted_hx_rank_2": (lambda m, k: m(packed(), state(k, 3, 7)), SAME, ALL, ""),
    "packed_hx_float64": (lambda m, k: m(sorted_packed(), state(k, 2, 3, 7,
                                                                dtype=torch.float64)),
                          SAME, ALL, ""),
    "packed_unsorted_hx_batch_small": (lambda m, k: m(packed(), state(k, 2, 2, 7)), SAME, ALL,
                                       ""),
    "packed_hx_batch": (lambda m, k: m(sorted_packed(), state(k, 2, 5, 7)), SAME, NOT_LSTM,
                        ""),
    "packed_hx_layers": (lambda m, k: m(sorted_packed(), state(k, 3, 3, 7)), SAME, NOT_LSTM,
                         ""),
    "packed_hx_hidden": (lambda m, k: m(sorted_packed(), state(k, 2, 3, 6)), SAME, NOT_LSTM,
                         ""),
    "lstm_packed_hx_batch": (lambda m, k: m(sorted_packed(), state(k, 2, 5, 7)), TYPE,
                             LSTM_ONLY, "torch.nn.LSTM does not check a packed input's state "
                             "in Python: 'The size of tensor a (5) must match...' from its "
                             "kernel"),
    "lstm_packed_hx_layers": (lambda m, k: m(sorted_packed(), state(k, 3, 3, 7)), TYPE,
                              LSTM_ONLY, "torch: 'Expected more hidden states in stacked_rnn' "
                              "from its kernel"),
    "lstm_packed_hx_hidden": (lambda m, k: m(sorted_packed(), state(k, 2, 3, 6)), TYPE,
                              LSTM_ONLY, "torch: 'got an incorrect number of RNN parameters' "
                              "from its kernel"),
    # ---- hand-built PackedSequence with malformed batch_sizes
    "packed_empty": (lambda m, k: m(PackedSequence(torch.zeros(0, 5), torch.zeros(0).long())),
                     SAME, ALL, ""),
    "packed_batch_sizes_increasing": (
        lambda m, k: m(PackedSequence(torch.zeros(5, 5), torch.tensor([2, 3]))), TYPE, ALL,
        "torch: a broadcast error from inside its kernel; rnnfast: 'batch_sizes must be "
        "non-negative and non-increasing'"),
    "packed_batch_sizes_negative": (
        lambda m, k: m(PackedSequence(torch.zeros(1, 5), torch.tensor([3, -2]))), TYPE, ALL,
        "torch: 'start (0) + length (3) exceeds dimension size (1).' from a narrow in its "
        "kernel"),
    "packed_batch_sizes_int32": (
        lambda m, k: m(PackedSequence(torch.zeros(5, 5), torch.tensor([3, 2], dtype=torch.int32))),
        TYPE, ALL, "torch: 'expected scalar type Long but found Int' from its kernel"),
    "packed_batch_sizes_sum_too_small": (
        lambda m, k: m(PackedSequence(torch.zeros(6, 5), torch.tensor([3, 2]))), STRICTER, ALL,
        "torch ignores the packed rows beyond sum(batch_sizes); rnnfast refuses the "
        "inconsistent PackedSequence"),
}


def _layer_cases():
    for name, (_, _, kinds, _) in LAYER_CASES.items():
        for kind in kinds:
            yield pytest.param(kind, name, id=f"{kind}-{name}")


def valid_call_matches(ref, fast, cell=False):
    """A valid forward and backward afterwards still matches torch.nn (float32 tolerances:
    the modules under test are float32)."""
    if cell:
        x = torch.randn(3, I)
        results = []
        for m in (ref, fast):
            m.zero_grad(set_to_none=True)
            xl = x.clone().requires_grad_(True)
            out = m(xl)
            outs = out if isinstance(out, tuple) else (out,)
            sum(o.sum() * (i + 1) for i, o in enumerate(outs)).backward()
            res = {f"out{i}": o.detach() for i, o in enumerate(outs)}
            res["x"] = xl.grad
            res.update({n: p.grad for n, p in m.named_parameters()})
            results.append(res)
        assert_results_close(results[1], results[0], torch.float32)
        return
    form = "packed_unsorted"
    x, lengths = make_input(form, 4, 3, I, False, torch.float32)
    hx = (make_hx(form, L, 3, H, H, torch.float32) if isinstance(ref, nn.LSTM)
          else make_h0(form, L, 3, H, torch.float32))
    with torch_native_cpu_rnn():
        expected, grads = run_rnn(ref, x, hx, form, False, lengths)
    got, _ = run_rnn(fast, x, hx, form, False, lengths, grads)
    assert_results_close(got, expected, torch.float32)


def check_case(ref, fast, call, expectation, why):
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    with torch_native_cpu_rnn():
        expected = capture_error(lambda: call(ref)) if expectation != STRICTER else None
        if expectation == STRICTER:
            call(ref)  # torch.nn accepts it (documented divergence)
    got = capture_error(lambda: call(fast))
    if expectation == STRICTER:
        assert type(got) is RuntimeError and str(got).startswith("rnnfast::"), (type(got), got)
    else:
        assert type(got) is type(expected), (
            f"exception type differs: rnnfast {type(got).__name__}({got}), "
            f"torch.nn {type(expected).__name__}({expected})")
        if expectation == SAME:
            assert str(got) == str(expected)
        else:
            assert why, "a TYPE case must say why the messages differ"
    # nothing was modified by the failed call, and the module is still correct
    after = fast.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    return got


@pytest.mark.parametrize("kind,case", list(_layer_cases()))
def test_layer_bad_input_matches_torch(kind, case):
    call, expectation, _, why = LAYER_CASES[case]
    ref, fast = layer_pair(kind)
    check_case(ref, fast, lambda m: call(m, kind), expectation, why)
    valid_call_matches(ref, fast)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_after_many_errors_in_a_row(kind):
    """Every bad call on the same module in a row, then a valid one: no state accumulates
    (no half-updated flat-weight cache, no stale workspace)."""
    ref, fast = layer_pair(kind)
    for name, (call, expectation, kinds, why) in LAYER_CASES.items():
        if kind in kinds:
            check_case(ref, fast, lambda m: call(m, kind), expectation, why)
    valid_call_matches(ref, fast)


def test_lstm_unbatched_hx_tuple_truncation_matches_torch():
    """torch.nn.LSTM with unbatched input rebuilds hx as (hx[0], hx[1]), so a longer tuple
    or a list is accepted there; rnnfast does the same."""
    ref, fast = layer_pair("lstm")
    x = torch.randn(3, I)
    hx = (torch.randn(2, H), torch.randn(2, H), torch.randn(2, H))
    for m_hx in (hx, list(hx[:2])):
        with torch_native_cpu_rnn():
            exp_out, (exp_h, exp_c) = ref(x, m_hx)
        got_out, (got_h, got_c) = fast(x, m_hx)
        assert_results_close({"o": got_out, "h": got_h, "c": got_c},
                             {"o": exp_out, "h": exp_h, "c": exp_c}, torch.float32)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_meta_module_and_meta_input(kind):
    """A module moved to 'meta' runs on meta input (shape inference through the fake
    kernels in rnnfast/ops.py), like torch.nn: same output shapes, dtypes and devices."""
    ref, fast = layer_pair(kind, bidirectional=True)
    ref, fast = ref.to("meta"), fast.to("meta")
    for inp in (torch.empty(4, 3, I, device="meta"), torch.empty(4, I, device="meta")):
        exp_out, exp_state = ref(inp)
        got_out, got_state = fast(inp)
        exp_state = exp_state if isinstance(exp_state, tuple) else (exp_state,)
        got_state = got_state if isinstance(got_state, tuple) else (got_state,)
        for got, exp in zip((got_out, *got_state), (exp_out, *exp_state)):
            assert got.device.type == "meta" and got.shape == exp.shape and \
                got.dtype == exp.dtype, (got, exp)


BAD_CONSTRUCTOR_ARGS = {
    "input_size_str": dict(input_size="5"),
    "hidden_size_none": dict(hidden_size=None),
    "hidden_size_float": dict(hidden_size=7.5),
    "hidden_size_negative": dict(hidden_size=-3),
    "num_layers_float": dict(num_layers=2.0),
    "num_layers_negative": dict(num_layers=-1),
    "dropout_str": dict(dropout="0.5"),
    "dropout_above_1": dict(dropout=1.5),
    "unknown_kwarg": dict(foo=1),
    "bad_dtype": dict(dtype="float32"),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTOR_ARGS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_constructor_bad_arguments_match_torch(kind, case):
    ref_cls, fast_cls, extra = LAYERS[kind]
    kwargs = dict(input_size=I, hidden_size=H, **extra)
    kwargs.update(BAD_CONSTRUCTOR_ARGS[case])
    expected = capture_error(lambda: ref_cls(**kwargs))
    got = capture_error(lambda: fast_cls(**kwargs))
    assert type(got) is type(expected), (got, expected)
    # Python's own TypeError names the __init__ that refused a keyword: torch.nn.LSTM
    # forwards **kwargs to RNNBase.__init__, rnnfast.LSTM spells its parameters out.
    def normalise(e):
        return re.sub(r"\w+\.__init__\(\)", "__init__()", str(e))
    assert normalise(got) == normalise(expected)


# ------------------------------------------------------------------------------ cells

CELL_CASES = {
    "input_0d": (lambda m, k: m(torch.tensor(1.0)), SAME, ALL, ""),
    "input_3d": (lambda m, k: m(x3(2, 3, 5)), SAME, ALL, ""),
    "input_size": (lambda m, k: m(x3(3, 6)), SAME, ALL, ""),
    "input_size_zero": (lambda m, k: m(x3(3, 0)), SAME, ALL, ""),
    "input_empty_1d": (lambda m, k: m(torch.zeros(0)), SAME, ALL, ""),
    "input_int64": (lambda m, k: m(torch.ones(3, 5, dtype=torch.int64)), SAME, ALL, ""),
    "input_bool": (lambda m, k: m(torch.ones(3, 5, dtype=torch.bool)), SAME, ALL, ""),
    "input_float64": (lambda m, k: m(x3(3, 5, dtype=torch.float64)), SAME, ALL, ""),
    "input_float16": (lambda m, k: m(x3(3, 5, dtype=torch.float16)), SAME, ALL, ""),
    "input_complex": (lambda m, k: m(x3(3, 5).to(torch.complex64)), SAME, ALL, ""),
    "input_none": (lambda m, k: m(None), SAME, ALL, ""),
    "input_list": (lambda m, k: m([1.0] * 5), SAME, ALL, ""),
    "hx_int": (lambda m, k: m(x3(3, 5), 3), SAME, ALL, ""),
    "hx_str": (lambda m, k: m(x3(3, 5), "hx"), SAME, ALL, ""),
    "hx_tuple_of_none": (lambda m, k: m(x3(3, 5), (None, None)), SAME, ALL, ""),
    "extra_positional": (lambda m, k: m(x3(3, 5), None, 1), SAME, ALL, ""),
    "hx_hidden": (lambda m, k: m(x3(3, 5), state(k, 3, 8)), SAME, ALL, ""),
    "hx_batch": (lambda m, k: m(x3(3, 5), state(k, 2, 7)), SAME, ALL, ""),
    "hx_3d": (lambda m, k: m(x3(3, 5), state(k, 1, 3, 7)), SAME, ALL, ""),
    "hx_float64": (lambda m, k: m(x3(3, 5), state(k, 3, 7, dtype=torch.float64)), SAME, ALL,
                   ""),
    "hx_int64": (lambda m, k: m(x3(3, 5), state(k, 3, 7, dtype=torch.int64)), SAME, ALL, ""),
    "lstm_hx_single_tensor": (lambda m, k: m(x3(3, 5), torch.zeros(3, 7)), SAME, LSTM_ONLY, ""),
    "lstm_hx_1_tuple": (lambda m, k: m(x3(3, 5), (torch.zeros(3, 7),)), SAME, LSTM_ONLY, ""),
    "lstm_hx_3_tuple": (lambda m, k: m(x3(3, 5), (torch.zeros(3, 7),) * 3), SAME, LSTM_ONLY, ""),
    "lstm_unbatched_hx_1_tuple": (lambda m, k: m(x3(5), (torch.zeros(7),)), SAME, LSTM_ONLY,
                                  ""),
    "gru_rnn_hx_tuple": (lambda m, k: m(x3(3, 5), (torch.zeros(3, 7),) * 2), SAME, NOT_LSTM,
                         ""),
    "gru_rnn_hx_list": (lambda m, k: m(x3(3, 5), [torch.zeros(3, 7)]), SAME, NOT_LSTM, ""),
    "input_meta": (lambda m, k: m(x3(3, 5, device="meta")), TYPE, ALL,
                   "torch: 'Tensor on device cpu is not on the expected device meta!' from the "
                   "meta kernel of its matmul"),
    "hx_meta": (lambda m, k: m(x3(3, 5), state(k, 3, 7, device="meta")), TYPE, ALL,
                "torch: the meta kernel's device message, as above"),
}


def _cell_cases():
    for name, (_, _, kinds, _) in CELL_CASES.items():
        for kind in kinds:
            yield pytest.param(kind, name, id=f"{kind}-{name}")


@pytest.mark.parametrize("kind,case", list(_cell_cases()))
def test_cell_bad_input_matches_torch(kind, case):
    call, expectation, _, why = CELL_CASES[case]
    ref, fast = cell_pair(kind)
    check_case(ref, fast, lambda m: call(m, kind), expectation, why)
    valid_call_matches(ref, fast, cell=True)


# ----------------------------------------------------------------- the operators directly

def _op_args(**over):
    """Valid arguments of rnnfast::rnn_forward (T=3, B=2, I=5, H=4), with overrides."""
    args = dict(input=torch.randn(3, 2, 5), hx=torch.zeros(2, 4), w_ih=torch.randn(4, 5),
                w_hh=torch.randn(4, 4), b_ih=torch.randn(4), b_hh=torch.randn(4),
                batch_sizes=None, reverse=False, relu=False)
    args.update(over)
    return args


OP_CASES = {
    "input_2d_unpacked": dict(input=torch.randn(3, 5)),
    "input_int": dict(input=torch.ones(3, 2, 5, dtype=torch.int64)),
    "w_ih_shape": dict(w_ih=torch.randn(4, 6)),
    "w_ih_rank": dict(w_ih=torch.randn(4)),
    "w_hh_shape": dict(w_hh=torch.randn(4, 5)),
    "hx_shape": dict(hx=torch.zeros(3, 4)),
    "hx_dtype": dict(hx=torch.zeros(2, 4, dtype=torch.float64)),
    "bias_only_one": dict(b_hh=None),
    "bias_shape": dict(b_ih=torch.randn(5)),
    "batch_sizes_2d": dict(input=torch.randn(6, 5), batch_sizes=torch.tensor([[2, 2, 2]])),
    "batch_sizes_float": dict(input=torch.randn(6, 5), batch_sizes=torch.tensor([2.0, 2, 2])),
    "batch_sizes_sum": dict(input=torch.randn(7, 5), batch_sizes=torch.tensor([2, 2, 2])),
    "batch_sizes_increasing": dict(input=torch.randn(6, 5), batch_sizes=torch.tensor([1, 2, 3])),
    "batch_sizes_negative": dict(input=torch.randn(1, 5), batch_sizes=torch.tensor([2, -1])),
    "batch_sizes_packed_3d": dict(batch_sizes=torch.tensor([2, 2, 2])),
    "batch_sizes_hx_mismatch": dict(input=torch.randn(3, 5), batch_sizes=torch.tensor([1, 1, 1])),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_operator_rejects_bad_arguments(case):
    """The C++ operators check every argument a caller of torch.ops.rnnfast.* could get
    wrong and raise (never crash or read out of bounds); errors name the operator.
    (Mixing a 'meta' tensor into an operator call is not among the cases: the dispatcher
    then picks the Meta kernel, as it does for torch's own ops such as torch.mm, and no
    CPU code runs; the modules check devices themselves, see the tables above.)"""
    args = _op_args(**OP_CASES[case])
    err = capture_error(lambda: torch.ops.rnnfast.rnn_forward(**args))
    assert isinstance(err, RuntimeError), (type(err), err)
    assert "rnnfast::rnn_forward" in str(err), str(err)
    # the same op with valid arguments still works
    out, hy = torch.ops.rnnfast.rnn_forward(**_op_args())
    assert out.shape == (3, 2, 4) and hy.shape == (2, 4) and torch.isfinite(out).all()


def test_backward_operator_rejects_wrong_workspace():
    x = torch.randn(3, 2, 5)
    w_ih, w_hh = torch.randn(12, 5), torch.randn(12, 4)
    out, hy, ws = torch.ops.rnnfast.gru_forward(x, torch.zeros(2, 4), w_ih, w_hh, None, None,
                                                None, False, True)
    for bad_ws in (ws[:-1], torch.empty(0), ws.reshape(-1)[:5]):
        err = capture_error(lambda: torch.ops.rnnfast.gru_backward(
            torch.ones_like(out), None, x, torch.zeros(2, 4), w_ih, w_hh, out, bad_ws, None,
            False, False, True))
        assert isinstance(err, RuntimeError) and "workspace" in str(err), err
    grads = torch.ops.rnnfast.gru_backward(torch.ones_like(out), None, x, torch.zeros(2, 4),
                                           w_ih, w_hh, out, ws, None, False, False, True)
    assert all(torch.isfinite(g).all() for g in grads)


# -------------------------------------------------------------------------- NaN and Inf

def _poison(x, where, value):
    x = x.clone()
    for idx in where:
        x[idx] = value
    return x


def _assert_same_nonfinite(got, expected, dtype, what):
    """Same NaN positions, same +Inf/-Inf positions, finite entries close."""
    assert torch.equal(torch.isnan(got), torch.isnan(expected)), f"{what}: NaN positions differ"
    for sign in (1, -1):
        assert torch.equal(got == sign * float("inf"), expected == sign * float("inf")), \
            f"{what}: {'+' if sign > 0 else '-'}Inf positions differ"
    finite = torch.isfinite(expected)
    assert_results_close({what: got[finite]}, {what: expected[finite]}, dtype)


def _run_poisoned(kind, form, poison, dtype, backward):
    """torch.nn and rnnfast on the same input with NaN or +-Inf in it (or NaN in h0):
    poisoned entries in two sequences at two steps (sequence 1 at step 0, feature 3;
    sequence 2 at step 2, feature 0, present at that step when its drawn length is >= 3;
    packing drops padded rows, so positions map identically in both runs)."""
    ref, fast = layer_pair(kind, dtype=dtype, bidirectional=True)
    T, B = 5, 4
    x, lengths = make_input(form, T, B, I, False, dtype)
    hx = (make_hx(form, 2 * L, B, H, H, dtype) if kind == "lstm"
          else make_h0(form, 2 * L, B, H, dtype))
    value = {"nan": float("nan"), "inf": float("inf"), "neg_inf": -float("inf"),
             "nan_in_hx": float("nan")}[poison]
    if poison == "nan_in_hx":
        h = hx[0] if kind == "lstm" else hx
        h = _poison(h, [(1, 0, 2)], value)  # layer 0 reverse direction, sequence 0, unit 2
        hx = (h, hx[1]) if kind == "lstm" else h
    else:
        x = _poison(x, [(0, 1, 3), (2, 2, 0)], value)
    with torch_native_cpu_rnn():
        expected, grads = run_rnn(ref, x, hx, form, False, lengths, backward=backward)
    got, _ = run_rnn(fast, x, hx, form, False, lengths, grads, backward=backward)
    assert sorted(got) == sorted(expected)
    return got, expected


def _compare_poisoned(got, expected, dtype, keys):
    saw_nonfinite = False
    for key in keys:
        exp = expected[key]
        if exp is None:
            assert got[key] is None, key
            continue
        saw_nonfinite |= not bool(torch.isfinite(exp).all())
        _assert_same_nonfinite(got[key], exp, dtype, key)
    return saw_nonfinite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("poison", ["nan", "inf", "neg_inf", "nan_in_hx"])
@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_nan_inf_propagate_like_torch(kind, form, poison, dtype):
    """Outputs and final states have NaN/Inf exactly where torch.nn has them, and equal
    values elsewhere (other sequences must stay finite and match)."""
    got, expected = _run_poisoned(kind, form, poison, dtype, backward=False)
    saw_nonfinite = _compare_poisoned(got, expected, dtype,
                                      [k for k in ("output", "h_n", "c_n") if k in expected])
    if poison in ("nan", "nan_in_hx"):
        assert saw_nonfinite  # NaN always reaches the outputs (Inf may saturate to finite)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("poison", ["nan", "nan_in_hx"])
@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_nan_gradients_like_torch(kind, form, poison, dtype):
    """With NaN in the input or h0, every gradient (input, h0, c0, each parameter) has NaN
    exactly where torch.nn's has, and equal values elsewhere. (NaN is absorbing under any
    summation order, so positions are implementation-independent. With +-Inf only the
    forward is compared above: torch's sigmoid'(-inf) is exactly 0 while rnnfast's float32
    sigmoid saturates at ~1e-38, so 0*inf = NaN against tiny*inf = inf in a weight gradient
    is a rounding difference, not a bug.)"""
    got, expected = _run_poisoned(kind, form, poison, dtype, backward=True)
    keys = [k for k in expected if k.startswith("grad")]
    assert _compare_poisoned(got, expected, dtype, keys)


@pytest.mark.parametrize("poison", ["nan", "inf"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cell_nan_inf_propagate_like_torch(kind, poison):
    ref, fast = cell_pair(kind, dtype=torch.float64)
    x = _poison(torch.randn(4, I, dtype=torch.float64), [(1, 2)], float(poison))
    outs = []
    for m in (ref, fast):
        out = m(x)
        outs.append(out if isinstance(out, tuple) else (out,))
    for i, (got, exp) in enumerate(zip(outs[1], outs[0])):
        _assert_same_nonfinite(got, exp, torch.float64, f"state{i}")
    if poison == "nan":
        assert torch.isnan(outs[0][0][1]).all() and torch.isfinite(outs[0][0][0]).all()

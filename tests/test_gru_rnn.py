"""Parity of rnnfast.GRU and rnnfast.RNN (nonlinearity 'tanh' and 'relu') with torch.nn.GRU
and torch.nn.RNN: same constructor, parameters, state_dict, repr, input forms, outputs,
final states, gradients, errors, dropout, and torch.compile support.

The same standard as tests/test_lstm.py; every test runs for the three kinds of layer.
The extension is required: these tests fail (not skip) when rnnfast cannot be imported.
"""

import contextlib
import copy
import io
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from conftest import (
    FORMS,
    assert_results_close,
    assert_same_error,
    build_input,
    capture_error,
    make_h0,
    make_input,
    run_rnn,
    torch_native_cpu_rnn,
)

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

#: kind -> (torch.nn class, rnnfast class, extra constructor kwargs)
KINDS = {
    "gru": (nn.GRU, lambda: rnnfast.GRU, {}),
    "rnn_tanh": (nn.RNN, lambda: rnnfast.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, lambda: rnnfast.RNN, {"nonlinearity": "relu"}),
}
KIND_IDS = list(KINDS)


def classes(kind):
    torch_cls, fast_cls, kind_kwargs = KINDS[kind]
    return torch_cls, fast_cls(), kind_kwargs


def make_pair(kind, input_size, hidden_size, dtype=torch.float32, **kwargs):
    """A torch.nn module and its rnnfast counterpart with identical weights."""
    torch_cls, fast_cls, kind_kwargs = classes(kind)
    ref = torch_cls(input_size, hidden_size, dtype=dtype, **kind_kwargs, **kwargs)
    fast = fast_cls(input_size, hidden_size, dtype=dtype, **kind_kwargs, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def make_module(kind, *args, **kwargs):
    """(torch.nn module, rnnfast module) built with the same arguments (weights differ)."""
    torch_cls, fast_cls, kind_kwargs = classes(kind)
    kwargs = {**kind_kwargs, **kwargs}
    return torch_cls(*args, **kwargs), fast_cls(*args, **kwargs)


def compare(ref, fast, form="batched", steps=5, batch=4, with_hx=True, backward=True,
            native=True):
    """Run both modules on the same random input (and h0) and compare everything.
    ``native``: run torch.nn on ATen's native CPU path (see torch_native_cpu_rnn)."""
    dtype = ref.weight_ih_l0.dtype
    x, lengths = make_input(form, steps, batch, ref.input_size, ref.batch_first, dtype)
    hx = None
    if with_hx:
        d = 2 if ref.bidirectional else 1
        hx = make_h0(form, ref.num_layers * d, batch, ref.hidden_size, dtype)
    with torch_native_cpu_rnn() if native else contextlib.nullcontext():
        expected, grads = run_rnn(ref, x, hx, form, ref.batch_first, lengths,
                                  backward=backward)
    got, _ = run_rnn(fast, x, hx, form, ref.batch_first, lengths, grads, backward=backward)
    assert_results_close(got, expected, dtype)
    return got, expected


def test_exports():
    assert issubclass(rnnfast.GRU, nn.Module) and issubclass(rnnfast.RNN, nn.Module)
    assert "GRU" in rnnfast.__all__ and "RNN" in rnnfast.__all__


# --------------------------------------------------------------------------- parity grid

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_parity(kind, num_layers, bidirectional, bias, batch_first, form, with_hx, dtype):
    ref, fast = make_pair(kind, 6, 7, dtype, num_layers=num_layers,
                          bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    compare(ref, fast, form, with_hx=with_hx)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_parity_three_layers(kind, bidirectional, form, dtype):
    """A middle layer (input D*H from below, output D*H to above)."""
    ref, fast = make_pair(kind, 6, 7, dtype, num_layers=3, bidirectional=bidirectional)
    compare(ref, fast, form)


@pytest.mark.parametrize("form", ["batched", "unbatched"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_parity_with_torch_default_path(kind, form):
    """The grid runs torch.nn with oneDNN disabled; check torch's default CPU path too."""
    ref, fast = make_pair(kind, 6, 7, torch.float32, num_layers=2, bidirectional=True)
    compare(ref, fast, form, native=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("form", ["batched", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("steps,batch", [(1, 3), (5, 1), (1, 1), (6, 5)],
                         ids=["T1", "B1", "T1B1", "T6B5"])
@pytest.mark.parametrize("hidden_size", [1, 7, 33], ids=["H1", "H7", "H33"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_odd_sizes(kind, hidden_size, steps, batch, form, dtype):
    ref, fast = make_pair(kind, 5, hidden_size, dtype, num_layers=2, bidirectional=True)
    compare(ref, fast, form, steps=steps, batch=batch)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_empty_batch(kind, batch_first, with_hx):
    """B=0 (torch supports it for padded input: empty outputs, zero-size gradients)."""
    ref, fast = make_pair(kind, 5, 7, torch.float64, num_layers=2, bidirectional=True,
                          batch_first=batch_first)
    got, _ = compare(ref, fast, "batched", steps=4, batch=0, with_hx=with_hx)
    assert got["output"].shape == ((0, 4, 14) if batch_first else (4, 0, 14))
    assert got["h_n"].shape == (4, 0, 7)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_relu_rnn_large_activations(kind):
    """Larger weights: relu activations grow without bound, tanh/sigmoid saturate. Both
    regimes must still agree (relative tolerance)."""
    ref, fast = make_pair(kind, 5, 9, torch.float64, num_layers=2, bidirectional=True)
    with torch.no_grad():
        for m in (ref, fast):
            for p in m.parameters():
                p.mul_(3.0)
    compare(ref, fast, "packed_unsorted", steps=7, batch=4)


# ------------------------------------------------------------------- gradient variants

@pytest.mark.parametrize("used", ["output", "h_n"])
@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_gradient_from_one_output_only(kind, used, form):
    """Only one of output/h_n reaches the loss: the other's upstream grad is None."""
    ref, fast = make_pair(kind, 4, 6, torch.float64, num_layers=2, bidirectional=True)
    x, lengths = make_input(form, 5, 3, 4, False, torch.float64)
    hx = make_h0(form, 4, 3, 6, torch.float64)
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        xl = x.clone().requires_grad_(True)
        h0 = hx.clone().requires_grad_(True)
        out, h_n = m(build_input(xl, form, False, lengths), h0)
        t = {"output": out.data if form != "batched" else out, "h_n": h_n}[used]
        (t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum().backward()
        grads = {"x": xl.grad, "h0": h0.grad}
        grads.update({n: p.grad for n, p in m.named_parameters()})
        results.append(grads)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("what", ["input_only", "params_only", "hx_only"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_partial_requires_grad(kind, what):
    """Gradients requested for only some inputs (frozen weights, constant input...)."""
    ref, fast = make_pair(kind, 4, 6, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    hx = make_h0("batched", 4, 3, 6, torch.float64)
    grads_out = None
    results = []
    for m in (ref, fast):
        for p in m.parameters():
            p.grad = None
            p.requires_grad_(what == "params_only")
        xl = x.clone().requires_grad_(what == "input_only")
        h0 = hx.clone().requires_grad_(what == "hx_only")
        out, h_n = m(xl, h0)
        if grads_out is None:
            grads_out = [torch.randn_like(t) for t in (out, h_n)]
        sum((t * g).sum() for t, g in zip((out, h_n), grads_out)).backward()
        res = {"x": xl.grad, "h0": h0.grad, "out": out.detach()}
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_chained_calls_share_module(kind):
    """The module used twice in one graph (second call continues from the first's state)."""
    ref, fast = make_pair(kind, 4, 5, torch.float64, num_layers=2)
    x1 = torch.randn(3, 2, 4, dtype=torch.float64)
    x2 = torch.randn(4, 2, 4, dtype=torch.float64)
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        out1, h1 = m(a)
        out2, h2 = m(b, h1)
        loss = (out1 * 0.5).sum() + (out2 ** 2).sum() - (h2 * 3).sum()
        loss.backward()
        res = {"out2": out2.detach(), "a": a.grad, "b": b.grad}
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_non_contiguous_input_and_state(kind):
    ref, fast = make_pair(kind, 4, 6, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(3, 5, 4, dtype=torch.float64).transpose(0, 1)  # (T=5, B=3, I) view
    h0 = torch.randn(6, 4, 3, dtype=torch.float64).permute(1, 2, 0)
    assert not (x.is_contiguous() or h0.is_contiguous())
    exp_out, exp_h = ref(x, h0)
    got_out, got_h = fast(x, h0)
    assert_results_close({"o": got_out, "h": got_h}, {"o": exp_out, "h": exp_h},
                         torch.float64)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_gradients_bitwise_reproducible(kind):
    """DESIGN.md: reductions, not atomics; two identical runs give identical bits."""
    _, fast = make_module(kind, 6, 9, num_layers=2, bidirectional=True)
    x, lengths = make_input("packed_unsorted", 6, 5, 6, False, torch.float32)
    hx = make_h0("packed_unsorted", 4, 5, 9, torch.float32)
    first, grads = run_rnn(fast, x, hx, "packed_unsorted", False, lengths)
    second, _ = run_rnn(fast, x, hx, "packed_unsorted", False, lengths, grads)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------ module interface parity

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, bias=False, batch_first=True, dropout=0.25, bidirectional=True),
    dict(batch_first=True, bias=False),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("kind", KIND_IDS)
def test_parameters_and_state_dict(kind, kwargs):
    ref, fast = make_module(kind, 5, 7, **kwargs)
    assert [(n, p.shape, p.dtype) for n, p in fast.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    if kind.startswith("rnn"):
        assert fast.nonlinearity == ref.nonlinearity
    # torch -> rnnfast
    fast.load_state_dict(ref.state_dict())
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    ref.eval(), fast.eval()
    compare(ref, fast, "batched")
    # rnnfast -> torch
    ref2, fast2 = make_module(kind, 5, 7, **kwargs)
    ref2.load_state_dict(fast2.state_dict())
    ref2.eval(), fast2.eval()
    compare(ref2, fast2, "packed_unsorted")


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("kind", KIND_IDS)
def test_all_weights(kind, kwargs):
    ref, fast = make_pair(kind, 5, 7, **kwargs)
    assert [[p.shape for p in layer] for layer in fast.all_weights] == \
        [[p.shape for p in layer] for layer in ref.all_weights]


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("kind", KIND_IDS)
def test_same_initialisation_under_same_seed(kind, kwargs):
    """A training script that seeds and builds its model gets the same initial weights."""
    torch_cls, fast_cls, kind_kwargs = classes(kind)
    torch.manual_seed(7)
    ref = torch_cls(5, 7, **kind_kwargs, **kwargs)
    torch.manual_seed(7)
    fast = fast_cls(5, 7, **kind_kwargs, **kwargs)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("kind", KIND_IDS)
def test_repr(kind, kwargs):
    ref, fast = make_module(kind, 5, 7, **kwargs)
    expected = type(fast).__name__ + repr(ref)[len(type(ref).__name__):]
    assert repr(fast) == expected


def test_rnn_positional_nonlinearity():
    """torch.nn.RNN(input_size, hidden_size, num_layers, nonlinearity, bias, ...)."""
    ref = nn.RNN(5, 7, 2, "relu", False)
    fast = rnnfast.RNN(5, 7, 2, "relu", False)
    assert (fast.nonlinearity, fast.mode, fast.num_layers, fast.bias) == \
        (ref.nonlinearity, ref.mode, ref.num_layers, ref.bias) == ("relu", "RNN_RELU", 2, False)
    fast.load_state_dict(ref.state_dict())
    compare(ref, fast)
    assert rnnfast.RNN(5, 7).nonlinearity == "tanh"
    assert rnnfast.RNN(5, 7).mode == "RNN_TANH"


def test_not_torch_rnn_subclasses():
    """DESIGN.md: Dynamo refuses isinstance(m, (nn.RNN, nn.GRU, nn.LSTM))."""
    for m in (rnnfast.GRU(3, 4), rnnfast.RNN(3, 4), rnnfast.RNN(3, 4, nonlinearity="relu")):
        assert not isinstance(m, (nn.RNN, nn.GRU, nn.LSTM)), type(m)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_to_float64(kind):
    ref, fast = make_pair(kind, 5, 7, num_layers=2, bidirectional=True)
    ref = ref.to(torch.float64)
    fast = fast.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    compare(ref, fast, "packed_unsorted")
    compare(ref.float(), fast.float(), "batched")


@pytest.mark.parametrize("kind", KIND_IDS)
def test_factory_kwargs(kind):
    ref, fast = make_module(kind, 5, 7, num_layers=2, device="cpu", dtype=torch.float64)
    for p in fast.parameters():
        assert p.dtype == torch.float64 and p.device == torch.device("cpu")
    fast.load_state_dict(ref.state_dict())
    compare(ref, fast, "unbatched")


@pytest.mark.parametrize("kind", KIND_IDS)
def test_weights_changed_in_place_or_reassigned_are_used(kind):
    ref, fast = make_pair(kind, 4, 5, torch.float64, num_layers=2)
    with torch.no_grad():
        for m in (ref, fast):
            m.weight_hh_l1.mul_(1.5)
            m.bias_ih_l0.add_(0.25)
    compare(ref, fast)
    w = torch.randn(*ref.weight_ih_l0.shape, dtype=torch.float64)
    ref.weight_ih_l0 = nn.Parameter(w.clone())
    fast.weight_ih_l0 = nn.Parameter(w.clone())
    compare(ref, fast)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_flatten_parameters_is_harmless(kind):
    """Scripts written for torch.nn call flatten_parameters(); it must work and change
    nothing."""
    ref, fast = make_pair(kind, 4, 5, torch.float64, num_layers=2, bidirectional=True)
    fast.flatten_parameters()
    compare(ref, fast)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_deepcopy_and_torch_save_whole_module(kind):
    """copy.deepcopy and torch.save/torch.load of the module object (not just its
    state_dict), as training scripts and checkpointing do."""
    ref, fast = make_pair(kind, 5, 7, torch.float64, num_layers=2, bidirectional=True)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for clone in (copy.deepcopy(fast), loaded):
        assert type(clone) is type(fast)
        compare(ref, clone, "packed_unsorted")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_other_dtypes_fall_back_to_torch(kind, dtype):
    """README: dtypes without a kernel run torch's own implementation, so the results are
    torch's (bitwise: same code path)."""
    ref, fast = make_pair(kind, 5, 7, dtype, num_layers=2, bidirectional=True)
    x = torch.randn(4, 3, 5, dtype=dtype)
    exp_out, exp_h = ref(x)
    got_out, got_h = fast(x)
    assert got_out.dtype == dtype and got_h.dtype == dtype
    assert torch.equal(got_out, exp_out) and torch.equal(got_h, exp_h)


# --------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("kind", KIND_IDS)
def test_dropout_deterministic_under_seed(kind):
    _, fast = make_module(kind, 5, 7, num_layers=3, dropout=0.5, bidirectional=True)
    fast.train()
    x, lengths = make_input("packed_unsorted", 6, 4, 5, False, torch.float32)
    torch.manual_seed(42)
    first, grads = run_rnn(fast, x, None, "packed_unsorted", False, lengths)
    torch.manual_seed(42)
    second, _ = run_rnn(fast, x, None, "packed_unsorted", False, lengths, grads)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # dropout is really applied in training mode...
    fast.eval()
    third, _ = run_rnn(fast, x, None, "packed_unsorted", False, lengths, grads)
    assert not torch.allclose(third["output"], first["output"])


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_dropout_train_mode_matches_torch_under_same_seed(kind, form):
    """torch draws its inter-layer masks with at::dropout on each layer's time-major (or
    packed) output in layer order (tests/test_reference.py checks this for GRU and RNN);
    doing the same reproduces a seeded training run exactly."""
    ref, fast = make_pair(kind, 5, 7, torch.float64, num_layers=3, dropout=0.5,
                          bidirectional=True)
    ref.train(), fast.train()
    x, lengths = make_input(form, 5, 3, 5, False, torch.float64)
    torch.manual_seed(11)
    with torch_native_cpu_rnn():
        expected, grads = run_rnn(ref, x, None, form, False, lengths)
    torch.manual_seed(11)
    got, _ = run_rnn(fast, x, None, form, False, lengths, grads)
    assert_results_close(got, expected, torch.float64)


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_dropout_ignored_in_eval_mode(kind, form):
    ref, fast = make_pair(kind, 5, 7, torch.float32, num_layers=3, dropout=0.5,
                          bidirectional=True)
    ref.eval(), fast.eval()
    compare(ref, fast, form)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_dropout_single_layer_train_mode_is_identity(kind):
    """dropout applies between layers only: one layer in train mode matches torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, fast = make_pair(kind, 5, 7, torch.float32, num_layers=1, dropout=0.5)
    ref.train(), fast.train()
    compare(ref, fast)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_dropout_warning_matches_torch(kind):
    torch_cls, fast_cls, kind_kwargs = classes(kind)
    with pytest.warns(UserWarning) as expected:
        torch_cls(5, 7, num_layers=1, dropout=0.5, **kind_kwargs)
    with pytest.warns(UserWarning) as got:
        fast_cls(5, 7, num_layers=1, dropout=0.5, **kind_kwargs)
    assert [str(w.message) for w in got] == [str(w.message) for w in expected]


# ------------------------------------------------------------------------------ errors

def _packed(lengths=(3, 2, 1)):
    return pack_padded_sequence(torch.randn(3, len(lengths), 5), list(lengths))


# Module under test: input_size 5, hidden_size 7, 2 layers, bidirectional (4 states).
BAD_CALLS = {
    "input_1d": lambda m: m(torch.randn(5)),
    "input_4d": lambda m: m(torch.randn(2, 3, 4, 5)),
    "input_size_batched": lambda m: m(torch.randn(3, 2, 6)),
    "input_size_unbatched": lambda m: m(torch.randn(3, 6)),
    "input_size_packed": lambda m: m(pack_padded_sequence(torch.randn(3, 2, 6), [3, 1])),
    "input_dtype": lambda m: m(torch.randn(3, 2, 5, dtype=torch.float64)),
    "input_int_dtype": lambda m: m(torch.ones(3, 2, 5, dtype=torch.int32)),
    "hx_batch": lambda m: m(torch.randn(3, 2, 5), torch.randn(4, 3, 7)),
    "hx_hidden": lambda m: m(torch.randn(3, 2, 5), torch.randn(4, 2, 6)),
    "hx_layers": lambda m: m(torch.randn(3, 2, 5), torch.randn(2, 2, 7)),
    "batched_input_2d_hx": lambda m: m(torch.randn(3, 2, 5), torch.randn(4, 7)),
    "batched_input_4d_hx": lambda m: m(torch.randn(3, 2, 5), torch.randn(4, 2, 7, 1)),
    "unbatched_input_3d_hx": lambda m: m(torch.randn(3, 5), torch.randn(4, 1, 7)),
    "unbatched_hx_shape": lambda m: m(torch.randn(3, 5), torch.randn(4, 6)),
    "packed_hx_batch": lambda m: m(_packed(), torch.randn(4, 5, 7)),
    "packed_hx_2d": lambda m: m(_packed(), torch.randn(4, 7)),
    "zero_steps": lambda m: m(torch.randn(0, 2, 5)),
    "zero_steps_unbatched": lambda m: m(torch.randn(0, 5)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
@pytest.mark.parametrize("kind", KIND_IDS)
def test_forward_errors_match_torch(kind, case):
    ref, fast = make_pair(kind, 5, 7, num_layers=2, bidirectional=True)
    assert_same_error(lambda: BAD_CALLS[case](ref), lambda: BAD_CALLS[case](fast))
    # the module is still usable and correct afterwards
    compare(ref, fast, "packed_unsorted")


@pytest.mark.parametrize("kind", KIND_IDS)
def test_zero_steps_batch_first_error(kind):
    ref, fast = make_pair(kind, 5, 7, batch_first=True)
    assert_same_error(lambda: ref(torch.randn(2, 0, 5)), lambda: fast(torch.randn(2, 0, 5)))


@pytest.mark.parametrize("kind", KIND_IDS)
def test_state_dtype_mismatch_error_type(kind):
    """torch's message here comes from inside its matmul ('mat1 and mat2 must have the same
    dtype...'), so only the exception type is required to match."""
    ref, fast = make_pair(kind, 5, 7, num_layers=2, bidirectional=True)
    h = torch.randn(4, 2, 7, dtype=torch.float64)
    expected = capture_error(lambda: ref(torch.randn(3, 2, 5), h))
    got = capture_error(lambda: fast(torch.randn(3, 2, 5), h))
    assert type(got) is type(expected), (type(got), got, type(expected), expected)
    compare(ref, fast)


BAD_CONSTRUCTORS = {
    "dropout_2": dict(dropout=2),
    "dropout_negative": dict(dropout=-0.1),
    "dropout_bool": dict(dropout=True),
    "proj_size": dict(proj_size=3),
    "proj_size_0": dict(proj_size=0),
    "num_layers_0": dict(num_layers=0),
    "hidden_0": dict(hidden_size=0),
    "hidden_float": dict(hidden_size=7.0),
    "input_0": dict(input_size=0),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTORS))
@pytest.mark.parametrize("kind", KIND_IDS)
def test_constructor_errors_match_torch(kind, case):
    torch_cls, fast_cls, kind_kwargs = classes(kind)
    kwargs = dict(input_size=5, hidden_size=7, **kind_kwargs)
    kwargs.update(BAD_CONSTRUCTORS[case])
    assert_same_error(lambda: torch_cls(**kwargs), lambda: fast_cls(**kwargs))


@pytest.mark.parametrize("args,kwargs", [
    ((3, 4), dict(nonlinearity="sigmoid")),
    ((3, 4), dict(nonlinearity="Tanh")),
    ((3, 4, 2, "sigmoid"), {}),
], ids=["kw", "case", "positional"])
def test_rnn_bad_nonlinearity(args, kwargs):
    assert_same_error(lambda: nn.RNN(*args, **kwargs), lambda: rnnfast.RNN(*args, **kwargs))


# ------------------------------------------------------------- no_grad / inference_mode

@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_without_autograd(kind, mode, form):
    ref, fast = make_pair(kind, 5, 7, torch.float64, num_layers=2, bidirectional=True)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        got, _ = compare(ref, fast, form, backward=False)
    for key in ("output", "h_n"):
        assert not got[key].requires_grad, key


# ------------------------------------------------------------------------ torch.compile

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _strip_compiled_prefix(results):
    return {k.replace("_orig_mod.", ""): v for k, v in results.items()}


def _check_compiled(kind, backend, form, with_hx, batch_first=False):
    _, fast = make_module(kind, 5, 7, num_layers=2, bidirectional=True, dtype=torch.float64,
                          batch_first=batch_first)
    compiled = torch.compile(fast, fullgraph=True, backend=backend)
    x, lengths = make_input(form, 5, 3, 5, batch_first, torch.float64)
    hx = make_h0(form, 4, 3, 7, torch.float64) if with_hx else None
    expected, grads = run_rnn(fast, x, hx, form, batch_first, lengths)
    got, _ = run_rnn(compiled, x, hx, form, batch_first, lengths, grads)
    assert_results_close(_strip_compiled_prefix(got), expected, torch.float64)


COMPILE_CASES = [
    (backend, form, with_hx)
    for backend, form, with_hx in itertools.product(["eager", "aot_eager"], FORMS,
                                                    [True, False])
    # keep eager for the common forms; aot_eager (which also traces backward) for all
    if backend == "aot_eager" or form in ("batched", "packed_unsorted")
]


@pytest.mark.parametrize(
    "backend,form,with_hx", COMPILE_CASES,
    ids=[f"{b}-{f}-{'hx' if h else 'nohx'}" for b, f, h in COMPILE_CASES])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_torch_compile_fullgraph(kind, backend, form, with_hx, fresh_dynamo):
    """fullgraph=True: no graph break anywhere (PackedSequence included: batch_sizes is
    data, its values are unbacked symbols in the graph)."""
    _check_compiled(kind, backend, form, with_hx)


@pytest.mark.parametrize("kind", ["gru", "rnn_relu"])
def test_torch_compile_dynamic_shapes(kind, fresh_dynamo):
    """One compiled module, called with several sequence lengths and batch sizes (as the
    last, shorter batch of an epoch does) under dynamic=True."""
    _, fast = make_module(kind, 5, 7, num_layers=2, dtype=torch.float64)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager", dynamic=True)
    for steps, batch in ((5, 3), (3, 4), (7, 1)):
        x, _ = make_input("batched", steps, batch, 5, False, torch.float64)
        hx = make_h0("batched", 2, batch, 7, torch.float64)
        expected, grads = run_rnn(fast, x, hx)
        got, _ = run_rnn(compiled, x, hx, grads=grads)
        assert_results_close(_strip_compiled_prefix(got), expected, torch.float64)


@pytest.mark.parametrize("kind", ["gru", "rnn_relu"])
def test_torch_compile_inductor(kind, fresh_dynamo):
    _check_compiled(kind, "inductor", "batched", True, batch_first=True)

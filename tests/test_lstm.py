"""Parity of rnnfast.LSTM with torch.nn.LSTM: same constructor, parameters, state_dict,
repr, input forms, outputs, final states, gradients, errors, and torch.compile support.

The extension is required: these tests fail (not skip) when rnnfast cannot be imported.
"""

import contextlib
import warnings

import pytest
import torch
from torch import nn

import rnnfast
from conftest import (
    FORMS,
    assert_results_close,
    assert_same_error,
    build_input,
    capture_error,
    make_hx,
    make_input,
    run_lstm,
    torch_native_cpu_rnn,
)

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]


def make_pair(input_size, hidden_size, dtype=torch.float32, **kwargs):
    """A torch.nn.LSTM and an rnnfast.LSTM with identical weights."""
    ref = nn.LSTM(input_size, hidden_size, dtype=dtype, **kwargs)
    fast = rnnfast.LSTM(input_size, hidden_size, dtype=dtype, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def compare(ref, fast, form="batched", steps=5, batch=4, with_hx=True, backward=True,
            native=True):
    """Run both modules on the same random input (and hx) and compare everything.
    ``native``: run torch.nn.LSTM on ATen's native CPU path (see torch_native_cpu_rnn)."""
    dtype = ref.weight_ih_l0.dtype
    x, lengths = make_input(form, steps, batch, ref.input_size, ref.batch_first, dtype)
    hx = None
    if with_hx:
        d = 2 if ref.bidirectional else 1
        hx = make_hx(form, ref.num_layers * d, batch, ref.proj_size or ref.hidden_size,
                     ref.hidden_size, dtype)
    with torch_native_cpu_rnn() if native else contextlib.nullcontext():
        expected, grads = run_lstm(ref, x, hx, form, ref.batch_first, lengths,
                                   backward=backward)
    got, _ = run_lstm(fast, x, hx, form, ref.batch_first, lengths, grads, backward=backward)
    assert_results_close(got, expected, dtype)
    return got, expected


# --------------------------------------------------------------------------- parity grid

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("proj_size", [0, 3], ids=["noproj", "proj3"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
def test_parity(num_layers, bidirectional, proj_size, bias, batch_first, form, with_hx, dtype):
    ref, fast = make_pair(6, 7, dtype, num_layers=num_layers, bidirectional=bidirectional,
                          proj_size=proj_size, bias=bias, batch_first=batch_first)
    compare(ref, fast, form, with_hx=with_hx)


@pytest.mark.parametrize("form", ["batched", "unbatched"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_parity_with_torch_onednn_path(bidirectional, form):
    """The grid above runs torch.nn.LSTM on ATen's native path; float32 without projection
    normally goes through oneDNN: check against that too, at the same tolerance."""
    ref, fast = make_pair(6, 7, torch.float32, num_layers=2, bidirectional=bidirectional)
    compare(ref, fast, form, native=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("form", ["batched", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("steps,batch", [(1, 3), (5, 1), (1, 1), (6, 5)],
                         ids=["T1", "B1", "T1B1", "T6B5"])
@pytest.mark.parametrize("hidden_size", [1, 7, 33], ids=["H1", "H7", "H33"])
def test_odd_sizes(hidden_size, steps, batch, form, dtype):
    ref, fast = make_pair(5, hidden_size, dtype, num_layers=2, bidirectional=True)
    compare(ref, fast, form, steps=steps, batch=batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("hidden_size,proj_size", [(33, 3), (33, 32), (7, 1)])
def test_odd_sizes_projection(hidden_size, proj_size, dtype):
    ref, fast = make_pair(5, hidden_size, dtype, num_layers=2, bidirectional=True,
                          proj_size=proj_size)
    compare(ref, fast, "packed_unsorted", steps=4, batch=3)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("proj_size", [0, 3], ids=["noproj", "proj3"])
def test_empty_batch(proj_size, batch_first, with_hx):
    """B=0 (torch supports it for padded input: empty outputs, zero-size gradients)."""
    ref, fast = make_pair(5, 7, torch.float64, num_layers=2, bidirectional=True,
                          proj_size=proj_size, batch_first=batch_first)
    got, _ = compare(ref, fast, "batched", steps=4, batch=0, with_hx=with_hx)
    width = 2 * (proj_size or 7)
    assert got["output"].shape == ((0, 4, width) if batch_first else (4, 0, width))


# ------------------------------------------------------------------- gradient variants

@pytest.mark.parametrize("used", ["output", "h_n", "c_n"])
@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
def test_gradient_from_one_output_only(used, form):
    """Only one of output/h_n/c_n reaches the loss: the others' upstream grads are None."""
    ref, fast = make_pair(4, 6, torch.float64, num_layers=2, bidirectional=True)
    x, lengths = make_input(form, 5, 3, 4, False, torch.float64)
    hx = make_hx(form, 4, 3, 6, 6, torch.float64)
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        xl = x.clone().requires_grad_(True)
        h0, c0 = (t.clone().requires_grad_(True) for t in hx)
        out, (h_n, c_n) = m(build_input(xl, form, False, lengths), (h0, c0))
        t = {"output": out.data if form != "batched" else out, "h_n": h_n, "c_n": c_n}[used]
        (t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum().backward()
        grads = {"x": xl.grad, "h0": h0.grad, "c0": c0.grad}
        grads.update({n: p.grad for n, p in m.named_parameters()})
        results.append(grads)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("what", ["input_only", "params_only", "hx_only"])
def test_partial_requires_grad(what):
    """Gradients requested for only some inputs (frozen weights, constant input...)."""
    ref, fast = make_pair(4, 6, torch.float64, num_layers=2, bidirectional=True, proj_size=2)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    hx = make_hx("batched", 4, 3, 2, 6, torch.float64)
    grads_out = None
    results = []
    for m in (ref, fast):
        for p in m.parameters():
            p.grad = None
            p.requires_grad_(what == "params_only")
        xl = x.clone().requires_grad_(what == "input_only")
        h0, c0 = (t.clone().requires_grad_(what == "hx_only") for t in hx)
        out, (h_n, c_n) = m(xl, (h0, c0))
        if grads_out is None:
            grads_out = [torch.randn_like(t) for t in (out, h_n, c_n)]
        sum((t * g).sum() for t, g in zip((out, h_n, c_n), grads_out)).backward()
        res = {"x": xl.grad, "h0": h0.grad, "c0": c0.grad, "out": out.detach()}
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


def test_chained_calls_share_module():
    """The module used twice in one graph (second call continues from the first's state)."""
    ref, fast = make_pair(4, 5, torch.float64, num_layers=2, proj_size=3)
    x1 = torch.randn(3, 2, 4, dtype=torch.float64)
    x2 = torch.randn(4, 2, 4, dtype=torch.float64)
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        out1, hc = m(a)
        out2, (h2, c2) = m(b, hc)
        loss = (out1 * 0.5).sum() + (out2 ** 2).sum() + h2.sum() - (c2 * 3).sum()
        loss.backward()
        res = {"out2": out2.detach(), "a": a.grad, "b": b.grad}
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


def test_non_contiguous_input_and_state():
    ref, fast = make_pair(4, 6, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(3, 5, 4, dtype=torch.float64).transpose(0, 1)  # (T=5, B=3, I) view
    h0 = torch.randn(3, 4, 6, dtype=torch.float64).transpose(0, 1)
    c0 = torch.randn(6, 4, 3, dtype=torch.float64).permute(1, 2, 0)
    assert not (x.is_contiguous() or h0.is_contiguous() or c0.is_contiguous())
    exp_out, (exp_h, exp_c) = ref(x, (h0, c0))
    got_out, (got_h, got_c) = fast(x, (h0, c0))
    assert_results_close({"o": got_out, "h": got_h, "c": got_c},
                         {"o": exp_out, "h": exp_h, "c": exp_c}, torch.float64)


def test_gradients_bitwise_reproducible():
    """DESIGN.md: reductions, not atomics; two identical runs give identical bits."""
    fast = rnnfast.LSTM(6, 9, num_layers=2, bidirectional=True, proj_size=4)
    x, lengths = make_input("packed_unsorted", 6, 5, 6, False, torch.float32)
    hx = make_hx("packed_unsorted", 4, 5, 4, 9, torch.float32)
    first, grads = run_lstm(fast, x, hx, "packed_unsorted", False, lengths)
    second, _ = run_lstm(fast, x, hx, "packed_unsorted", False, lengths, grads)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------ module interface parity

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, bias=False, batch_first=True, dropout=0.25, bidirectional=True,
         proj_size=2),
    dict(proj_size=3, batch_first=True),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_parameters_and_state_dict(kwargs):
    ref = nn.LSTM(5, 7, **kwargs)
    fast = rnnfast.LSTM(5, 7, **kwargs)
    assert [(n, p.shape, p.dtype) for n, p in fast.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "mode"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    # torch -> rnnfast
    fast.load_state_dict(ref.state_dict())
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    ref.eval(), fast.eval()
    compare(ref, fast, "batched")
    # rnnfast -> torch
    fast2 = rnnfast.LSTM(5, 7, **kwargs)
    ref2 = nn.LSTM(5, 7, **kwargs)
    ref2.load_state_dict(fast2.state_dict())
    ref2.eval(), fast2.eval()
    compare(ref2, fast2, "packed_unsorted")


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_all_weights(kwargs):
    ref, fast = make_pair(5, 7, **kwargs)
    assert [[p.shape for p in layer] for layer in fast.all_weights] == \
        [[p.shape for p in layer] for layer in ref.all_weights]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_same_initialisation_under_same_seed(kwargs):
    """A training script that seeds and builds its model gets the same initial weights."""
    torch.manual_seed(7)
    ref = nn.LSTM(5, 7, **kwargs)
    torch.manual_seed(7)
    fast = rnnfast.LSTM(5, 7, **kwargs)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_repr(kwargs):
    ref = nn.LSTM(5, 7, **kwargs)
    fast = rnnfast.LSTM(5, 7, **kwargs)
    expected = type(fast).__name__ + repr(ref)[len(type(ref).__name__):]
    assert repr(fast) == expected


def test_not_a_torch_lstm_subclass():
    """DESIGN.md: Dynamo refuses isinstance(m, (nn.RNN, nn.GRU, nn.LSTM))."""
    assert not isinstance(rnnfast.LSTM(3, 4), (nn.RNN, nn.GRU, nn.LSTM))


def test_to_float64():
    ref = nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    fast = rnnfast.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    fast.load_state_dict(ref.state_dict())
    ref = ref.to(torch.float64)
    fast = fast.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    compare(ref, fast, "packed_unsorted")
    # and back, through .float()
    compare(ref.float(), fast.float(), "batched")


def test_factory_kwargs():
    fast = rnnfast.LSTM(5, 7, num_layers=2, proj_size=3, device="cpu", dtype=torch.float64)
    ref = nn.LSTM(5, 7, num_layers=2, proj_size=3, device="cpu", dtype=torch.float64)
    for p in fast.parameters():
        assert p.dtype == torch.float64 and p.device == torch.device("cpu")
    fast.load_state_dict(ref.state_dict())
    compare(ref, fast, "unbatched")


def test_weights_changed_in_place_or_reassigned_are_used():
    ref, fast = make_pair(4, 5, torch.float64, num_layers=2)
    with torch.no_grad():
        for m in (ref, fast):
            m.weight_hh_l1.mul_(1.5)
            m.bias_ih_l0.add_(0.25)
    compare(ref, fast)
    w = torch.randn(20, 4, dtype=torch.float64)
    ref.weight_ih_l0 = nn.Parameter(w.clone())
    fast.weight_ih_l0 = nn.Parameter(w.clone())
    compare(ref, fast)


# --------------------------------------------------------------------------- dropout

def test_dropout_deterministic_under_seed():
    fast = rnnfast.LSTM(5, 7, num_layers=3, dropout=0.5, bidirectional=True).train()
    x, lengths = make_input("packed_unsorted", 6, 4, 5, False, torch.float32)
    torch.manual_seed(42)
    first, grads = run_lstm(fast, x, None, "packed_unsorted", False, lengths)
    torch.manual_seed(42)
    second, _ = run_lstm(fast, x, None, "packed_unsorted", False, lengths, grads)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # dropout is really applied in training mode...
    fast.eval()
    third, _ = run_lstm(fast, x, None, "packed_unsorted", False, lengths, grads)
    assert not torch.allclose(third["output"], first["output"])


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
def test_dropout_train_mode_matches_torch_under_same_seed(form):
    """Stronger than determinism: torch draws its inter-layer masks with at::dropout on
    each layer's time-major (or packed) output in layer order; doing the same gives the
    very same masks, so a seeded training run is reproduced exactly."""
    ref, fast = make_pair(5, 7, torch.float64, num_layers=3, dropout=0.5, bidirectional=True)
    ref.train(), fast.train()
    x, lengths = make_input(form, 5, 3, 5, False, torch.float64)
    torch.manual_seed(11)
    with torch_native_cpu_rnn():
        expected, grads = run_lstm(ref, x, None, form, False, lengths)
    torch.manual_seed(11)
    got, _ = run_lstm(fast, x, None, form, False, lengths, grads)
    assert_results_close(got, expected, torch.float64)


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
def test_dropout_ignored_in_eval_mode(form):
    ref, fast = make_pair(5, 7, torch.float32, num_layers=3, dropout=0.5, bidirectional=True)
    ref.eval(), fast.eval()
    compare(ref, fast, form)


def test_dropout_single_layer_train_mode_is_identity():
    """dropout applies between layers only: one layer in train mode matches torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, fast = make_pair(5, 7, torch.float32, num_layers=1, dropout=0.5)
    ref.train(), fast.train()
    compare(ref, fast)


def test_dropout_warning_matches_torch():
    with pytest.warns(UserWarning) as expected:
        nn.LSTM(5, 7, num_layers=1, dropout=0.5)
    with pytest.warns(UserWarning) as got:
        rnnfast.LSTM(5, 7, num_layers=1, dropout=0.5)
    assert [str(w.message) for w in got] == [str(w.message) for w in expected]


# ------------------------------------------------------------------------------ errors

BAD_CALLS = {
    "input_1d": lambda m: m(torch.randn(5)),
    "input_4d": lambda m: m(torch.randn(2, 3, 4, 5)),
    "input_size_batched": lambda m: m(torch.randn(3, 2, 6)),
    "input_size_unbatched": lambda m: m(torch.randn(3, 6)),
    "input_dtype": lambda m: m(torch.randn(3, 2, 5, dtype=torch.float64)),
    "input_int_dtype": lambda m: m(torch.ones(3, 2, 5, dtype=torch.int32)),
    "hx_shape": lambda m: m(torch.randn(3, 2, 5), (torch.randn(4, 3, 3), torch.randn(4, 2, 7))),
    "hx_size_not_proj": lambda m: m(torch.randn(3, 2, 5),
                                    (torch.randn(4, 2, 7), torch.randn(4, 2, 7))),
    "cx_shape": lambda m: m(torch.randn(3, 2, 5), (torch.randn(4, 2, 3), torch.randn(4, 2, 3))),
    "hx_layers": lambda m: m(torch.randn(3, 2, 5), (torch.randn(2, 2, 3), torch.randn(2, 2, 7))),
    "batched_input_2d_hx": lambda m: m(torch.randn(3, 2, 5),
                                       (torch.randn(4, 3), torch.randn(4, 7))),
    "unbatched_input_3d_hx": lambda m: m(torch.randn(3, 5),
                                         (torch.randn(4, 1, 3), torch.randn(4, 1, 7))),
    "unbatched_hx_shape": lambda m: m(torch.randn(3, 5), (torch.randn(4, 7), torch.randn(4, 7))),
    "zero_steps": lambda m: m(torch.randn(0, 2, 5)),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_forward_errors_match_torch(case):
    ref, fast = make_pair(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    assert_same_error(lambda: BAD_CALLS[case](ref), lambda: BAD_CALLS[case](fast))
    # the module is still usable and correct afterwards
    compare(ref, fast, "packed_unsorted")
    compare(ref, fast, "unbatched")


@pytest.mark.parametrize("which", ["hx", "cx"])
def test_state_dtype_mismatch_error_type(which):
    """torch's messages here come from inside its matmul ('mat1 and mat2 must have the same
    dtype...'), so only the exception type is required to match."""
    ref, fast = make_pair(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    h = torch.randn(4, 2, 3, dtype=torch.float64 if which == "hx" else torch.float32)
    c = torch.randn(4, 2, 7, dtype=torch.float64 if which == "cx" else torch.float32)
    expected = capture_error(lambda: ref(torch.randn(3, 2, 5), (h, c)))
    got = capture_error(lambda: fast(torch.randn(3, 2, 5), (h, c)))
    assert type(got) is type(expected), (type(got), got, type(expected), expected)
    compare(ref, fast)


BAD_CONSTRUCTORS = {
    "dropout_2": dict(dropout=2),
    "dropout_negative": dict(dropout=-0.1),
    "dropout_bool": dict(dropout=True),
    "proj_eq_hidden": dict(proj_size=7),
    "proj_gt_hidden": dict(proj_size=8),
    "proj_negative": dict(proj_size=-1),
    "num_layers_0": dict(num_layers=0),
    "hidden_0": dict(hidden_size=0),
    "hidden_float": dict(hidden_size=7.0),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTORS))
def test_constructor_errors_match_torch(case):
    kwargs = dict(input_size=5, hidden_size=7)
    kwargs.update(BAD_CONSTRUCTORS[case])
    assert_same_error(lambda: nn.LSTM(**kwargs), lambda: rnnfast.LSTM(**kwargs))


# ------------------------------------------------------------- no_grad / inference_mode

@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_without_autograd(mode, form):
    ref, fast = make_pair(5, 7, torch.float64, num_layers=2, bidirectional=True, proj_size=3)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        got, _ = compare(ref, fast, form, backward=False)
    for key in ("output", "h_n", "c_n"):
        assert not got[key].requires_grad, key


# ------------------------------------------------------------------------ torch.compile

@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _strip_compiled_prefix(results):
    return {k.replace("_orig_mod.", ""): v for k, v in results.items()}


def _check_compiled(backend, form, with_hx):
    fast = rnnfast.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3,
                        dtype=torch.float64)
    compiled = torch.compile(fast, fullgraph=True, backend=backend)
    x, lengths = make_input(form, 5, 3, 5, False, torch.float64)
    hx = make_hx(form, 4, 3, 3, 7, torch.float64) if with_hx else None
    expected, grads = run_lstm(fast, x, hx, form, False, lengths)
    got, _ = run_lstm(compiled, x, hx, form, False, lengths, grads)
    assert_results_close(_strip_compiled_prefix(got), expected, torch.float64)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("form", ["batched", "unbatched"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend, form, with_hx, fresh_dynamo):
    _check_compiled(backend, form, with_hx)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("form", ["packed_sorted", "packed_unsorted"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph_packed(backend, form, with_hx, fresh_dynamo):
    """PackedSequence under fullgraph: batch_sizes is data, so its values are unbacked
    symbols in the graph; checks against them must not guard."""
    _check_compiled(backend, form, with_hx)


def test_torch_compile_inductor(fresh_dynamo):
    fast = rnnfast.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64,
                        batch_first=True)
    compiled = torch.compile(fast, fullgraph=True, backend="inductor")
    x, _ = make_input("batched", 5, 3, 5, True, torch.float64)
    hx = make_hx("batched", 4, 3, 7, 7, torch.float64)
    expected, grads = run_lstm(fast, x, hx, "batched", True)
    got, _ = run_lstm(compiled, x, hx, "batched", True, None, grads)
    assert_results_close(_strip_compiled_prefix(got), expected, torch.float64)

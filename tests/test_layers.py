"""Parity of rnnfast.LSTM, GRU and RNN with torch.nn's, for every kind in tests/kinds.py
(LSTM with and without proj_size, GRU, RNN tanh and relu): same constructor, parameters,
state_dict, repr, input forms, outputs, final states, gradients, errors, dropout, and
torch.compile support.

The extension is required: these tests fail (not skip) when rnnfast cannot be imported.
"""

import contextlib
import copy
import io
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
    make_input,
    run_rnn,
    torch_native_cpu_rnn,
)
from kinds import KINDS, kind_params

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]
KIND_PARAMS = kind_params()
LSTM_KINDS = kind_params({n: k for n, k in KINDS.items() if k.has_cell_state})


def compare(ref, fast, kind, form="batched", steps=5, batch=4, with_hx=True, backward=True,
            native=True):
    """Run both modules on the same random input (and initial state) and compare
    everything. ``native``: run torch.nn on ATen's native CPU path (see
    torch_native_cpu_rnn)."""
    dtype = ref.weight_ih_l0.dtype
    x, lengths = make_input(form, steps, batch, ref.input_size, ref.batch_first, dtype)
    hx = None
    if with_hx:
        d = 2 if ref.bidirectional else 1
        hx = kind.layer_state(form, ref.num_layers * d, batch, ref.hidden_size, dtype,
                              proj_size=ref.proj_size)
    with torch_native_cpu_rnn() if native else contextlib.nullcontext():
        expected, grads = run_rnn(ref, x, hx, form, ref.batch_first, lengths,
                                  backward=backward)
    got, _ = run_rnn(fast, x, hx, form, ref.batch_first, lengths, grads, backward=backward)
    assert_results_close(got, expected, dtype)
    return got, expected


def _states(final):
    return final if isinstance(final, tuple) else (final,)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_exports(kind):
    assert issubclass(kind.fast_layer, nn.Module)
    assert kind.fast_layer.__name__ in rnnfast.__all__
    assert getattr(rnnfast, kind.fast_layer.__name__) is kind.fast_layer


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_kind_table_matches_the_modules(kind):
    """The entry in tests/kinds.py describes the modules it names: operator family and
    nonlinearity from torch.nn's mode, gate count from the weight shapes, state width."""
    ref, fast = kind.layer_modules(5, 7)
    assert ref.mode == fast.mode == {"lstm": "LSTM", "gru": "GRU"}.get(
        kind.op, f"RNN_{str(kind.nonlinearity).upper()}")
    assert ref.weight_ih_l0.shape == (kind.gates * 7, 5)
    assert ref.proj_size == fast.proj_size == kind.proj_size
    with torch_native_cpu_rnn():
        _, final = ref(torch.randn(3, 2, 5))
    assert [s.shape[-1] for s in _states(final)] == \
        [kind.state_size(7), 7][:len(kind.state_names)]


# --------------------------------------------------------------------------- parity grid

@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_parity(kind, num_layers, bidirectional, bias, batch_first, form, with_hx, dtype):
    """Three layers include a middle one (input D*H from below, output D*H to above)."""
    ref, fast = kind.layer_pair(6, 7, dtype, num_layers=num_layers,
                                bidirectional=bidirectional, bias=bias,
                                batch_first=batch_first)
    compare(ref, fast, kind, form, with_hx=with_hx)


@pytest.mark.parametrize("form", ["batched", "unbatched"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_parity_with_torch_default_path(kind, bidirectional, form):
    """The grid runs torch.nn with oneDNN disabled; float32 normally goes through oneDNN
    (LSTM with projection excepted): check against torch's default CPU path too, at the
    same tolerance."""
    ref, fast = kind.layer_pair(6, 7, torch.float32, num_layers=2,
                                bidirectional=bidirectional)
    with warnings.catch_warnings():
        # "LSTM with projections is not supported with oneDNN. Using default implementation."
        warnings.filterwarnings("ignore", "LSTM with projections")
        compare(ref, fast, kind, form, native=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_input_size_equal_to_gate_width(kind, bidirectional, form, dtype):
    """input_size == gates × hidden_size: the CPU backward then holds the gate gradients in
    the input gradient's own buffer and forms dX over them (csrc/cpu/layer.cpp)."""
    hidden = 7
    ref, fast = kind.layer_pair(kind.gates * hidden, hidden, dtype, num_layers=2,
                                bidirectional=bidirectional)
    compare(ref, fast, kind, form, steps=6, batch=5)


def test_input_gradient_over_gate_gradients_in_blocks():
    """The same with dX formed over dG in several row blocks of about 2 MiB (float64,
    I = 2048: blocks of 128 rows, so N = 650 gives six, the last a partial one of 10), packed
    input with shrinking batches included."""
    ref, fast = KINDS["rnn_tanh"].layer_pair(2048, 2048, torch.float64)
    for form in ("batched", "packed_unsorted"):
        compare(ref, fast, KINDS["rnn_tanh"], form, steps=5, batch=130)


ODD_SIZES = [pytest.param(kind, hidden, id=f"{kind.name}-H{hidden}")
             for kind in KINDS.values() for hidden in (1, 7, 33)
             if kind.supports_hidden_size(hidden)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("form", ["batched", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("steps,batch", [(1, 3), (5, 1), (1, 1), (6, 5)],
                         ids=["T1", "B1", "T1B1", "T6B5"])
@pytest.mark.parametrize("kind,hidden_size", ODD_SIZES)
def test_odd_sizes(kind, hidden_size, steps, batch, form, dtype):
    ref, fast = kind.layer_pair(5, hidden_size, dtype, num_layers=2, bidirectional=True)
    compare(ref, fast, kind, form, steps=steps, batch=batch)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("hidden_size,proj_size", [(33, 3), (33, 32), (7, 1)])
def test_odd_sizes_projection(hidden_size, proj_size, dtype):
    """LSTM only: projections much narrower than, and one narrower than, hidden_size."""
    kind = KINDS["lstm_proj"]
    ref, fast = kind.layer_pair(5, hidden_size, dtype, num_layers=2, bidirectional=True,
                                proj_size=proj_size)
    compare(ref, fast, kind, "packed_unsorted", steps=4, batch=3)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_empty_batch(kind, batch_first, with_hx):
    """B=0 (torch supports it for padded input: empty outputs, zero-size gradients)."""
    ref, fast = kind.layer_pair(5, 7, torch.float64, num_layers=2, bidirectional=True,
                                batch_first=batch_first)
    got, _ = compare(ref, fast, kind, "batched", steps=4, batch=0, with_hx=with_hx)
    width = kind.state_size(7)
    assert got["output"].shape == ((0, 4, 2 * width) if batch_first else (4, 0, 2 * width))
    assert got["h_n"].shape == (4, 0, width)
    if kind.has_cell_state:
        assert got["c_n"].shape == (4, 0, 7)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_large_activations(kind):
    """Larger weights: relu activations grow without bound, tanh/sigmoid saturate. Both
    regimes must still agree (relative tolerance)."""
    ref, fast = kind.layer_pair(5, 9, torch.float64, num_layers=2, bidirectional=True)
    with torch.no_grad():
        for m in (ref, fast):
            for p in m.parameters():
                p.mul_(3.0)
    compare(ref, fast, kind, "packed_unsorted", steps=7, batch=4)


# ------------------------------------------------------------------- gradient variants

ONE_OUTPUT = [pytest.param(kind, used, id=f"{kind.name}-{used}")
              for kind in KINDS.values() for used in ("output",) + kind.state_names]


@pytest.mark.parametrize("form", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("kind,used", ONE_OUTPUT)
def test_gradient_from_one_output_only(kind, used, form):
    """Only one of output/h_n(/c_n) reaches the loss: the others' upstream grads are None."""
    ref, fast = kind.layer_pair(4, 6, torch.float64, num_layers=2, bidirectional=True)
    x, lengths = make_input(form, 5, 3, 4, False, torch.float64)
    hx = _states(kind.layer_state(form, 4, 3, 6, torch.float64))
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        xl = x.clone().requires_grad_(True)
        states = tuple(s.clone().requires_grad_(True) for s in hx)
        out, final = m(build_input(xl, form, False, lengths),
                       states if kind.has_cell_state else states[0])
        outputs = dict(zip(("output",) + kind.state_names,
                           (out.data if form != "batched" else out,) + _states(final)))
        t = outputs[used]
        (t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)).sum().backward()
        grads = {"x": xl.grad}
        grads.update({name: s.grad for name, s in zip(("h0", "c0"), states)})
        grads.update({n: p.grad for n, p in m.named_parameters()})
        results.append(grads)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("what", ["input_only", "params_only", "hx_only"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_partial_requires_grad(kind, what):
    """Gradients requested for only some inputs (frozen weights, constant input...)."""
    ref, fast = kind.layer_pair(4, 6, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    hx = _states(kind.layer_state("batched", 4, 3, 6, torch.float64))
    grads_out = None
    results = []
    for m in (ref, fast):
        for p in m.parameters():
            p.grad = None
            p.requires_grad_(what == "params_only")
        xl = x.clone().requires_grad_(what == "input_only")
        states = tuple(s.clone().requires_grad_(what == "hx_only") for s in hx)
        out, final = m(xl, states if kind.has_cell_state else states[0])
        outs = (out,) + _states(final)
        if grads_out is None:
            grads_out = [torch.randn_like(t) for t in outs]
        sum((t * g).sum() for t, g in zip(outs, grads_out)).backward()
        res = {"x": xl.grad, "out": out.detach()}
        res.update({name: s.grad for name, s in zip(("h0", "c0"), states)})
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_chained_calls_share_module(kind):
    """The module used twice in one graph (second call continues from the first's state)."""
    ref, fast = kind.layer_pair(4, 5, torch.float64, num_layers=2)
    x1 = torch.randn(3, 2, 4, dtype=torch.float64)
    x2 = torch.randn(4, 2, 4, dtype=torch.float64)
    results = []
    for m in (ref, fast):
        m.zero_grad(set_to_none=True)
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        out1, state1 = m(a)
        out2, state2 = m(b, state1)
        # weights 1 on h_n and -3 on c_n (LSTM), -3 on h_n otherwise
        finals = _states(state2)
        weights = (1.0, -3.0)[-len(finals):]
        loss = (out1 * 0.5).sum() + (out2 ** 2).sum() + \
            sum((s * w).sum() for s, w in zip(finals, weights))
        loss.backward()
        res = {"out2": out2.detach(), "a": a.grad, "b": b.grad}
        res.update({n: p.grad for n, p in m.named_parameters()})
        results.append(res)
    assert_results_close(results[1], results[0], torch.float64)


@pytest.mark.parametrize("layout", ["transposed", "permuted"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_non_contiguous_input_and_state(kind, layout):
    """Input and every state a non-contiguous view (transpose, or a full permutation)."""
    ref, fast = kind.layer_pair(4, 6, torch.float64, num_layers=2, bidirectional=True)
    x = torch.randn(3, 5, 4, dtype=torch.float64).transpose(0, 1)  # (T=5, B=3, I) view

    def view(width):
        if layout == "transposed":
            return torch.randn(3, 4, width, dtype=torch.float64).transpose(0, 1)
        return torch.randn(width, 4, 3, dtype=torch.float64).permute(1, 2, 0)

    states = (view(kind.state_size(6)),) + ((view(6),) if kind.has_cell_state else ())
    assert not any(t.is_contiguous() for t in (x,) + states)
    hx = states if kind.has_cell_state else states[0]
    exp_out, exp_final = ref(x, hx)
    got_out, got_final = fast(x, hx)
    assert_results_close(dict(enumerate((got_out,) + _states(got_final))),
                         dict(enumerate((exp_out,) + _states(exp_final))), torch.float64)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_gradients_bitwise_reproducible(kind):
    """docs/design.md: reductions, not atomics; two identical runs give identical bits."""
    _, fast = kind.layer_modules(6, 9, num_layers=2, bidirectional=True)
    x, lengths = make_input("packed_unsorted", 6, 5, 6, False, torch.float32)
    hx = kind.layer_state("packed_unsorted", 4, 5, 9, torch.float32)
    first, grads = run_rnn(fast, x, hx, "packed_unsorted", False, lengths)
    second, _ = run_rnn(fast, x, hx, "packed_unsorted", False, lengths, grads)
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------ module interface parity

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, bias=False, batch_first=True, dropout=0.25, bidirectional=True),
    dict(batch_first=True),
    dict(batch_first=True, bias=False),
]
CONFIG_IDS = ["default", "L2-bi", "L3-nobias-bfirst-dropout-bi", "bfirst", "bfirst-nobias"]
LAYER_ATTRS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
               "bidirectional", "proj_size", "mode")


@pytest.mark.parametrize("kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_parameters_and_state_dict(kind, kwargs):
    ref, fast = kind.layer_modules(5, 7, **kwargs)
    assert [(n, p.shape, p.dtype) for n, p in fast.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    assert [(k, v.shape) for k, v in fast.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    for attr in LAYER_ATTRS + (("nonlinearity",) if kind.nonlinearity else ()):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    # torch -> rnnfast
    fast.load_state_dict(ref.state_dict())
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    ref.eval(), fast.eval()
    compare(ref, fast, kind, "batched")
    # rnnfast -> torch
    ref2, fast2 = kind.layer_modules(5, 7, **kwargs)
    ref2.load_state_dict(fast2.state_dict())
    ref2.eval(), fast2.eval()
    compare(ref2, fast2, kind, "packed_unsorted")


@pytest.mark.parametrize("kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_all_weights(kind, kwargs):
    ref, fast = kind.layer_pair(5, 7, **kwargs)
    assert [[p.shape for p in layer] for layer in fast.all_weights] == \
        [[p.shape for p in layer] for layer in ref.all_weights]


@pytest.mark.parametrize("kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_same_initialisation_under_same_seed(kind, kwargs):
    """A training script that seeds and builds its model gets the same initial weights."""
    kwargs = {**kind.kwargs, **kwargs}
    torch.manual_seed(7)
    ref = kind.torch_layer(5, 7, **kwargs)
    torch.manual_seed(7)
    fast = kind.fast_layer(5, 7, **kwargs)
    for (n, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_repr(kind, kwargs):
    ref, fast = kind.layer_modules(5, 7, **kwargs)
    expected = type(fast).__name__ + repr(ref)[len(type(ref).__name__):]
    assert repr(fast) == expected


def test_rnn_positional_nonlinearity():
    """torch.nn.RNN(input_size, hidden_size, num_layers, nonlinearity, bias, ...)."""
    ref = nn.RNN(5, 7, 2, "relu", False)
    fast = rnnfast.RNN(5, 7, 2, "relu", False)
    assert (fast.nonlinearity, fast.mode, fast.num_layers, fast.bias) == \
        (ref.nonlinearity, ref.mode, ref.num_layers, ref.bias) == ("relu", "RNN_RELU", 2, False)
    fast.load_state_dict(ref.state_dict())
    compare(ref, fast, KINDS["rnn_relu"])
    assert rnnfast.RNN(5, 7).nonlinearity == "tanh"
    assert rnnfast.RNN(5, 7).mode == "RNN_TANH"


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_not_a_torch_rnn_subclass(kind):
    """docs/design.md: Dynamo refuses isinstance(m, (nn.RNN, nn.GRU, nn.LSTM))."""
    _, fast = kind.layer_modules(3, 4)
    assert not isinstance(fast, (nn.RNN, nn.GRU, nn.LSTM)), type(fast)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_to_float64(kind):
    ref, fast = kind.layer_pair(5, 7, num_layers=2, bidirectional=True)
    ref = ref.to(torch.float64)
    fast = fast.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    compare(ref, fast, kind, "packed_unsorted")
    # and back, through .float()
    compare(ref.float(), fast.float(), kind, "batched")


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_factory_kwargs(kind):
    ref, fast = kind.layer_modules(5, 7, num_layers=2, device="cpu", dtype=torch.float64)
    for p in fast.parameters():
        assert p.dtype == torch.float64 and p.device == torch.device("cpu")
    fast.load_state_dict(ref.state_dict())
    compare(ref, fast, kind, "unbatched")


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_weights_changed_in_place_or_reassigned_are_used(kind):
    ref, fast = kind.layer_pair(4, 5, torch.float64, num_layers=2)
    with torch.no_grad():
        for m in (ref, fast):
            m.weight_hh_l1.mul_(1.5)
            m.bias_ih_l0.add_(0.25)
    compare(ref, fast, kind)
    w = torch.randn(*ref.weight_ih_l0.shape, dtype=torch.float64)
    ref.weight_ih_l0 = nn.Parameter(w.clone())
    fast.weight_ih_l0 = nn.Parameter(w.clone())
    compare(ref, fast, kind)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_flatten_parameters_is_harmless(kind):
    """Scripts written for torch.nn call flatten_parameters(); it must work and change
    nothing."""
    ref, fast = kind.layer_pair(4, 5, torch.float64, num_layers=2, bidirectional=True)
    fast.flatten_parameters()
    compare(ref, fast, kind)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_deepcopy_and_torch_save_whole_module(kind):
    """copy.deepcopy and torch.save/torch.load of the module object (not just its
    state_dict), as training scripts and checkpointing do."""
    ref, fast = kind.layer_pair(5, 7, torch.float64, num_layers=2, bidirectional=True)
    buffer = io.BytesIO()
    torch.save(fast, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for clone in (copy.deepcopy(fast), loaded):
        assert type(clone) is type(fast)
        compare(ref, clone, kind, "packed_unsorted")


@pytest.mark.parametrize("dtype", [torch.float16], ids=["f16"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_other_dtypes_fall_back_to_torch(kind, dtype):
    """README: dtypes without a CPU kernel (float16) run torch's own implementation, so the
    results are torch's (bitwise: same code path). bfloat16: tests/test_bfloat16_cpu.py."""
    ref, fast = kind.layer_pair(5, 7, dtype, num_layers=2, bidirectional=True)
    x = torch.randn(4, 3, 5, dtype=dtype)
    exp_out, exp_final = ref(x)
    got_out, got_final = fast(x)
    for name, got, exp in zip(("output",) + kind.state_names, (got_out,) + _states(got_final),
                              (exp_out,) + _states(exp_final)):
        assert got.dtype == dtype, name
        assert torch.equal(got, exp), name


# --------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_dropout_deterministic_under_seed(kind):
    _, fast = kind.layer_modules(5, 7, num_layers=3, dropout=0.5, bidirectional=True)
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
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_dropout_train_mode_matches_torch_under_same_seed(kind, form):
    """Stronger than determinism: torch draws its inter-layer masks with at::dropout on
    each layer's time-major (or packed) output in layer order (tests/test_reference.py
    checks this for GRU and RNN); doing the same gives the very same masks, so a seeded
    training run is reproduced exactly."""
    ref, fast = kind.layer_pair(5, 7, torch.float64, num_layers=3, dropout=0.5,
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
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_dropout_ignored_in_eval_mode(kind, form):
    ref, fast = kind.layer_pair(5, 7, torch.float32, num_layers=3, dropout=0.5,
                                bidirectional=True)
    ref.eval(), fast.eval()
    compare(ref, fast, kind, form)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_dropout_single_layer_train_mode_is_identity(kind):
    """dropout applies between layers only: one layer in train mode matches torch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, fast = kind.layer_pair(5, 7, torch.float32, num_layers=1, dropout=0.5)
    ref.train(), fast.train()
    compare(ref, fast, kind)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_dropout_warning_matches_torch(kind):
    kwargs = dict(num_layers=1, dropout=0.5, **kind.kwargs)
    with pytest.warns(UserWarning) as expected:
        kind.torch_layer(5, 7, **kwargs)
    with pytest.warns(UserWarning) as got:
        kind.fast_layer(5, 7, **kwargs)
    assert [str(w.message) for w in got] == [str(w.message) for w in expected]


# ------------------------------------------------------------------------------ errors

def _packed(lengths=(3, 2, 1)):
    return pack_padded_sequence(torch.randn(3, len(lengths), 5), list(lengths))


def _state(kind, h_shape, c_shape=None):
    """A state for ``kind``: ``h`` of ``h_shape``, plus ``c`` for LSTM (``c_shape``, by
    default ``h_shape`` with hidden_size 7 last)."""
    h = torch.randn(*h_shape)
    if not kind.has_cell_state:
        return h
    return h, torch.randn(*(c_shape or h_shape[:-1] + (7,)))


# Module under test: input_size 5, hidden_size 7, 2 layers, bidirectional (4 states);
# S is the width of h (proj_size, or 7).  name -> (call(module, kind, S), kinds or None
# for every kind)
BAD_CALLS = {
    "input_1d": (lambda m, k, S: m(torch.randn(5)), None),
    "input_4d": (lambda m, k, S: m(torch.randn(2, 3, 4, 5)), None),
    "input_size_batched": (lambda m, k, S: m(torch.randn(3, 2, 6)), None),
    "input_size_unbatched": (lambda m, k, S: m(torch.randn(3, 6)), None),
    "input_size_packed": (lambda m, k, S: m(pack_padded_sequence(torch.randn(3, 2, 6),
                                                                 [3, 1])), None),
    "input_dtype": (lambda m, k, S: m(torch.randn(3, 2, 5, dtype=torch.float64)), None),
    "input_int_dtype": (lambda m, k, S: m(torch.ones(3, 2, 5, dtype=torch.int32)), None),
    # only h has the wrong batch size (c, for LSTM, is right)
    "hx_batch": (lambda m, k, S: m(torch.randn(3, 2, 5),
                                   _state(k, (4, 3, S), (4, 2, 7))), None),
    "hx_hidden": (lambda m, k, S: m(torch.randn(3, 2, 5), _state(k, (4, 2, 6))), None),
    "hx_layers": (lambda m, k, S: m(torch.randn(3, 2, 5), _state(k, (2, 2, S))), None),
    "batched_input_2d_hx": (lambda m, k, S: m(torch.randn(3, 2, 5), _state(k, (4, S))), None),
    "batched_input_4d_hx": (lambda m, k, S: m(torch.randn(3, 2, 5),
                                              _state(k, (4, 2, S, 1), (4, 2, 7, 1))), None),
    "unbatched_input_3d_hx": (lambda m, k, S: m(torch.randn(3, 5), _state(k, (4, 1, S))),
                              None),
    "unbatched_hx_shape": (lambda m, k, S: m(torch.randn(3, 5), _state(k, (4, 6))), None),
    "packed_hx_batch": (lambda m, k, S: m(_packed(), _state(k, (4, 5, S))), None),
    "packed_hx_2d": (lambda m, k, S: m(_packed(), _state(k, (4, S))), None),
    "zero_steps": (lambda m, k, S: m(torch.randn(0, 2, 5)), None),
    "zero_steps_unbatched": (lambda m, k, S: m(torch.randn(0, 5)), None),
    # LSTM: c of the wrong width, or h of hidden_size instead of proj_size
    "cx_hidden": (lambda m, k, S: m(torch.randn(3, 2, 5), _state(k, (4, 2, S), (4, 2, 3))),
                  ("lstm", "lstm_proj")),
    "hx_size_not_proj": (lambda m, k, S: m(torch.randn(3, 2, 5), _state(k, (4, 2, 7))),
                         ("lstm_proj",)),
    "unbatched_hx_size_not_proj": (lambda m, k, S: m(torch.randn(3, 5), _state(k, (4, 7))),
                                   ("lstm_proj",)),
}
#: torch.nn.LSTM does not check a packed input or its state in Python (GRU and RNN do):
#: its errors come from inside its kernels ('mat1 and mat2 shapes cannot be multiplied',
#: 'The size of tensor a (5) must match...'), so for LSTM only the exception type is
#: required to match (tests/test_bad_input.py has the same rule).
LSTM_PACKED_TYPE_ONLY = ("input_size_packed", "packed_hx_batch")
BAD_CALL_PARAMS = [pytest.param(kind, case, id=f"{kind.name}-{case}")
                   for kind in KINDS.values() for case, (_, kinds) in BAD_CALLS.items()
                   if kinds is None or kind.name in kinds]


@pytest.mark.parametrize("kind,case", BAD_CALL_PARAMS)
def test_forward_errors_match_torch(kind, case):
    ref, fast = kind.layer_pair(5, 7, num_layers=2, bidirectional=True)
    call = BAD_CALLS[case][0]
    S = kind.state_size(7)
    if kind.has_cell_state and case in LSTM_PACKED_TYPE_ONLY:
        expected = capture_error(lambda: call(ref, kind, S))
        got = capture_error(lambda: call(fast, kind, S))
        assert type(got) is type(expected), (type(got), got, type(expected), expected)
    else:
        assert_same_error(lambda: call(ref, kind, S), lambda: call(fast, kind, S))
    # the module is still usable and correct afterwards
    compare(ref, fast, kind, "packed_unsorted")
    compare(ref, fast, kind, "unbatched")


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_zero_steps_batch_first_error(kind):
    ref, fast = kind.layer_pair(5, 7, batch_first=True)
    assert_same_error(lambda: ref(torch.randn(2, 0, 5)), lambda: fast(torch.randn(2, 0, 5)))


STATE_DTYPE = [pytest.param(kind, which, id=f"{kind.name}-{which}")
               for kind in KINDS.values() for which in ("hx", "cx")[:len(kind.state_names)]]


@pytest.mark.parametrize("kind,which", STATE_DTYPE)
def test_state_dtype_mismatch_error_type(kind, which):
    """torch's messages here come from inside its matmul ('mat1 and mat2 must have the same
    dtype...'), so only the exception type is required to match."""
    ref, fast = kind.layer_pair(5, 7, num_layers=2, bidirectional=True)
    h = torch.randn(4, 2, kind.state_size(7),
                    dtype=torch.float64 if which == "hx" else torch.float32)
    hx = h
    if kind.has_cell_state:
        hx = (h, torch.randn(4, 2, 7, dtype=torch.float64 if which == "cx" else torch.float32))
    expected = capture_error(lambda: ref(torch.randn(3, 2, 5), hx))
    got = capture_error(lambda: fast(torch.randn(3, 2, 5), hx))
    assert type(got) is type(expected), (type(got), got, type(expected), expected)
    compare(ref, fast, kind)


# name -> (constructor kwargs, "lstm" / "not_lstm" / None for every kind)
BAD_CONSTRUCTORS = {
    "dropout_2": (dict(dropout=2), None),
    "dropout_negative": (dict(dropout=-0.1), None),
    "dropout_bool": (dict(dropout=True), None),
    "num_layers_0": (dict(num_layers=0), None),
    "hidden_0": (dict(hidden_size=0), None),
    "hidden_float": (dict(hidden_size=7.0), None),
    "input_0": (dict(input_size=0), None),
    "proj_eq_hidden": (dict(proj_size=7), "lstm"),
    "proj_gt_hidden": (dict(proj_size=8), "lstm"),
    "proj_negative": (dict(proj_size=-1), "lstm"),
    "proj_size": (dict(proj_size=3), "not_lstm"),
    "proj_size_0": (dict(proj_size=0), "not_lstm"),
}
BAD_CONSTRUCTOR_PARAMS = [
    pytest.param(kind, case, id=f"{kind.name}-{case}")
    for kind in KINDS.values() for case, (_, only) in BAD_CONSTRUCTORS.items()
    if only is None or (only == "lstm") == kind.has_cell_state
]


@pytest.mark.parametrize("kind,case", BAD_CONSTRUCTOR_PARAMS)
def test_constructor_errors_match_torch(kind, case):
    kwargs = dict(input_size=5, hidden_size=7, **kind.kwargs)
    kwargs.update(BAD_CONSTRUCTORS[case][0])
    assert_same_error(lambda: kind.torch_layer(**kwargs), lambda: kind.fast_layer(**kwargs))


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
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_without_autograd(kind, mode, form):
    ref, fast = kind.layer_pair(5, 7, torch.float64, num_layers=2, bidirectional=True)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        got, _ = compare(ref, fast, kind, form, backward=False)
    for key in ("output",) + kind.state_names:
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
    _, fast = kind.layer_modules(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64,
                                 batch_first=batch_first)
    compiled = torch.compile(fast, fullgraph=True, backend=backend)
    x, lengths = make_input(form, 5, 3, 5, batch_first, torch.float64)
    hx = kind.layer_state(form, 4, 3, 7, torch.float64) if with_hx else None
    expected, grads = run_rnn(fast, x, hx, form, batch_first, lengths)
    got, _ = run_rnn(compiled, x, hx, form, batch_first, lengths, grads)
    assert_results_close(_strip_compiled_prefix(got), expected, torch.float64)


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_torch_compile_fullgraph(kind, backend, form, with_hx, fresh_dynamo):
    """fullgraph=True: no graph break anywhere (PackedSequence included: batch_sizes is
    data, so its values are unbacked symbols in the graph; checks against them must not
    guard). aot_eager also traces backward."""
    _check_compiled(kind, backend, form, with_hx)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_torch_compile_dynamic_shapes(kind, fresh_dynamo):
    """One compiled module, called with several sequence lengths and batch sizes (as the
    last, shorter batch of an epoch does) under dynamic=True."""
    _, fast = kind.layer_modules(5, 7, num_layers=2, dtype=torch.float64)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager", dynamic=True)
    for steps, batch in ((5, 3), (3, 4), (7, 1)):
        x, _ = make_input("batched", steps, batch, 5, False, torch.float64)
        hx = kind.layer_state("batched", 2, batch, 7, torch.float64)
        expected, grads = run_rnn(fast, x, hx)
        got, _ = run_rnn(compiled, x, hx, grads=grads)
        assert_results_close(_strip_compiled_prefix(got), expected, torch.float64)


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_torch_compile_inductor(kind, fresh_dynamo):
    _check_compiled(kind, "inductor", "batched", True, batch_first=True)

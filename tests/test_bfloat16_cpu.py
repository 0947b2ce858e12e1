"""bfloat16 on the CPU: rnnfast's kernels (float32 arithmetic, float32 cell state, the LSTM's
saved buffers float32 and the GRU's bfloat16, on up-converted copies of the bfloat16 inputs and weights) against a float64
reference computed from the very same bfloat16 values, and against torch.nn's own bfloat16
error on that reference: every layer kind, stacked and bidirectional, padded and packed,
outputs, final states and every gradient; the cells; the operators under opcheck.

The bound: with every argument exactly representable, the only roundings are float32
arithmetic (~1e-6 here) and the final rounding of each result to bfloat16 (unit roundoff
u = 2^-8, half an ulp) -- except that backward reads the layer's output h_t, rounded to
bfloat16, as h_{t-1} of the next step (what the weight gradients and the GRU's pointwise
backward multiply), and the GRU's saved gate values r, z, n and W_hn h + b_hn, rounded to
bfloat16 for backward, each of which adds about u times the size of the terms. So each tensor is
checked elementwise against |err| <= 2u |ref| + 2u max|ref| (per tensor), and its largest
error against torch.nn-bf16's largest error on the same reference. (ReLU: a pre-activation
within rounding of 0 may take the other branch in any finite precision, which moves a
gradient by a whole weight, beyond any rounding bound; so the ReLU models get biases raised
by 2, which keeps every pre-activation well above the kink.)"""
from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfast
from kinds import CELL_KINDS, KINDS, half_fraction_params, kind_params, make_sample

OPCHECK_PARAMS = half_fraction_params()

U = 2.0 ** -8  # bfloat16 unit roundoff


def _run(mod, x, lengths, packed, dtype):
    xx = x.to(dtype).detach().requires_grad_(True)
    inp = pack_padded_sequence(xx, lengths) if packed else xx
    out, state = mod(inp)
    out = out.data if packed else out
    states = state if isinstance(state, tuple) else (state,)
    gen = torch.Generator().manual_seed(7)
    grads_out = [torch.randn(t.shape, generator=gen).to(dtype) for t in (out, *states)]
    grads = torch.autograd.grad((out, *states), [xx, *mod.parameters()], grads_out)
    return [out, *states, *grads]


def _away_from_relu_kink(kind, module):
    if kind.nonlinearity == "relu":
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name.startswith("bias"):
                    p.add_(2.0)


def _check_against(ref64, fast, torch_bf16, names):
    for name, r, f, t in zip(names, ref64, fast, torch_bf16):
        assert f.dtype == torch.bfloat16, name
        err = (f.double() - r).abs()
        scale = r.abs().max().item()
        bound = 2 * U * r.abs() + 2 * U * scale
        worst = (err - bound).max().item()
        assert worst <= 0, f"{name}: error above the bfloat16 rounding bound by {worst:g}"
        torch_err = (t.double() - r).abs().max().item()
        assert err.max().item() <= max(torch_err, 2 * U * scale), (
            f"{name}: rnnfast bf16 max error {err.max().item():g} > torch.nn bf16's {torch_err:g}")


def _layer_against_float64(kind, kwargs, input_size, hidden_size, lengths, packed):
    """rnnfast's bfloat16 layer and torch.nn's against float64 on the same bfloat16 values
    (input [max(lengths), len(lengths), input_size])."""
    # The bfloat16 values every implementation starts from.
    ref = kind.torch_layer(input_size, hidden_size, **kwargs).to(torch.bfloat16)
    _away_from_relu_kink(kind, ref)
    fast = kind.fast_layer(input_size, hidden_size, **kwargs, dtype=torch.bfloat16)
    fast.load_state_dict(ref.state_dict())
    ref64 = kind.torch_layer(input_size, hidden_size, **kwargs, dtype=torch.float64)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(int(lengths.max()), len(lengths), input_size).to(torch.bfloat16).double()
    expected = _run(ref64, x, lengths, packed, torch.float64)
    got = _run(fast, x, lengths, packed, torch.bfloat16)
    theirs = _run(ref, x, lengths, packed, torch.bfloat16)
    names = ["output", *kind.state_names, "grad input", *[n for n, _ in fast.named_parameters()]]
    _check_against(expected, got, theirs, names)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", kind_params())
def test_layers_bfloat16_against_float64(kind, packed, bf16_kernel):
    torch.manual_seed(0)
    kwargs = dict(kind.kwargs, num_layers=2, bidirectional=True)
    if kind.proj_size:
        kwargs["proj_size"] = 11
    _layer_against_float64(kind, kwargs, 24, 40, torch.tensor([9, 8, 8, 4, 1]), packed)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", kind_params())
def test_input_size_equal_to_gate_width_bfloat16(kind, packed, bf16_kernel):
    """input_size == gates × hidden_size, where the backward may hold the gate gradients in
    the input gradient's own buffer and form dX over them (csrc/cpu/backend.cpp)."""
    torch.manual_seed(2)
    kwargs = dict(kind.kwargs, bidirectional=True)  # (a second layer's input is 2H wide)
    if kind.proj_size:
        kwargs["proj_size"] = 11
    _layer_against_float64(kind, kwargs, kind.gates * 40, 40, torch.tensor([9, 8, 8, 4, 1]), packed)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_input_gradient_over_gate_gradients_in_blocks_bfloat16(packed, bf16_kernel):
    """The same with dX formed over dG in several row blocks (2^20 / I rows: I = 1024 gives
    blocks of 1024 rows, N = 2700 padded three, the last a partial one)."""
    torch.manual_seed(3)
    lengths = torch.tensor([3] * 899 + [2]) if packed else torch.full((900,), 3)
    _layer_against_float64(KINDS["rnn_tanh"], dict(KINDS["rnn_tanh"].kwargs), 1024, 1024, lengths, packed)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", kind_params({n: KINDS[n] for n in ("lstm", "gru")}))
def test_input_gradient_in_blocks_after_the_weight_gradients_bfloat16(kind, packed, bf16_kernel):
    """Input gradients several times narrower than the gate gradients over N = 3000 rows: on
    the widened path dX is formed in three row blocks of the 256 KiB workspace, the last
    product, and each block's gate-gradient pages are given back once read (the later blocks
    must still see their own)."""
    torch.manual_seed(4)
    lengths = torch.tensor([30] * 99 + [27]) if packed else torch.full((100,), 30)
    _layer_against_float64(kind, dict(kind.kwargs), 64, 64, lengths, packed)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", kind_params({n: KINDS[n] for n in ("lstm", "gru")}))
def test_wide_input_gradient_in_row_blocks_bfloat16(kind, packed, bf16_kernel):
    """A wide input (I = 1024) over N = 750 rows: the bfloat16 dX, into its own storage, is
    made in blocks of the rows whose float32 result takes 2 MiB (512 rows here: one whole
    block and a partial one), each block's rows from its own rows of the gate gradients."""
    torch.manual_seed(8)
    lengths = torch.tensor([3] * 249 + [2]) if packed else torch.full((250,), 3)
    _layer_against_float64(kind, dict(kind.kwargs), 1024, 24, lengths, packed)


@pytest.mark.parametrize("kind", kind_params({n: KINDS[n] for n in ("lstm", "gru")}))
def test_weight_gradients_in_row_chunks_bfloat16(kind, bf16_kernel):
    """A recurrent weight gradient larger than the widened path's workspace (H = 512 over
    N = 1000 rows): it is made a chunk of its rows at a time (the GRU's n part with each
    gate gradient times r as it is widened), each chunk summed over blocks of rows."""
    torch.manual_seed(6)
    _layer_against_float64(kind, dict(kind.kwargs), 64, 512, torch.full((100,), 10), False)


@pytest.mark.parametrize("kind", kind_params(CELL_KINDS))
def test_cells_bfloat16_against_float64(kind, bf16_kernel):
    torch.manual_seed(1)
    ref = kind.torch_cell(12, 20, **kind.cell_kwargs).to(torch.bfloat16)
    _away_from_relu_kink(kind, ref)
    fast = kind.fast_cell(12, 20, **kind.cell_kwargs, dtype=torch.bfloat16)
    fast.load_state_dict(ref.state_dict())
    ref64 = kind.torch_cell(12, 20, **kind.cell_kwargs, dtype=torch.float64)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(6, 12).to(torch.bfloat16).double()

    def run(mod, dtype):
        xx = x.to(dtype).requires_grad_(True)
        out = mod(xx)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape).to(dtype)).sum() for o in outs)
        return [*outs, *torch.autograd.grad(loss, [xx, *mod.parameters()])]

    outs = 2 if kind.has_cell_state else 1
    names = ["h", "c"][:outs] + ["grad input"] + [n for n, _ in fast.named_parameters()]
    _check_against(run(ref64, torch.float64), run(fast, torch.bfloat16), run(ref, torch.bfloat16), names)


def test_portable_rounding_is_torchs_bitwise():
    """The bfloat16 data path's rounding in integer arithmetic (what the avx2 kernel set runs)
    gives torch's own conversion bit for bit: random bit patterns (every exponent, subnormals,
    infinities and NaNs among them), exact ties with an even and an odd last kept bit, signed
    zeros, and the largest float rounding to infinity. NaN stays a (quiet) NaN. The CPU's
    AVX512-BF16 conversion, where it has one, gives the same bits except on subnormal inputs,
    which it flushes to a zero of their sign."""
    from rnnfast import _C
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2 ** 31), 2 ** 31, (64, 257), generator=gen, dtype=torch.int64)
    ties = (bits & ~0xFFFF) | 0x8000  # half an ulp above a bfloat16 value: a tie
    specials = torch.tensor([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF,
                             0x7FC00000, 0xFFC00001, 0x7F800001, 0x00000001, 0x807FFFFF,
                             0x00800000, 0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001])
    bits = torch.cat([bits.flatten(), ties.flatten(), specials]).view(1, -1)
    x = bits.to(torch.int32).view(torch.float32)
    want = x.to(torch.bfloat16)
    got = _C._bf16_round_rows(x, False)
    nan = x.isnan()
    assert torch.equal(got.view(torch.int16)[~nan], want.view(torch.int16)[~nan])
    assert got[nan].isnan().all()
    ties_x = ties.flatten().to(torch.int32).view(torch.float32)
    assert (ties_x.isfinite()).sum() > 0  # ties among finite values were checked above
    if not _C._bf16_round_native():
        pytest.skip("this CPU has no AVX512-BF16 conversion to compare with (the portable one "
                    "was checked)")
    native = _C._bf16_round_rows(x, True)
    subnormal = (x != 0) & (x.abs() < torch.finfo(torch.float32).tiny)
    keep = ~nan & ~subnormal
    assert torch.equal(native.view(torch.int16)[keep], want.view(torch.int16)[keep])
    assert native[nan].isnan().all()
    flushed = native[subnormal].float()
    assert (flushed == 0).all()
    assert torch.equal(flushed.signbit(), x[subnormal].signbit())


def test_without_a_bfloat16_kernel_calls_take_the_widened_path():
    """As a CPU without a bfloat16 kernel chooses (AVX2 only: the AMD EPYC): every call keeps
    the bfloat16 data path with float32 products where the kernel set has the panel
    micro-kernel, and the layers stay within the bfloat16 bound there; RNNFAST_CPU_BF16=fp32's
    selection sends every call to up-converted copies instead."""
    from rnnfast import _C
    panel = rnnfast.build_info()["step_gemm"] == "rnnfast panel micro-kernel"
    calls = [(rnn, b) for rnn in (False, True) for b in (1, 4, 5, 64)]
    try:
        assert _C._select_bf16_kernel("fp32", forced=False)
        assert {_C._bf16_path(rnn, b) for rnn, b in calls} == {"widened" if panel else "copies"}
        assert not any(_C._bf16_kernels_for(rnn, b) for rnn, b in calls)
        assert rnnfast.build_info()["bf16_gemm"] == (
            "float32 products on widened bfloat16 operands (every call)" if panel
            else "float32 on up-converted values")
        torch.manual_seed(8)
        for name in ("lstm", "gru", "rnn_tanh"):
            kind = KINDS[name]
            _layer_against_float64(kind, dict(kind.kwargs, num_layers=2), 24, 40,
                                   torch.tensor([9, 8, 8, 4, 1]), True)
        assert _C._select_bf16_kernel("fp32")
        assert {_C._bf16_path(rnn, b) for rnn, b in calls} == {"copies"}
        assert rnnfast.build_info()["bf16_gemm"] == "float32 on up-converted values"
    finally:
        _C._reset_bf16_kernel()


@pytest.mark.parametrize("kind", kind_params())
def test_widened_small_batch_steps_on_bfloat16_panels_bitwise(kind):
    """At up to 8 rows a step, the widened path's step products read the weights as bfloat16
    panels widened in registers (half the bytes to stream through the caches): every output,
    state and gradient is bitwise what float32 panels of the same values give, at batches
    1, 3 and 8, padded and packed (shrinking batches), bidirectional and stacked."""
    from rnnfast import _C
    if rnnfast.build_info()["step_gemm"] != "rnnfast panel micro-kernel":
        pytest.skip("widened bfloat16 path: this kernel set has no panel micro-kernel")
    assert _C._select_bf16_kernel("widened")
    try:
        torch.manual_seed(11)
        mod = kind.fast_layer(13, 37, **dict(kind.kwargs, num_layers=2, bidirectional=True),
                              dtype=torch.bfloat16)
        for lengths, packed in ((torch.tensor([6]), False), (torch.tensor([5, 5, 5]), False),
                                (torch.tensor([7, 6, 6, 4, 3, 3, 2, 1]), True)):
            x = torch.randn(int(lengths.max()), len(lengths), 13).bfloat16()
            runs = []
            for mode in ("always", "never"):
                _C._set_bf16_half_panels(mode)
                runs.append(_run(mod, x, lengths, packed, torch.bfloat16))
            for i, (a, b) in enumerate(zip(*runs)):
                assert torch.equal(a, b), f"tensor {i} differs between bfloat16 and float32 panels"
    finally:
        _C._set_bf16_half_panels("auto")
        _C._reset_bf16_kernel()


def test_a_layer_call_weighs_its_own_w_hh_slice():
    """The layers ask the rule with the float32 bytes of one thread's slice of W_hh (the step
    loops split its rows among the intra-op threads)."""
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            assert rnnfast._C._w_hh_slice_bytes(4 * 512, 512) == 4 * 4 * 512 * 512 // t
    finally:
        torch.set_num_threads(threads)


def test_bfloat16_runs_rnnfast_kernels_and_float16_falls_back():
    from rnnfast import ops
    assert ops.runs_kernels(torch.zeros(1, dtype=torch.bfloat16))
    assert not ops.runs_kernels(torch.zeros(1, dtype=torch.float16))


def test_bfloat16_operator_saved_dtypes():
    """The LSTM's cell state and saved gates stay float32 (what the pointwise maths runs in);
    the GRU saves its rows as bfloat16 (half the memory; widened per step in backward)."""
    kind = KINDS["lstm"]
    s = make_sample(kind, False, True, False, dtype=torch.bfloat16)
    out = kind.forward_op(*s.forward_args(True))
    assert out[0].dtype == torch.bfloat16 and out[2].dtype == torch.bfloat16
    assert out[3].dtype == torch.float32 and out[4].dtype == torch.float32
    kind = KINDS["gru"]
    s = make_sample(kind, False, True, False, dtype=torch.bfloat16)
    output, hy, workspace = kind.forward_op(*s.forward_args(True))
    assert output.dtype == hy.dtype == workspace.dtype == torch.bfloat16
    assert workspace.shape == (output.shape[0] * output.shape[1], 4 * output.shape[-1])


@pytest.mark.parametrize("kind,reverse,bias,packed", OPCHECK_PARAMS)
def test_opcheck_forward_bfloat16(kind, reverse, bias, packed):
    sample = make_sample(kind, reverse, bias, packed, dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(kind.forward_op, sample.forward_args(True))


@pytest.mark.parametrize("layout", ["expanded", "transposed"])
@pytest.mark.parametrize("kind", kind_params())
def test_strided_output_gradient_bfloat16(kind, layout, bf16_kernel):
    """backward reads a bfloat16 output gradient in place, whatever its strides: an expanded
    gradient (stride 0, what ``out.sum()`` gives) and a transposed one give the very bits of
    the same values made contiguous."""
    torch.manual_seed(3)
    kwargs = dict(kind.kwargs, num_layers=2, bidirectional=True)
    if kind.proj_size:
        kwargs["proj_size"] = 11
    fast = kind.fast_layer(24, 40, **kwargs, dtype=torch.bfloat16)
    x = torch.randn(7, 5, 24, dtype=torch.bfloat16)
    out_shape = fast(x)[0].shape
    if layout == "expanded":
        g = torch.tensor(0.375, dtype=torch.bfloat16).expand(out_shape)
    else:
        g = torch.randn(out_shape[1], out_shape[0], out_shape[2]).to(torch.bfloat16).transpose(0, 1)
    assert not g.is_contiguous()

    def grads(grad_out):
        xx = x.clone().requires_grad_(True)
        out = fast(xx)[0]
        return torch.autograd.grad(out, [xx, *fast.parameters()], grad_out)

    for got, want in zip(grads(g), grads(g.contiguous())):
        assert torch.equal(got, want)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("kind", kind_params())
def test_large_layer_bfloat16_against_float64(kind, reverse, bf16_kernel):
    """A layer with outputs of 2 MiB and more (T * B * P * 2 bytes), where the recurrent weight
    gradient takes h_{t-1} from the outputs and h_0 in two products rather than a copy."""
    torch.manual_seed(5)
    kwargs = dict(kind.kwargs, bidirectional=reverse)
    H = 256
    ref = kind.torch_layer(32, H, **kwargs).to(torch.bfloat16)
    _away_from_relu_kink(kind, ref)
    fast = kind.fast_layer(32, H, **kwargs, dtype=torch.bfloat16)
    fast.load_state_dict(ref.state_dict())
    ref64 = kind.torch_layer(32, H, **kwargs, dtype=torch.float64)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()})
    x = torch.randn(65, 64, 32).to(torch.bfloat16).double()
    P = kind.proj_size or H
    assert 65 * 64 * P * 2 >= 2 << 20 or kind.proj_size
    lengths = torch.full((64,), 65)
    expected = _run(ref64, x, lengths, False, torch.float64)
    got = _run(fast, x, lengths, False, torch.bfloat16)
    theirs = _run(ref, x, lengths, False, torch.bfloat16)
    names = ["output", *kind.state_names, "grad input", *[n for n, _ in fast.named_parameters()]]
    _check_against(expected, got, theirs, names)

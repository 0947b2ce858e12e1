"""The CUDA operators of the options beyond torch.nn (layer normalisation, zoneout, recurrent
and weight dropout: csrc/cuda/options_host.h, csrc/kernels/options_device.cuh), run on the
CPU in the SIMT emulator, against rnnfast.reference one layer and direction at a time, and
through the modules against the CPU operators. Emulation runs every CUDA thread as a fiber,
so sizes are small; hidden 70 gives rows of 210 and 280 gate columns, several warps and
more than one column per thread."""
import pytest
import torch

import rnnfast
from rnnfast import ops, reference as ref
from rnnfast.testing import emulate_cuda

from test_options_kernels import _cases, _float32_errors, _gradcheck, _layer, _opcheck, _run

#: float64: the operators and the reference compute the same formulas in a different order
#: (sums of <= 280 terms); float32 against the float64 reference: within 4x torch's own
#: float32 error on the same formulas (as the CPU operators' test); float16 and bfloat16 run
#: on float32 copies, so their error is the rounding of inputs and results: ~10 u.
F64 = dict(rtol=1e-10, atol=1e-12)
HALF_TOL = {torch.float16: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=6e-2, atol=6e-2)}


def _compare(got, want, **tol):
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kind,ln,zone,rec,wd,packed,reverse,proj",
                         list(_cases("lstm")) + list(_cases("gru")))
def test_float64_matches_reference(kind, ln, zone, rec, wd, packed, reverse, proj):
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=ln, zone=zone, rec=rec, wd=wd,
                                     proj=proj, packed=packed)
    kwargs["reverse"] = reverse
    with emulate_cuda():
        got = _run(ops, kind, tensors, kwargs, leaves)
    _compare(got, _run(ref, kind, tensors, kwargs, leaves), **F64)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("lstm", 2), ("gru", 0)])
def test_padded_without_recurrent_dropout(kind, proj, reverse):
    """Padded input without a recurrent mask: dW_hh from the shifted output rows (the other
    cases gather h_{t-1} per step)."""
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=True, zone="train", rec=False,
                                     wd=True, proj=proj)
    kwargs["reverse"] = reverse
    with emulate_cuda():
        got = _run(ops, kind, tensors, kwargs, leaves)
    _compare(got, _run(ref, kind, tensors, kwargs, leaves), **F64)


@pytest.mark.parametrize("kind,proj", [("lstm", 0), ("lstm", 33), ("gru", 0)])
@pytest.mark.parametrize("bias", [True, False])
def test_wide_rows(kind, proj, bias):
    """Rows wider than a warp and than the block (LN moments over several warps, several
    columns per thread), with and without biases."""
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=True, zone="train", rec=True,
                                     wd=False, proj=proj, bias=bias, steps=3, batch=2, inp=5,
                                     hidden=70)
    with emulate_cuda():
        got = _run(ops, kind, tensors, kwargs, leaves)
    _compare(got, _run(ref, kind, tensors, kwargs, leaves), **F64)


def test_the_emulated_operators_run():
    tensors, kwargs, leaves = _layer("gru", torch.float32, ln=True, zone="eval", rec=True,
                                     wd=False)
    with emulate_cuda(), torch.profiler.profile() as prof:
        _run(ops, "gru", tensors, kwargs, leaves)
    names = {e.key for e in prof.key_averages()}
    assert "rnnfast_emu::gru_options_forward" in names
    assert "rnnfast_emu::gru_options_backward" in names
    assert "rnnfast::gru_options_forward" not in names


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 4])
def test_float32_error_as_torch_float32(kind, batch):
    with emulate_cuda():
        mine, torch_f32 = _float32_errors(kind, batch, steps=6)
    assert mine <= 4 * torch_f32 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_half_types_on_float32_copies(kind, dtype):
    args = dict(ln=True, zone="eval", rec=True, wd=False, steps=4, batch=2, inp=5, hidden=7)
    t64, kw64, l64 = _layer(kind, torch.float64, **args)
    th, kwh, lh = _layer(kind, dtype, **args)
    with emulate_cuda():
        outs, grads = _run(ops, kind, th, kwh, lh)
    exact = _run(ref, kind, t64, kw64, l64)
    assert all(o.dtype == dtype for o in outs)
    for a, b in zip(outs + list(grads), exact[0] + exact[1]):
        if a is not None:
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(a.double(), b, rtol=HALF_TOL[dtype]["rtol"],
                                       atol=HALF_TOL[dtype]["atol"] * scale)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradcheck(kind):
    with emulate_cuda():
        assert _gradcheck(kind, inp=2, hidden=3)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_opcheck(kind):
    rnnfast.testing.emulator()
    _opcheck(torch.ops.rnnfast_emu, kind, steps=3)


@pytest.mark.parametrize("mode", ["rnn", "cell"])
def test_modules_match_the_cpu_operators(mode):
    """A two-layer bidirectional LayerNorm LSTM and GRU with every option, trained one step
    from the same seed under emulated CUDA and on the CPU operators: the same masks, outputs
    and gradients."""
    results = []
    for emulated in (True, False):
        torch.manual_seed(0)
        if mode == "rnn":
            mods = [rnnfast.LSTM(5, 6, num_layers=2, bidirectional=True, layer_norm=True,
                                 zoneout=0.2, recurrent_dropout=0.3, weight_dropout=0.25,
                                 dtype=torch.float64),
                    rnnfast.GRU(5, 6, num_layers=2, batch_first=True, layer_norm=True,
                                zoneout=0.2, recurrent_dropout=0.3, dtype=torch.float64)]
            x = torch.randn(4, 3, 5, dtype=torch.float64)
        else:
            mods = [rnnfast.LSTMCell(5, 6, layer_norm=True, dtype=torch.float64),
                    rnnfast.GRUCell(5, 6, layer_norm=True, dtype=torch.float64)]
            x = torch.randn(3, 5, dtype=torch.float64)
        got = []
        with emulate_cuda(emulated):
            for m in mods:
                out = m(x)
                out = out[0] if isinstance(out, tuple) else out
                out.square().sum().backward()
                got.append((out.detach(), [p.grad for p in m.parameters()]))
        results.append(got)
    for (a, ga), (b, gb) in zip(*results):
        torch.testing.assert_close(a, b, **F64)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, **F64)


def test_bad_mask_is_refused_as_on_the_cpu():
    tensors, kwargs, leaves = _layer("lstm", torch.float32, ln=False, zone="train", rec=False,
                                     wd=False, steps=3)
    m = kwargs["masks"]
    args = (*tensors, None, None, None, None, None, m.zoneout_h[:2], m.zoneout_c[:3], 0.0, None,
            False, False)
    rnnfast.testing.emulator()
    messages = []
    for op in (torch.ops.rnnfast.lstm_options_forward, torch.ops.rnnfast_emu.lstm_options_forward):
        with pytest.raises(RuntimeError, match=r"zoneout_h must have shape \[3, 3, 6\]") as e:
            op(*args)
        messages.append(str(e.value).splitlines()[0])
    assert messages[0] == messages[1]

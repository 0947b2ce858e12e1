"""The fused CPU operators of the options beyond torch.nn (layer normalisation, zoneout,
recurrent and weight dropout) against rnnfast.reference, one layer and direction at a time
(rnnfast.ops.lstm_layer / gru_layer with their option keywords)."""
import itertools

import pytest
import torch

import rnnfast
from rnnfast import ops, reference as ref

T, B, I, H = 5, 3, 4, 6
SIZES = torch.tensor([3, 3, 2, 2, 1])  # a packed batch of three sequences


def _layer(kind, dtype, *, ln, zone, rec, wd, proj=0, packed=False, bias=True, seed=0,
           steps=T, batch=B, inp=I, hidden=H):
    """Random arguments of one layer call: (args, kwargs, leaves)."""
    g = torch.Generator().manual_seed(seed)
    P = proj or hidden
    G = 4 if kind == "lstm" else 3

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    sizes = SIZES if packed else None
    x = rnd(int(SIZES.sum()), inp) if packed else rnd(steps, batch, inp)
    n_steps = len(SIZES) if packed else steps
    h0, c0 = rnd(batch, P, scale=0.5), rnd(batch, hidden, scale=0.5)
    w_ih, w_hh = rnd(G * hidden, inp, scale=0.4), rnd(G * hidden, P, scale=0.4)
    b_ih = rnd(G * hidden, scale=0.2) if bias else None
    b_hh = rnd(G * hidden, scale=0.2) if bias else None
    w_hr = rnd(P, hidden, scale=0.4) if proj else None
    lnp = None
    if ln:
        lnp = [rnd(G * hidden, scale=0.3) + 1, rnd(G * hidden, scale=0.3) + 1]
        if kind == "lstm":
            lnp += [rnd(hidden, scale=0.3) + 1, rnd(hidden, scale=0.1)]
    masks, zoneout = None, 0.0
    if zone == "eval":
        zoneout = 0.3
    if zone == "train" or rec or wd:
        torch.manual_seed(seed)
        masks = ref.draw_masks(G, hidden, P, n_steps, batch, weight_dropout=0.3 if wd else 0.0,
                               recurrent_dropout=0.3 if rec else 0.0,
                               zoneout=0.3 if zone == "train" else 0.0,
                               cell_state=kind == "lstm")
    tensors = [x, h0] + ([c0] if kind == "lstm" else []) + [w_ih, w_hh, b_ih, b_hh]
    if kind == "lstm":
        tensors.append(w_hr)
    leaves = [t.requires_grad_() for t in tensors + (lnp or []) if t is not None]
    kwargs = dict(batch_sizes=sizes, reverse=False, layer_norm=lnp, masks=masks,
                  zoneout=zoneout)
    return tensors, kwargs, leaves


def _run(module, kind, tensors, kwargs, leaves):
    fn = module.lstm_layer if kind == "lstm" else module.gru_layer
    outs = fn(*tensors, **kwargs)
    g = torch.Generator().manual_seed(123)
    seeds = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, seeds, allow_unused=True)
    return list(outs), list(grads)


def _cases(kind):
    """Every combination of the options on a packed reverse layer, and every layout (padded
    or packed, either direction) with all options on."""
    projs = (0, 2) if kind == "lstm" else (0,)
    combos = [(ln, zone, rec, wd, True, True, proj) for ln, zone, rec, wd, proj in
              itertools.product((False, True), (None, "train", "eval"), (False, True),
                                (False, True), projs) if ln or zone or rec or wd]
    combos += [(True, zone, True, True, packed, reverse, proj)
               for zone, packed, reverse, proj in itertools.product(
                   ("train", "eval"), (False, True), (False, True), projs)
               if not (packed and reverse)]
    for ln, zone, rec, wd, packed, reverse, proj in combos:
        yield pytest.param(kind, ln, zone, rec, wd, packed, reverse, proj,
                           id=f"{kind}-ln{int(ln)}-z{zone}-rec{int(rec)}-wd{int(wd)}"
                              f"-packed{int(packed)}-rev{int(reverse)}-proj{proj}")


@pytest.mark.parametrize("kind,ln,zone,rec,wd,packed,reverse,proj",
                         list(_cases("lstm")) + list(_cases("gru")))
def test_float64_matches_reference(kind, ln, zone, rec, wd, packed, reverse, proj):
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=ln, zone=zone, rec=rec, wd=wd,
                                     proj=proj, packed=packed)
    kwargs["reverse"] = reverse
    outs, grads = _run(ops, kind, tensors, kwargs, leaves)
    r_outs, r_grads = _run(ref, kind, tensors, kwargs, leaves)
    for a, b in zip(outs, r_outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, r_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_operators_run():
    """The option keywords reach the fused operators (not the reference) on the CPU."""
    tensors, kwargs, leaves = _layer("lstm", torch.float32, ln=True, zone="train", rec=True,
                                     wd=False)
    with torch.profiler.profile() as prof:
        _run(ops, "lstm", tensors, kwargs, leaves)
    names = {e.key for e in prof.key_averages()}
    assert "rnnfast::lstm_options_forward" in names
    assert "rnnfast::lstm_options_backward" in names


def _float32_errors(kind, batch, steps):
    """(error of the operators in float32, error of the reference in float32), each the
    largest relative error over outputs and gradients against the float64 reference."""
    args = dict(ln=True, zone="train", rec=True, wd=True, seed=batch, steps=steps, batch=batch,
                inp=5, hidden=9)
    t64, kw64, l64 = _layer(kind, torch.float64, **args)
    t32, kw32, l32 = _layer(kind, torch.float32, **args)
    exact = _run(ref, kind, t64, kw64, l64)

    def err(got):
        return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                   for a, b in zip(got[0] + got[1], exact[0] + exact[1]))

    return err(_run(ops, kind, t32, kw32, l32)), err(_run(ref, kind, t32, kw32, l32))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 3, 8, 33])
def test_float32_error_as_torch_float32(kind, batch):
    """float32 against the float64 reference: no larger than torch's own float32 error on
    the same formulas (rnnfast.reference in float32), with a margin of 4x."""
    mine, torch_f32 = _float32_errors(kind, batch, steps=7)
    assert mine <= 4 * torch_f32 + 1e-6


def _gradcheck(kind, **sizes):
    """float64 gradcheck of one layer with every option, packed (and a projection)."""
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=True, zone="train", rec=True,
                                     wd=True, proj=2 if kind == "lstm" else 0, packed=True,
                                     **sizes)
    fn = ops.lstm_layer if kind == "lstm" else ops.gru_layer
    pos = {id(t): i for i, t in enumerate(tensors) if t is not None}
    lnp = kwargs.pop("layer_norm")

    def f(*args):
        ts = list(tensors)
        for t, a in zip(leaves, args):
            if id(t) in pos:
                ts[pos[id(t)]] = a
        return fn(*ts, layer_norm=list(args[len(args) - len(lnp):]), **kwargs)

    return torch.autograd.gradcheck(f, tuple(leaves))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradcheck(kind):
    assert _gradcheck(kind, inp=3, hidden=4)


def _opcheck(namespace, kind, **sizes):
    tensors, kwargs, leaves = _layer(kind, torch.float32, ln=True, zone="train", rec=True,
                                     wd=False, **sizes)
    m = kwargs["masks"]
    lnp = kwargs["layer_norm"]
    if kind == "lstm":
        op = namespace.lstm_options_forward
        args = (*tensors, *lnp, m.recurrent, m.zoneout_h, m.zoneout_c, 0.0, None, False, True)
    else:
        op = namespace.gru_options_forward
        args = (*tensors, *lnp, m.recurrent, m.zoneout_h, 0.0, None, True, True)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_opcheck(kind):
    _opcheck(torch.ops.rnnfast, kind)


def _on_threads(n, fn):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return fn()
    finally:
        torch.set_num_threads(before)


# The threads share a step by batch rows from 4 rows per thread up, by columns of the products
# below (batch 1 and 3 here); both are large enough to run on 2 threads.
SPLITS = [pytest.param(16, 32, id="rows"), pytest.param(1, 128, id="columns-b1"),
          pytest.param(3, 64, id="columns-b3")]


@pytest.mark.parametrize("batch,hidden", SPLITS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_float64_on_two_threads(kind, batch, hidden):
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=True, zone="train", rec=True,
                                     wd=True, batch=batch, hidden=hidden, inp=8, steps=6)
    kwargs["reverse"] = True
    got = _on_threads(2, lambda: _run(ops, kind, tensors, kwargs, leaves))
    want = _run(ref, kind, tensors, kwargs, leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(rnnfast.build_info()["step_gemm"] != "rnnfast panel micro-kernel",
                    reason="only rnnfast's panel micro-kernel sums each element in one order "
                           "whatever the split (the BLAS's packed GEMM may not)")
@pytest.mark.parametrize("batch,hidden", SPLITS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_same_bits_on_any_thread_count(kind, batch, hidden):
    """float32 gives the same bits on one thread and on two (split by rows or by columns)."""
    tensors, kwargs, leaves = _layer(kind, torch.float32, ln=True, zone="train", rec=True,
                                     wd=False, batch=batch, hidden=hidden, inp=8)
    one = _on_threads(1, lambda: _run(ops, kind, tensors, kwargs, leaves))
    two = _on_threads(2, lambda: _run(ops, kind, tensors, kwargs, leaves))
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_compiles_fullgraph(kind):
    tensors, kwargs, leaves = _layer(kind, torch.float32, ln=True, zone="train", rec=True,
                                     wd=True)
    fn = ops.lstm_layer if kind == "lstm" else ops.gru_layer
    compiled = torch.compile(lambda *ts: fn(*ts, **kwargs), fullgraph=True, backend="aot_eager")
    eager = fn(*tensors, **kwargs)
    got = compiled(*tensors)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in got).backward()
    assert all(t.grad is not None for t in leaves)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_zoneout_mask_of_h_only_with_an_evaluation_p(kind):
    """A training zoneout mask for h only (no mask for c) and a p: as the reference, the
    states without a mask do not zone out, and p is not used."""
    tensors, kwargs, leaves = _layer(kind, torch.float64, ln=False, zone="train", rec=False,
                                     wd=False)
    kwargs["masks"] = kwargs["masks"]._replace(zoneout_c=None)
    kwargs["zoneout"] = 0.4
    got = _run(ops, kind, tensors, kwargs, leaves)
    want = _run(ref, kind, tensors, kwargs, leaves)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bfloat16(kind):
    """bfloat16 layers run the float32 operators on up-converted values: outputs and gradients
    in bfloat16, closer to the float64 reference than the reference computed in bfloat16."""
    args = dict(ln=True, zone="train", rec=True, wd=True, steps=7, batch=4, inp=5, hidden=9)
    t16, kw16, l16 = _layer(kind, torch.bfloat16, **args)
    t64, kw64, l64 = _layer(kind, torch.float64, **args)
    with torch.profiler.profile() as prof:
        mine = _run(ops, kind, t16, kw16, l16)
    assert f"rnnfast::{kind}_options_forward" in {e.key for e in prof.key_averages()}
    assert all(t.dtype == torch.bfloat16 for t in mine[0] + mine[1])
    exact = _run(ref, kind, t64, kw64, l64)
    torch_bf16 = _run(ref, kind, t16, kw16, l16)

    def err(got):
        return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                   for a, b in zip(got[0] + got[1], exact[0] + exact[1]))

    assert err(mine) <= err(torch_bf16)


def test_bad_arguments():
    tensors, kwargs, _ = _layer("lstm", torch.float32, ln=False, zone="train", rec=True,
                                wd=False)
    with pytest.raises(ValueError, match="zoneout probability has to be between 0 and 1"):
        ops.lstm_layer(*tensors, **{**kwargs, "masks": None, "zoneout": 1.0})
    bad = kwargs["masks"]._replace(recurrent=torch.ones(B + 1, H))
    with pytest.raises(ValueError, match="masks.recurrent: expected shape"):
        ops.lstm_layer(*tensors, **{**kwargs, "masks": bad})
    with pytest.raises(RuntimeError, match=r"expected ln_ih of shape \[24\], got \[3\]"):
        ops.lstm_layer(*tensors, **{**kwargs, "layer_norm": [torch.ones(3)] * 4})
    # The layer still works afterwards.
    out, _, _ = ops.lstm_layer(*tensors, **kwargs)
    assert torch.isfinite(out).all()

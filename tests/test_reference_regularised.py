"""The reference's options beyond torch.nn (rnnfast/reference.py): layer-normalised LSTM
and GRU, zoneout, recurrent (variational) dropout and weight dropout (DropConnect), and
the documented order in which their masks are drawn.

Each formula is checked against an independent implementation written here (explicit
mean/variance layer norm, gate slices by index, an own loop over layers, directions and
steps), for outputs and every gradient in float64. Like tests/test_reference.py this needs
only torch (the reference is loaded by file path)."""

from __future__ import annotations

import itertools
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import assert_close, load_reference

ref = load_reference()
DT = torch.float64
GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn": 1}


# ---------------------------------------------------------------- independent maths

def ln(v: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    """Layer norm written out: biased variance, eps 1e-5."""
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + 1e-5) * w
    return out if b is None else out + b


def indep_cell(kind: str, x: Tensor, states: List[Tensor], p, lnp, rec: Optional[Tensor],
               w_hh: Tensor) -> List[Tensor]:
    """One step of ``kind``; ``rec`` multiplies h where it meets w_hh (only there)."""
    w_ih, _, b_ih, b_hh, w_hr = p
    h = states[0]
    h_in = h if rec is None else h * rec
    a = x @ w_ih.t()
    r = h_in @ w_hh.t()
    if lnp is not None:
        a = ln(a, lnp[0])
        r = ln(r, lnp[1])
    if b_ih is not None:
        a = a + b_ih
        r = r + b_hh
    if kind.startswith("lstm"):
        c = states[1]
        H = c.shape[-1]
        s = a + r
        i, f = torch.sigmoid(s[:, :H]), torch.sigmoid(s[:, H:2 * H])
        g, o = torch.tanh(s[:, 2 * H:3 * H]), torch.sigmoid(s[:, 3 * H:])
        c2 = f * c + i * g
        h2 = o * torch.tanh(ln(c2, lnp[2], lnp[3]) if lnp is not None else c2)
        if w_hr is not None:
            h2 = h2 @ w_hr.t()
        return [h2, c2]
    if kind == "gru":
        H = h.shape[-1]
        rr = torch.sigmoid(a[:, :H] + r[:, :H])
        z = torch.sigmoid(a[:, H:2 * H] + r[:, H:2 * H])
        n = torch.tanh(a[:, 2 * H:] + rr * r[:, 2 * H:])
        return [(1 - z) * n + z * h]
    return [torch.tanh(a + r)]


def indep_stack(kind: str, x: Tensor, hx: Sequence[Tensor], params, L: int, D: int,
                lnps=None, masks=None, p_zone: float = 0.0, drop_masks=None
                ) -> Tuple[Tensor, List[Tensor]]:
    """Time-major ``x`` (T, B, I), states (L*D, B, .): the whole stack, one loop.
    ``masks[k]``: (weight, recurrent, zoneout_h, zoneout_c) of layer-direction k (training
    zoneout when a zoneout mask is given, else the evaluation mix with ``p_zone``);
    ``drop_masks[l - 1]``: inter-layer dropout multiplier of layer l's input."""
    T = x.shape[0]
    layer_in = x
    finals: List[List[Tensor]] = [[] for _ in hx]
    for layer in range(L):
        if layer > 0 and drop_masks is not None:
            layer_in = layer_in * drop_masks[layer - 1]
        outs = []
        for d in range(D):
            k = layer * D + d
            p = params[k]
            m = masks[k] if masks is not None else (None, None, None, None)
            w_hh = p[1] if m[0] is None else p[1] * m[0].to(DT)
            rec = None if m[1] is None else m[1].to(DT)
            zone = [m[2], m[3]][:len(hx)]
            states = [s[k] for s in hx]
            ys: List[Optional[Tensor]] = [None] * T
            for t in (range(T - 1, -1, -1) if d == 1 else range(T)):
                new = indep_cell(kind, layer_in[t], states, p,
                                 None if lnps is None else lnps[k], rec, w_hh)
                mixed = []
                for prev, nxt, zm in zip(states, new, zone):
                    if zm is not None:
                        keep = zm[t].to(DT)
                        nxt = keep * prev + (1 - keep) * nxt
                    elif p_zone:
                        nxt = p_zone * prev + (1 - p_zone) * nxt
                    mixed.append(nxt)
                states = mixed
                ys[t] = states[0]
            outs.append(torch.stack(ys))
            for acc, s in zip(finals, states):
                acc.append(s)
        layer_in = torch.cat(outs, dim=-1)
    return layer_in, [torch.stack(acc) for acc in finals]


# ------------------------------------------------------------------------- fixtures

def make_params(kind: str, L: int, D: int, I: int, H: int, P: int, bias: bool = True):
    """Random float64 leaves: the per-layer params and the layer-norm tuples (gains
    around 1, shifts around 0, so LN's parameters matter)."""
    G = GATES[kind]
    params, lnps = [], []
    for layer in range(L):
        for _ in range(D):
            in_size = I if layer == 0 else D * P
            w_ih = torch.randn(G * H, in_size, dtype=DT) * 0.5
            w_hh = torch.randn(G * H, P, dtype=DT) * 0.5
            b_ih = torch.randn(G * H, dtype=DT) * 0.3 if bias else None
            b_hh = torch.randn(G * H, dtype=DT) * 0.3 if bias else None
            w_hr = torch.randn(P, H, dtype=DT) * 0.5 if kind == "lstm_proj" else None
            params.append((w_ih, w_hh, b_ih, b_hh, w_hr))
            lnp = [1 + 0.3 * torch.randn(G * H, dtype=DT), 1 + 0.3 * torch.randn(G * H, dtype=DT)]
            if kind.startswith("lstm"):
                lnp += [1 + 0.3 * torch.randn(H, dtype=DT), 0.3 * torch.randn(H, dtype=DT)]
            lnps.append(tuple(lnp))
    for t in itertools.chain(*params, *lnps):
        if t is not None:
            t.requires_grad_(True)
    return params, lnps


def make_masks(kind: str, L: int, D: int, T: int, B: int, H: int, P: int, which: str):
    """Explicit masks (random, not from draw_masks) for the options in ``which``."""
    G = GATES[kind]
    masks = []
    for _ in range(L * D):
        w = r = zh = zc = None
        if "w" in which:
            w = (torch.rand(G * H, P) >= 0.3).float() / 0.7
        if "r" in which:
            r = (torch.rand(B, P) >= 0.4).float() / 0.6
        if "z" in which:
            zh = torch.rand(T, B, P) < 0.35
            if kind.startswith("lstm"):
                zc = torch.rand(T, B, H) < 0.35
        masks.append(ref.LayerMasks(w, r, zh, zc))
    return masks


def ref_stack(kind: str, x, hx, params, L, bidirectional, **kw):
    """The reference's stack for ``kind``, returning (output, [final states])."""
    if kind.startswith("lstm"):
        out, (h, c) = ref.lstm(x, hx if hx is None else tuple(hx), params, L, bidirectional,
                               kw.pop("batch_first", False), **kw)
        return out, [h, c]
    if kind == "rnn":
        kw.pop("layer_norm", None)
        out, h = ref.rnn(x, None if hx is None else hx[0], params, L, bidirectional,
                         kw.pop("batch_first", False), **kw)
    else:
        out, h = ref.gru(x, None if hx is None else hx[0], params, L, bidirectional,
                         kw.pop("batch_first", False), **kw)
    return out, [h]


def make_states(kind: str, LD: int, B: int, H: int, P: int) -> List[Tensor]:
    h = torch.randn(LD, B, P, dtype=DT, requires_grad=True)
    if kind.startswith("lstm"):
        return [h, torch.randn(LD, B, H, dtype=DT, requires_grad=True)]
    return [h]


def leaves(x, hx, params, lnps, with_ln: bool) -> List[Tensor]:
    out = [x, *hx] + [t for p in params for t in p if t is not None]
    if with_ln:
        out += [t for lnp in lnps for t in lnp]
    return out


def grads_of(outputs: Sequence[Tensor], inputs: Sequence[Tensor], seed: int = 7
             ) -> Tuple[Optional[Tensor], ...]:
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, dtype=o.dtype, generator=g) for o in outputs]
    return torch.autograd.grad(outputs, inputs, upstream, allow_unused=True)


def assert_all_close(got: Sequence[Optional[Tensor]], expected: Sequence[Optional[Tensor]],
                     what: str) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        if b is None:
            assert a is None or not a.abs().max() > 0, f"{what}[{i}]"
            continue
        assert_close(a, b, msg=f"{what}[{i}]")


KINDS = ["lstm", "lstm_proj", "gru", "rnn"]
#: Option sets: l layer norm, w weight dropout, r recurrent dropout, z zoneout (training
#: masks), e zoneout's evaluation form (no training masks with it: evaluation mode).
OPTIONS = ["l", "w", "r", "z", "e", "lwrz", "le"]


def _sizes(kind):
    H = 5
    return H, (3 if kind == "lstm_proj" else H)


# ------------------------------------------------------------------------ the tests

def test_layer_norm_matches_torch_layernorm():
    v = torch.randn(4, 12, dtype=DT) * 3 + 1
    mod = nn.LayerNorm(12, dtype=DT)
    with torch.no_grad():
        mod.weight.copy_(torch.randn(12, dtype=DT))
        mod.bias.copy_(torch.randn(12, dtype=DT))
    assert mod.eps == ref.LN_EPS
    assert_close(ref.layer_norm(v, mod.weight, mod.bias), mod(v))
    assert_close(ref.layer_norm(v, mod.weight), ln(v, mod.weight))


@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layer_norm_lstm_cell(proj, bias):
    kind = "lstm_proj" if proj else "lstm"
    H, P = _sizes(kind)
    (p,), (lnp,) = make_params(kind, 1, 1, 4, H, P, bias)
    x = torch.randn(3, 4, dtype=DT, requires_grad=True)
    h = torch.randn(3, P, dtype=DT, requires_grad=True)
    c = torch.randn(3, H, dtype=DT, requires_grad=True)
    rec = (torch.rand(3, P) >= 0.5).float() * 2
    w_ih, w_hh, b_ih, b_hh, w_hr = p
    got = ref.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, layer_norm=lnp,
                        recurrent_mask=rec)
    exp = indep_cell(kind, x, [h, c], p, lnp, rec.to(DT), w_hh)
    assert got[0].shape == (3, P) and got[1].shape == (3, H)
    assert_all_close(got, exp, "outputs")
    ins = [x, h, c, w_ih, w_hh, *lnp] + ([w_hr] if proj else []) + ([b_ih, b_hh] if bias else [])
    assert_all_close(grads_of(got, ins), grads_of(exp, ins), "grads")
    # layer norm really changes the step (gains and shifts away from the plain LSTM's)
    plain = ref.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
    assert not torch.allclose(plain[0], got[0])


def test_layer_norm_lstm_cell_wrong_formulas_caught():
    """The comparison can fail: one LN over the summed gates, or no LN before the output's
    tanh, give other results than the reference's formula."""
    H, P = _sizes("lstm")
    (p,), (lnp,) = make_params("lstm", 1, 1, 4, H, P)
    x, h, c = (torch.randn(3, n, dtype=DT) for n in (4, P, H))
    w_ih, w_hh, b_ih, b_hh, _ = p
    h_ref, c_ref = ref.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, layer_norm=lnp)

    def step(gates, norm_c):
        H4 = gates.shape[-1] // 4
        i, f = gates[:, :H4].sigmoid(), gates[:, H4:2 * H4].sigmoid()
        g, o = gates[:, 2 * H4:3 * H4].tanh(), gates[:, 3 * H4:].sigmoid()
        c2 = f * c + i * g
        return o * torch.tanh(ln(c2, lnp[2], lnp[3]) if norm_c else c2), c2

    right = step(ln(x @ w_ih.t(), lnp[0]) + ln(h @ w_hh.t(), lnp[1]) + b_ih + b_hh, True)
    assert_close(right[0], h_ref)
    assert_close(right[1], c_ref)
    summed = step(ln(x @ w_ih.t() + h @ w_hh.t(), lnp[0]) + b_ih + b_hh, True)
    assert not torch.allclose(summed[0], h_ref)
    no_ln_c = step(ln(x @ w_ih.t(), lnp[0]) + ln(h @ w_hh.t(), lnp[1]) + b_ih + b_hh, False)
    assert not torch.allclose(no_ln_c[0], h_ref)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_layer_norm_gru_cell(bias):
    (p,), (lnp,) = make_params("gru", 1, 1, 4, 5, 5, bias)
    x = torch.randn(3, 4, dtype=DT, requires_grad=True)
    h = torch.randn(3, 5, dtype=DT, requires_grad=True)
    rec = (torch.rand(3, 5) >= 0.5).float() * 2
    w_ih, w_hh, b_ih, b_hh, _ = p
    got = ref.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, layer_norm=lnp, recurrent_mask=rec)
    (exp,) = indep_cell("gru", x, [h], p, lnp, rec.to(DT), w_hh)
    assert_close(got, exp)
    ins = [x, h, w_ih, w_hh, *lnp] + ([b_ih, b_hh] if bias else [])
    assert_all_close(grads_of([got], ins), grads_of([exp], ins), "grads")
    # recurrent dropout reaches the product only: dropping the carried h too differs
    wrong = ref.gru_cell(x, h * rec.to(DT), w_ih, w_hh, b_ih, b_hh, layer_norm=lnp)
    assert not torch.allclose(wrong, got)
    assert not torch.allclose(ref.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh), got)


def test_rnn_cell_recurrent_mask():
    (p,), _ = make_params("rnn", 1, 1, 4, 5, 5)
    x, h = torch.randn(3, 4, dtype=DT), torch.randn(3, 5, dtype=DT)
    rec = (torch.rand(3, 5) >= 0.5).float() * 2
    got = ref.rnn_cell(x, h, *p[:4], recurrent_mask=rec)
    assert_close(got, indep_cell("rnn", x, [h], p, None, rec.to(DT), p[1])[0])
    assert got.dtype == DT  # the float32 mask does not change the dtype


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind,options", [(k, o) for k in KINDS for o in OPTIONS
                                          if not (k == "rnn" and "l" in o)])
def test_stack_matches_independent(kind, options, num_layers, bidirectional):
    """Whole stacks with explicit masks (training) or the evaluation form, against the
    independent loop: outputs, final states and the gradients of every leaf (the Elman
    RNN has no layer normalisation)."""
    T, B, I = 4, 3, 4
    H, P = _sizes(kind)
    D = 2 if bidirectional else 1
    params, lnps = make_params(kind, num_layers, D, I, H, P)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    hx = make_states(kind, num_layers * D, B, H, P)
    with_ln = "l" in options
    train_masks = any(o in options for o in "wrz")
    masks = make_masks(kind, num_layers, D, T, B, H, P, options) if train_masks else None
    p_zone = 0.3 if "e" in options else 0.0
    kw = dict(zoneout=p_zone)
    if with_ln:
        kw["layer_norm"] = lnps
    if train_masks:
        kw.update(masks=masks, training=True)
    got_out, got_fin = ref_stack(kind, x, hx, params, num_layers, bidirectional, **kw)
    exp_out, exp_fin = indep_stack(kind, x, hx, params, num_layers, D,
                                   lnps if with_ln else None,
                                   None if masks is None else [tuple(m) for m in masks], p_zone)
    assert got_out.shape == (T, B, D * P)
    assert_all_close([got_out, *got_fin], [exp_out, *exp_fin], "outputs")
    ins = leaves(x, hx, params, lnps, with_ln)
    assert_all_close(grads_of([got_out, *got_fin], ins), grads_of([exp_out, *exp_fin], ins),
                     "grads")
    # every option changes the result (so the comparison above can fail)
    plain_out, _ = ref_stack(kind, x, hx, params, num_layers, bidirectional)
    assert not torch.allclose(plain_out, got_out)


@pytest.mark.parametrize("kind", KINDS)
def test_weight_dropout_gradient_through_mask(kind):
    """d loss / d w_hh is zero exactly where the weight mask dropped the entry."""
    H, P = _sizes(kind)
    params, _ = make_params(kind, 1, 1, 4, H, P)
    masks = make_masks(kind, 1, 1, 4, 3, H, P, "w")
    x = torch.randn(4, 3, 4, dtype=DT)
    out, fin = ref_stack(kind, x, None, params, 1, False, masks=masks, training=True)
    (g,) = torch.autograd.grad(out.sum() + sum(f.sum() for f in fin), [params[0][1]])
    dropped = masks[0].weight == 0
    assert dropped.any() and (~dropped).any()
    assert torch.all(g[dropped] == 0)
    assert torch.all(g[~dropped] != 0)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_probabilities_equal_plain_exactly(kind):
    H, P = _sizes(kind)
    params, _ = make_params(kind, 2, 2, 4, H, P)
    x = torch.randn(4, 3, 4, dtype=DT)
    hx = make_states(kind, 4, 3, H, P)
    for training in (False, True):
        plain_out, plain_fin = ref_stack(kind, x, hx, params, 2, True, training=training)
        state = torch.get_rng_state()
        out, fin = ref_stack(kind, x, hx, params, 2, True, training=training, zoneout=0.0,
                             recurrent_dropout=0.0, weight_dropout=0.0)
        assert torch.equal(torch.get_rng_state(), state), "zero probabilities draw nothing"
        for a, b in zip([out, *fin], [plain_out, *plain_fin]):
            assert torch.equal(a, b)
    # masks that keep everything (ones, no zoneout): the same values, multiplied by ones into
    # new buffers, whose products the BLAS may sum in another order (MKL's results can depend
    # on the buffers' alignment): float64 rounding.
    G = GATES[kind]
    keep = [ref.LayerMasks(torch.ones(G * H, P), torch.ones(3, P),
                           torch.zeros(4, 3, P, dtype=torch.bool),
                           torch.zeros(4, 3, H, dtype=torch.bool) if kind.startswith("lstm")
                           else None) for _ in range(4)]
    out, fin = ref_stack(kind, x, hx, params, 2, True, training=True, masks=keep)
    for a, b in zip([out, *fin], [plain_out, *plain_fin]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_mode_deterministic(kind):
    """Evaluation: no draws, dropouts off, zoneout is the p-mix; same result each call."""
    H, P = _sizes(kind)
    params, lnps = make_params(kind, 2, 2, 4, H, P)
    x = torch.randn(4, 3, 4, dtype=DT)
    kw = dict(zoneout=0.25, recurrent_dropout=0.5, weight_dropout=0.5)
    if kind != "rnn":
        kw["layer_norm"] = lnps
    state = torch.get_rng_state()
    first = ref_stack(kind, x, None, params, 2, True, **kw)
    second = ref_stack(kind, x, None, params, 2, True, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip([first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b)
    # the dropouts are off in evaluation: equal to zoneout alone
    kw.update(recurrent_dropout=0.0, weight_dropout=0.0)
    only_zoneout = ref_stack(kind, x, None, params, 2, True, **kw)
    assert torch.equal(first[0], only_zoneout[0])


@pytest.mark.parametrize("dropout", [0.0, 0.4], ids=["nodrop", "interlayer"])
@pytest.mark.parametrize("kind", KINDS)
def test_mask_draw_order(kind, dropout):
    """Training masks reproduced from a manual draw under the same seed, in the documented
    order: per layer (inter-layer dropout first), forward before reverse: weight, recurrent,
    zoneout h, zoneout c; float32 draws whatever the dtype."""
    L, D, T, B, I = 3, 2, 4, 3, 4
    H, P = _sizes(kind)
    G = GATES[kind]
    pw, pr, pz = 0.3, 0.4, 0.35
    params, lnps = make_params(kind, L, D, I, H, P)
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    kw = dict(zoneout=pz, recurrent_dropout=pr, weight_dropout=pw, dropout=dropout,
              training=True)
    if kind != "rnn":
        kw["layer_norm"] = lnps
    torch.manual_seed(1234)
    got_out, got_fin = ref_stack(kind, x, None, params, L, True, **kw)

    torch.manual_seed(1234)
    masks, drops = [], []
    for layer in range(L):
        if layer > 0 and dropout > 0:
            drops.append(F.dropout(torch.ones(T, B, D * P, dtype=DT), dropout, True))
        for _ in range(D):
            w = (torch.rand(G * H, P) >= pw) / (1 - pw)
            r = (torch.rand(B, P) >= pr) / (1 - pr)
            zh = torch.rand(T, B, P) < pz
            zc = torch.rand(T, B, H) < pz if kind.startswith("lstm") else None
            masks.append((w, r, zh, zc))
    hx = [torch.zeros(L * D, B, P, dtype=DT)]
    if kind.startswith("lstm"):
        hx.append(torch.zeros(L * D, B, H, dtype=DT))
    exp_out, exp_fin = indep_stack(kind, x, hx, params, L, D,
                                   None if kind == "rnn" else lnps, masks, 0.0,
                                   drops if dropout > 0 else None)
    assert_all_close([got_out, *got_fin], [exp_out, *exp_fin], "outputs")
    ins = leaves(x, [], params, lnps, kind != "rnn")
    assert_all_close(grads_of([got_out, *got_fin], ins), grads_of([exp_out, *exp_fin], ins),
                     "grads")
    # draw_masks is that order, for one layer and direction
    torch.manual_seed(1234)
    if dropout > 0:
        torch.rand(0)
    drawn = ref.draw_masks(G, H, P, T, B, weight_dropout=pw, recurrent_dropout=pr, zoneout=pz,
                           cell_state=kind.startswith("lstm"))
    torch.manual_seed(1234)
    for a, b in zip(drawn, masks[0]):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b)
    # another seed gives other masks (the comparison above is not vacuous)
    torch.manual_seed(99)
    other_out, _ = ref_stack(kind, x, None, params, L, True, **kw)
    assert not torch.allclose(other_out, got_out)


def test_draw_masks_values_and_dtypes():
    m = ref.draw_masks(4, 50, 40, 30, 20, weight_dropout=0.3, recurrent_dropout=0.6,
                       zoneout=0.2, cell_state=True)
    assert m.weight.shape == (200, 40) and m.weight.dtype == torch.float32
    assert m.recurrent.shape == (20, 40) and m.recurrent.dtype == torch.float32
    assert m.zoneout_h.shape == (30, 20, 40) and m.zoneout_h.dtype == torch.bool
    assert m.zoneout_c.shape == (30, 20, 50) and m.zoneout_c.dtype == torch.bool
    values = m.weight.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
    assert abs((m.weight == 0).double().mean().item() - 0.3) < 0.03
    assert abs((m.recurrent == 0).double().mean().item() - 0.6) < 0.06
    assert abs(m.zoneout_h.double().mean().item() - 0.2) < 0.02
    none = ref.draw_masks(3, 5, 5, 4, 2)
    assert none == ref.LayerMasks()
    assert ref.draw_masks(3, 5, 5, 4, 2, zoneout=0.5, cell_state=False).zoneout_c is None


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind", KINDS)
def test_packed_matches_per_sequence(kind, reverse):
    """Packed (sorted) input: each sequence alone, with its rows of the masks (time index
    t in both directions), gives the same outputs and final states; 2 layers, both
    directions when ``reverse``."""
    T, B, I = 5, 4, 3
    H, P = _sizes(kind)
    D = 2 if reverse else 1
    lengths = [5, 4, 2, 1]
    params, lnps = make_params(kind, 2, D, I, H, P)
    x = torch.randn(T, B, I, dtype=DT)
    hx = make_states(kind, 2 * D, B, H, P)
    masks = make_masks(kind, 2, D, T, B, H, P, "wrz")
    packed = pack_padded_sequence(x, lengths)
    kw = dict(masks=masks, training=True)
    if kind != "rnn":
        kw["layer_norm"] = lnps
    out, fin = ref_stack(kind, packed.data, hx, params, 2, reverse,
                         batch_sizes=packed.batch_sizes, **kw)
    assert out.shape == (sum(lengths), D * P)
    for b, n in enumerate(lengths):
        mb = [tuple(None if t is None else (t[b:b + 1] if i == 1 else
                                            t[:n, b:b + 1] if i >= 2 else t)
                    for i, t in enumerate(m)) for m in masks]
        e_out, e_fin = indep_stack(kind, x[:n, b:b + 1], [s[:, b:b + 1] for s in hx], params, 2,
                                   D, None if kind == "rnn" else lnps, mb)
        rows = [int(packed.batch_sizes[:t].sum()) + b for t in range(n)]
        assert_close(out[rows], e_out[:, 0])
        for f, e in zip(fin, e_fin):
            assert_close(f[:, b], e[:, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_batch_first_and_unbatched(kind):
    T, B, I = 4, 3, 4
    H, P = _sizes(kind)
    params, lnps = make_params(kind, 2, 2, I, H, P)
    x = torch.randn(T, B, I, dtype=DT)
    hx = make_states(kind, 4, B, H, P)
    masks = make_masks(kind, 2, 2, T, B, H, P, "wrz")
    kw = dict(masks=masks, training=True)
    if kind != "rnn":
        kw["layer_norm"] = lnps
    tm_out, tm_fin = ref_stack(kind, x, hx, params, 2, True, **kw)
    bf_out, bf_fin = ref_stack(kind, x.transpose(0, 1), hx, params, 2, True, batch_first=True,
                               **kw)
    assert torch.equal(bf_out, tm_out.transpose(0, 1))
    for a, b in zip(bf_fin, tm_fin):
        assert torch.equal(a, b)
    # unbatched: the masks of a batch of one
    one = [ref.LayerMasks(*(None if t is None else (t[:1] if i == 1 else t[:, :1] if i >= 2
                                                    else t) for i, t in enumerate(m)))
           for m in masks]
    kw["masks"] = one
    for batch_first in (False, True):
        ub_out, ub_fin = ref_stack(kind, x[:, 0], [s[:, 0] for s in hx], params, 2, True,
                                   batch_first=batch_first, **kw)
        b1_out, b1_fin = ref_stack(kind, x[:, :1], [s[:, :1] for s in hx], params, 2, True,
                                   **kw)
        assert ub_out.shape == (T, 2 * P)
        assert_close(ub_out, b1_out[:, 0])
        for a, b in zip(ub_fin, b1_fin):
            assert_close(a, b[:, 0])
    # unbatched training draws masks of batch one
    kw.pop("masks")
    torch.manual_seed(5)
    ub = ref_stack(kind, x[:, 0], None, params, 2, True, zoneout=0.3, recurrent_dropout=0.3,
                   **kw)[0]
    torch.manual_seed(5)
    b1 = ref_stack(kind, x[:, :1], None, params, 2, True, zoneout=0.3, recurrent_dropout=0.3,
                   **kw)[0]
    assert torch.equal(ub, b1[:, 0])


@pytest.mark.parametrize("kind", ["lstm_proj", "gru"])
def test_gradcheck(kind):
    """float64 gradcheck of the whole stack with every option on (small sizes): training
    masks, and the evaluation form of zoneout."""
    T, B, I, L = 3, 2, 3, 2
    H, P = (3, 2) if kind == "lstm_proj" else (3, 3)
    params, lnps = make_params(kind, L, 2, I, H, P)
    masks = make_masks(kind, L, 2, T, B, H, P, "wrz")
    x = torch.randn(T, B, I, dtype=DT, requires_grad=True)
    hx = make_states(kind, 2 * L, B, H, P)
    flat = [t for p in params for t in p if t is not None]
    flat_ln = [t for lnp in lnps for t in lnp]

    def structure(ts, counts):
        it = iter(ts)
        return [tuple(next(it) for _ in range(n)) for n in counts]

    p_counts = [sum(t is not None for t in p) for p in params]
    ln_counts = [len(lnp) for lnp in lnps]
    has_proj = kind == "lstm_proj"

    def fn(x, *rest):
        n_states = len(hx)
        states, rest = list(rest[:n_states]), rest[n_states:]
        ps, lns = rest[:len(flat)], rest[len(flat):]
        ps = [p + ((None,) if not has_proj else ()) for p in structure(ps, p_counts)]
        lns = structure(lns, ln_counts)
        results = []
        for kw in (dict(masks=masks, training=True), dict(zoneout=0.3)):
            out, fin = ref_stack(kind, x, states, ps, L, True, layer_norm=lns, **kw)
            results += [out, *fin]
        return tuple(results)

    assert torch.autograd.gradcheck(fn, (x, *hx, *flat, *flat_ln))


def test_bad_arguments():
    params, lnps = make_params("lstm", 2, 1, 3, 4, 4)
    x = torch.randn(3, 2, 3, dtype=DT)
    for name in ("zoneout", "recurrent_dropout", "weight_dropout"):
        for bad in (-0.1, 1.0, 1.5):
            with pytest.raises(ValueError, match=f"{name} probability has to be between 0 and 1"):
                ref.lstm(x, None, params, 2, False, False, training=True, **{name: bad})
    with pytest.raises(ValueError, match="masks are training-mode masks"):
        ref.lstm(x, None, params, 2, False, False, masks=[None, None])
    with pytest.raises(ValueError, match="masks: expected 2 entries"):
        ref.lstm(x, None, params, 2, False, False, masks=[None], training=True)
    with pytest.raises(ValueError, match="layer_norm: expected 2 entries"):
        ref.lstm(x, None, params, 2, False, False, layer_norm=lnps[:1])
    bad = [ref.LayerMasks(recurrent=torch.ones(3, 4)), None]
    with pytest.raises(ValueError, match=r"masks.recurrent: expected shape \(2, 4\), got \(3, 4\)"):
        ref.lstm(x, None, params, 2, False, False, masks=bad, training=True)
    gparams, _ = make_params("gru", 1, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="masks.zoneout_c: only the LSTM"):
        ref.gru(x, None, gparams, 1, False, False, training=True,
                masks=[ref.LayerMasks(zoneout_c=torch.zeros(3, 2, 4, dtype=torch.bool))])


def test_layer_norm_params_from_module():
    m = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    assert ref.layer_norm_params_from_module(m) is None
    for name, _ in list(m.named_parameters()):
        if name.startswith("weight_ih"):
            sfx = name[len("weight_ih"):]
            for ln_name, size in zip(ref.LAYER_NORM_NAMES, (16, 16, 4, 4)):
                m.register_parameter(ln_name + sfx, nn.Parameter(torch.randn(size)))
    got = ref.layer_norm_params_from_module(m)
    assert len(got) == 4
    assert got[1][0] is m.weight_ln_ih_l0_reverse
    assert got[2][3] is m.bias_ln_c_l1
    g = nn.GRU(3, 4)
    g.register_parameter("weight_ln_ih_l0", nn.Parameter(torch.ones(12)))
    g.register_parameter("weight_ln_hh_l0", nn.Parameter(torch.ones(12)))
    assert ref.layer_norm_params_from_module(g) == [(g.weight_ln_ih_l0, g.weight_ln_hh_l0)]
    cell = nn.GRUCell(3, 4)
    assert ref.cell_layer_norm_params_from_module(cell) is None
    cell.register_parameter("weight_ln_ih", nn.Parameter(torch.ones(12)))
    cell.register_parameter("weight_ln_hh", nn.Parameter(torch.ones(12)))
    assert ref.cell_layer_norm_params_from_module(cell) == (cell.weight_ln_ih, cell.weight_ln_hh)


def test_float32_masks_applied_in_input_dtype():
    """float32 and bfloat16 inputs keep their dtype (masks are converted)."""
    params, _ = make_params("lstm", 1, 1, 3, 4, 4)
    for dtype in (torch.float32, torch.bfloat16):
        p = [tuple(None if t is None else t.detach().to(dtype) for t in params[0])]
        x = torch.randn(3, 2, 3, dtype=dtype)
        out, (h, c) = ref.lstm(x, None, p, 1, False, False, training=True, zoneout=0.2,
                               recurrent_dropout=0.2, weight_dropout=0.2)
        assert out.dtype == h.dtype == c.dtype == dtype

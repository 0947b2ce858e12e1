"""LayerNorm LSTM and GRU: rnnfast's fused layer against what users write today.

    python -m bench.layernorm [--layers lstm,gru] [--shapes S,M,L,XL,B1,B4] [--modes infer,train]
                              [--repeats 5] [--out DIR]

One layer, one direction, float32, CPU, the benchmark grid (``I == H``), three ways:

* ``loop``: the layer-normalised cell as a plain PyTorch loop over the time steps, with
  ``torch.nn.LayerNorm`` modules (LSTM: over the 4H input and recurrent products and over the
  cell; GRU: over the 3H products), as the formulas of ``rnnfast/reference.py``;
* ``ln``: ``rnnfast.ops.lstm_layer`` / ``gru_layer`` with ``layer_norm=``, rnnfast's fused
  operators (what ``rnnfast.LSTM(..., layer_norm=True)`` runs per layer and direction);
* ``plain``: the same call without ``layer_norm``, rnnfast's ordinary layer.

Outputs (and, for training, every gradient) of ``ln`` are checked against ``loop`` before
anything is timed. Timing is interleaved (loop, ln, plain, ...), the minimum of the repeats.
Targets (docs/performance.md): ``loop / ln`` at least 5x at S, M, B1, B4 and 2x at L, XL;
``ln / plain`` (the cost of layer normalisation) at most 1.3x. A full default run writes
``docs/results/layernorm-cpu-<vendor>-<kernelset>.md``; anything else goes to ``bench_results/``.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from .grid import GRID_ORDER, GRID_SHAPES
from .machine import format_machine, load_average, machine_info
from .report import _header, output_dir, results_stem, write_text
from .util import log, markdown_table

#: Minimum loop / ln speedup per shape, and the largest ln / plain cost.
LOOP_TARGETS: Dict[str, float] = {"S": 5.0, "M": 5.0, "L": 2.0, "XL": 2.0, "B1": 5.0, "B4": 5.0}
COST_TARGET = 1.3
CHECK_STEPS = 20


def _params(kind: str, H: int, train: bool, dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(0)
    G = 4 if kind == "lstm" else 3
    k = H ** -0.5

    def u(*shape):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * k).to(dtype).requires_grad_(train)

    return dict(w_ih=u(G * H, H), w_hh=u(G * H, H), b_ih=u(G * H), b_hh=u(G * H))


class _LoopLayer(nn.Module):
    """The layer-normalised cell as users write it: nn.LayerNorm in a loop over steps."""

    def __init__(self, kind: str, H: int, p: dict, train: bool) -> None:
        super().__init__()
        G = 4 if kind == "lstm" else 3
        self.kind, self.p = kind, p
        self.ln_ih = nn.LayerNorm(G * H, bias=False)
        self.ln_hh = nn.LayerNorm(G * H, bias=False)
        self.ln_c = nn.LayerNorm(H) if kind == "lstm" else None
        self.requires_grad_(train)

    def ln_params(self) -> list:
        extra = [self.ln_c.weight, self.ln_c.bias] if self.ln_c is not None else []
        return [self.ln_ih.weight, self.ln_hh.weight] + extra

    def forward(self, x, h, c=None):
        p, ys = self.p, []
        for t in range(x.shape[0]):
            gx = self.ln_ih(F.linear(x[t], p["w_ih"])) + p["b_ih"]
            gh = self.ln_hh(F.linear(h, p["w_hh"])) + p["b_hh"]
            if self.kind == "lstm":
                i, f, g, o = (gx + gh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(self.ln_c(c))
            else:
                xr, xz, xn = gx.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            ys.append(h)
        return torch.stack(ys)


def _case(kind: str, shape: str, train: bool, dtype: torch.dtype = torch.float32,
          steps: int = 0):
    """{"loop", "ln", "plain"} callables returning the layer's output, and the leaves whose
    gradients training checks (the first ``steps`` steps only, if given)."""
    from rnnfast import ops

    s = GRID_SHAPES[shape]
    T, B, H = steps or s.T, s.B, s.H
    p = _params(kind, H, train, dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(s.T, B, H, generator=g)[:T].to(dtype).requires_grad_(train)
    h0 = torch.zeros(B, H, dtype=dtype)
    loop = _LoopLayer(kind, H, p, train).to(dtype)
    ln = loop.ln_params()
    layer = ops.lstm_layer if kind == "lstm" else ops.gru_layer
    states = (h0, torch.zeros(B, H, dtype=dtype)) if kind == "lstm" else (h0,)
    w = (p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"])
    fns = {
        "loop": lambda: loop(x, *states),
        "ln": lambda: layer(x, *states, *w, layer_norm=ln)[0],
        "plain": lambda: layer(x, *states, *w)[0],
    }
    return fns, [x, *w, *ln]


def _check(kind: str, shape: str, train: bool) -> None:
    """The fused layer against the loop, both in float32, over the first CHECK_STEPS steps,
    each measured against the loop in float64: the fused layer's error (outputs, and every
    gradient when training) must be within 4x the float32 loop's own. (Over hundreds of steps
    float32 rounding alone moves a layer-normalised recurrence by up to ~1e-2, the loop's and
    rnnfast's alike, which says nothing of either.)"""
    results = {}
    for name, dtype in (("fused", torch.float32), ("loop", torch.float32),
                        ("exact", torch.float64)):
        fns, leaves = _case(kind, shape, train, dtype, CHECK_STEPS)
        out = fns["ln" if name == "fused" else "loop"]()
        got = [out.detach().double()]
        if train:
            seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
            got += [gr.double() for gr in torch.autograd.grad(out, leaves, seed)]
        results[name] = got

    def error(name: str) -> float:
        return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                   for a, b in zip(results[name], results["exact"]))

    fused, loop = error("fused"), error("loop")
    if not fused <= 4 * loop + 1e-6:
        raise AssertionError(f"{kind} {shape}: rnnfast's LayerNorm layer is off by {fused:.2e} "
                             f"(relative, against float64), the float32 loop by {loop:.2e}")


def _time(fn: Callable[[], torch.Tensor], train: bool) -> float:
    start = time.perf_counter()
    out = fn()
    if train:
        out.sum().backward()
    return (time.perf_counter() - start) * 1e3


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="lstm,gru")
    ap.add_argument("--shapes", default=",".join(GRID_ORDER))
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    layers, shapes, modes = (a.split(",") for a in (args.layers, args.shapes, args.modes))
    full = (layers == ["lstm", "gru"] and shapes == list(GRID_ORDER)
            and modes == ["infer", "train"])
    info = machine_info("cpu")
    info["command"] = "python -m bench.layernorm " + " ".join(argv or sys.argv[1:])
    info["run"] = "LayerNorm grid" if full else "subset"
    info["date_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info["load_start"] = load_average()
    log(format_machine(info))
    rows, met, total = [], 0, 0
    for kind in layers:
        for mode in modes:
            train = mode == "train"
            for shape in shapes:
                with torch.set_grad_enabled(train):
                    _check(kind, shape, train)
                fns, _leaves = _case(kind, shape, train)
                with torch.set_grad_enabled(train):
                    for fn in fns.values():  # warm-up
                        _time(fn, train)
                    times: Dict[str, List[float]] = {k: [] for k in fns}
                    for _ in range(args.repeats):
                        for k, fn in fns.items():
                            times[k].append(_time(fn, train))
                best = {k: min(v) for k, v in times.items()}
                speedup, cost = best["loop"] / best["ln"], best["ln"] / best["plain"]
                ok_speed, ok_cost = speedup >= LOOP_TARGETS[shape], cost <= COST_TARGET
                met += ok_speed + ok_cost
                total += 2
                s = GRID_SHAPES[shape]
                rows.append([kind.upper(), mode, shape, f"{s.T}x{s.B}x{s.H}",
                             f"{best['loop']:.2f}", f"{best['ln']:.2f}", f"{best['plain']:.2f}",
                             f"{speedup:.2f}x" + ("" if ok_speed else " (NOT met)"),
                             f"{cost:.2f}x" + ("" if ok_cost else " (NOT met)")])
                log(f"{kind.upper()} {shape} {mode}: loop {best['loop']:.2f} ms, ln "
                    f"{best['ln']:.2f} ms, plain {best['plain']:.2f} ms -> loop/ln "
                    f"{speedup:.2f}x (target {LOOP_TARGETS[shape]}x), ln/plain {cost:.2f}x "
                    f"(target <= {COST_TARGET}x)")
    info["load_end"] = load_average()
    table = markdown_table(
        [["layer", "mode", "shape", "T×B×H", "loop ms", "rnnfast LN ms", "rnnfast plain ms",
          "loop / LN (target 5x S,M,B1,B4; 2x L,XL)", "LN / plain (target <= 1.3x)"]] + rows,
        right=range(4, 9))
    lines = _header("rnnfast LayerNorm LSTM/GRU vs a PyTorch loop with nn.LayerNorm, CPU", info)
    lines[2] = ("Written by `python -m bench.layernorm` from one run; rerun it to update this "
                "file rather than editing it.")
    lines += ["", "One layer, one direction, float32, I = H, 2 threads; minimum of the "
              "interleaved runs. loop: nn.LayerNorm modules in a Python loop over the steps; "
              "LN: rnnfast's fused layer with layer_norm; plain: rnnfast's layer without it. "
              "Outputs and gradients were checked against the loop before timing.", "", table,
              "", f"**{met} of {total} targets met.**", ""]
    text = "\n".join(lines)
    print(text)
    out = output_dir(args.out, full) / f"layernorm-{results_stem(info)}.md"
    write_text(out, text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

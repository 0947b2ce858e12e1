"""``python -m bench.gpu_model``: a MODEL (not a measurement) of the CUDA forward step time,
standard algorithm against the persistent kernel, on H100- and H200-class GPUs.

No machine this project runs on has a GPU, so until ``bench/gpu_check.sh`` has run on one,
this is what can be said about speed, and it is labelled as such. Per layer step (one
layer, one direction) of the forward pass:

* standard: the recurrent GEMM, a launch plus the larger of reading W_hh (from L2 when it
  fits, else HBM) and its FLOPs at the dtype's GEMM peak (fp32: CUDA cores, TF32 off;
  bf16: tensor cores), then the pointwise kernel, a launch plus its bytes from HBM;
* persistent: the plan the kernel really uses (``rnnfast.testing.emulator().persistent_plan``
  on the modelled device: units and blocks), per block the larger of its multiply-adds
  (float32: 128 a clock on CUDA cores; bfloat16: tensor cores, 16 x 16 x 16 tiles, rows
  padded to 16) and its shared-memory traffic (float32: both operands of every
  multiply-add; bfloat16: a tile of each per tile multiply; 128 bytes per clock per SM),
  plus the broadcast of h_{t-1} to every block
  through L2 (the bytes the emulator counts, tests/test_persistent_emulated.py), the grid
  syncs, and W_hh's one read from HBM spread over T = 100 steps.

Constants and where they come from are printed with the table; launch and grid-sync
latencies are assumptions, to be replaced by ``bench/gpu_check.sh`` measurements. Output:
``docs/results/gpu-model.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .util import log, markdown_table

DEVICES: Dict[str, Dict[str, float]] = {
    "H100 SXM": dict(sms=132, clock_ghz=1.98, fp32_tflops=66.9, bf16_tflops=989.4, hbm_tbs=3.35,
                     l2_tbs=7.0, l2_mb=50.0, smem_per_sm_kib=228, launch_us=2.0,
                     grid_sync_us=1.0),
    "H200 SXM": dict(sms=132, clock_ghz=1.98, fp32_tflops=66.9, bf16_tflops=989.4, hbm_tbs=4.8,
                     l2_tbs=7.0, l2_mb=50.0, smem_per_sm_kib=228, launch_us=2.0,
                     grid_sync_us=1.0),
}

SOURCES = """\
| constant | value | source |
|---|---|---|
| SMs, FP32 lanes per SM, clock | 132, 128, 1.98 GHz | H100 SXM5: glennklockwood.com/garden/processors/h100 (H200: the same GH100 die) |
| FP32 (CUDA cores), BF16 dense tensor | 66.9, 989.4 TFLOP/s | the same page's table of theoretical peaks |
| HBM bandwidth | 3.35 TB/s (H100 SXM), 4.8 TB/s (H200) | NVIDIA's product specifications, as tabulated e.g. by archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html and aiminingco.com/gpu/h200/specs |
| L2 size, L2 bandwidth | 50 MB, ~7 TB/s | size: the same H100 table; bandwidth: an approximate figure (inferenceengineering.tech hardware cheat sheet); Chips and Cheese measured H100 PCIe's L2 (chipsandcheese.com, "Nvidia's H100: Funny L2, and Tons of Bandwidth") |
| shared memory | 228 KiB per SM (227 KiB per block), 128 B per clock per SM | the H100 table above; 32 banks x 4 bytes a clock (CUDA Programming Guide), i.e. 33 TB/s over 132 SMs |
| kernel launch (back-to-back, on a stream) | 2 us | **assumed**, to be measured |
| grid sync (cooperative groups, 132 blocks) | 1 us | **assumed**, to be measured |
"""

KINDS = {"LSTM": (0, 4), "GRU": (1, 3), "RNN": (2, 1)}
ELEM = {"float32": 4, "bfloat16": 2}


def standard_step_us(dev: Dict[str, float], G: int, B: int, H: int, s: int, a: int) -> float:
    """The standard algorithm's recurrent GEMM and pointwise kernel, per step."""
    w_bytes = G * H * H * s
    flops = 2.0 * B * G * H * H
    peak = (dev["fp32_tflops"] if s == 4 else dev["bf16_tflops"]) * 1e12
    w_bw = (dev["l2_tbs"] if w_bytes <= dev["l2_mb"] * 1e6 else dev["hbm_tbs"]) * 1e12
    gemm = dev["launch_us"] + 1e6 * max(w_bytes / w_bw, flops / peak)
    # Pointwise: reads the step's two products (gx, gh) and state, writes state and output.
    pw_bytes = B * (2 * G * H * s + 2 * H * a + 2 * H * s)
    pointwise = dev["launch_us"] + 1e6 * pw_bytes / (dev["hbm_tbs"] * 1e12)
    return gemm + pointwise


def persistent_step_us(dev: Dict[str, float], plan: Dict[str, object], G: int, B: int, H: int,
                       s: int, T: int = 100) -> float:
    """The persistent kernel's step, from its plan. float32: CUDA cores, both operands of
    every multiply-add read from shared memory; bfloat16: tensor cores (16 x 16 x 16 tiles,
    rows padded to 16), a tile of each operand read per tile multiply."""
    clock = dev["clock_ghz"] * 1e9
    U, blocks = int(plan["U"]), int(plan["blocks"])
    smem_bw = 128 * clock  # bytes per second per SM
    if s == 4:
        macs = B * G * U * H               # one block's dot products of a step
        t_math = macs / (128 * clock)
        t_smem = macs * 2 * s / smem_bw
    else:
        tile = lambda n: -(-n // 16)  # noqa: E731
        mmas = tile(B) * tile(G * U) * tile(H)
        t_math = mmas * 16 ** 3 / (dev["bf16_tflops"] * 1e12 / 2 / dev["sms"])
        t_smem = (mmas * 2 * 256 * s + tile(B) * tile(G * U) * 256 * 4) / smem_bw
    bcast = blocks * B * H * s + B * G * H * s  # h_{t-1} to every block, the step's gx
    t_l2 = bcast / (dev["l2_tbs"] * 1e12)
    w_once = G * H * H * s / (dev["hbm_tbs"] * 1e12) / T
    return 1e6 * (max(t_math, t_smem) + t_l2 + w_once) + dev["grid_sync_us"]


def model_rows(device: str, layer: str, dtype: str, emulator) -> List[List[str]]:
    dev = DEVICES[device]
    kind, G = KINDS[layer]
    s = ELEM[dtype]
    Bs = (1, 2, 4, 8, 16, 32)
    rows = [["H \\ B"] + [str(b) for b in Bs]]
    for H in (64, 128, 256, 512, 1024):
        cells = [str(H)]
        for B in Bs:
            plan = emulator.persistent_plan(kind, s, B, H, H)
            std = standard_step_us(dev, G, B, H, s, 4)
            if not plan["ok"]:
                cells.append(f"{std:.1f} / - (does not fit)")
                continue
            per = persistent_step_us(dev, plan, G, B, H, s)
            mark = "**" if plan["auto"] else ""
            cells.append(f"{std:.1f} / {per:.1f} = {mark}{std / per:.2f}x{mark}")
        rows.append(cells)
    return rows


def summary(emulator, devices: Sequence[str]) -> List[str]:
    """Per device, layer and dtype: the predicted speedup at H = 64 (over B) and the smallest
    B at which the persistent kernel is predicted slower, per H (computed, not written)."""
    lines = []
    for device in devices:
        dev = DEVICES[device]
        for layer, (kind, G) in KINDS.items():
            for dtype, s in ELEM.items():
                parts = []
                for H in (64, 256, 1024):
                    slower = None
                    for B in (1, 2, 4, 8, 16, 32):
                        plan = emulator.persistent_plan(kind, s, B, H, H)
                        if not plan["ok"] or standard_step_us(dev, G, B, H, s, 4) < \
                                persistent_step_us(dev, plan, G, B, H, s):
                            slower = B
                            break
                    parts.append(f"H={H}: " + (f"standard from B={slower}" if slower
                                               else "persistent up to B=32"))
                lines.append(f"- {device}, {layer}, {dtype}: " + "; ".join(parts))
    return lines


def render(emulator, devices: Sequence[str]) -> str:
    out = [
        "# MODEL, not a measurement: CUDA forward step time, standard vs persistent",
        "",
        "Written by `python -m bench.gpu_model` (see its docstring for the model). No GPU has run "
        "these kernels yet; every number below is predicted from the kernels' plans and the "
        "byte counts the SIMT emulator verifies, with the constants listed. Replace it with "
        "`bash bench/gpu_check.sh` on a GPU.",
        "",
        "Each cell: microseconds per layer step, standard / persistent = predicted speedup of "
        "the persistent kernel (forward, one layer and direction, T = 100); **bold** where "
        "`rnnfast.cuda_algorithm(\"auto\")` takes the persistent kernel (its plan on this "
        "device model).",
        "",
        "## Constants",
        "",
        SOURCES,
    ]
    for device in devices:
        for layer in KINDS:
            for dtype in ELEM:
                out += [f"## {device}: {layer}, {dtype}", "",
                        markdown_table(model_rows(device, layer, dtype, emulator),
                                       right=range(1, 7)), ""]
    out += ["## Where the model puts the crossover", ""] + summary(emulator, devices) + [""]
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_model",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/gpu-model.md")
    args = ap.parse_args(argv)
    from rnnfast.testing import emulated_device, emulator

    emu = emulator()
    with emulated_device():
        text = render(emu, list(DEVICES))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

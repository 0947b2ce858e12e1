"""``python -m bench.gpu``: rnnfast's two CUDA forward algorithms against cuDNN, one table.

For each layer, mode, dtype and shape: torch.nn (cuDNN), rnnfast with the standard algorithm
and rnnfast with the persistent kernels (``rnnfast.cuda_algorithm``), each checked against
torch.nn first (the same check as ``python -m bench``), then timed interleaved with CUDA
events (median). Where the persistent kernel cannot run the shape, its column says why.
Shapes: the benchmark grid and batch 1, 2, 4, 8, 16, 32 at H 64-1024 (T = 100); dtypes
float32 (TF32 off) and bfloat16. ``bench/gpu_check.sh`` builds rnnfast for the GPU at hand,
runs the CUDA tests and this.

``--emulate`` runs the same script without a GPU, on CPU tensors through the SIMT emulator
(``rnnfast.testing.emulate_cuda``) and torch.nn's CPU kernels, at tiny sizes: it checks the
script and the kernels' correctness, and its times mean nothing (the table says so).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .check import check_correctness, make_pair
from .grid import GRID_ORDER, GRID_SHAPES, LAYERS, Shape, dtype_name
from .timing import make_runner, set_tf32, time_interleaved
from .util import first_lines, log, markdown_table

ALGORITHMS = ("standard", "persistent")


def gpu_shapes(quick: bool = False, emulate: bool = False) -> List[Shape]:
    """The grid, then batch 1-32 at H 64-1024 (T 100); tiny ones when emulating."""
    if emulate:
        return [Shape(f"T{t}B{b}H{h}", t, b, h) for t, b, h in ((4, 1, 8), (3, 5, 16))]
    small = [Shape(f"T100B{b}H{h}", 100, b, h) for h in (64, 256, 1024) for b in (1, 4, 32)] \
        if quick else \
        [Shape(f"T100B{b}H{h}", 100, b, h) for h in (64, 128, 256, 512, 1024)
         for b in (1, 2, 4, 8, 16, 32)]
    grid = [] if quick else [GRID_SHAPES[n] for n in GRID_ORDER]
    return grid + small


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


def _with_algorithm(rnnfast, name: str, runner: Tuple[Callable[[], None], Callable[[], None]]):
    prepare, run = runner

    def run_with() -> None:
        with rnnfast.cuda_algorithm(name):
            run()

    return prepare, run_with


def measure(spec, mode: str, shape: Shape, dtype: torch.dtype, device: str, repeats: int,
            min_time: float) -> Dict[str, object]:
    """One row: median seconds of torch.nn and of each algorithm, or why there is none."""
    import rnnfast

    row: Dict[str, object] = dict(layer=spec.name, mode=mode, shape=shape.name,
                                  dtype=dtype_name(dtype))
    ref, fast, x = make_pair(spec, shape, mode, device, dtype)
    runners = [make_runner(ref, x, mode)]
    names = ["cudnn"]
    for alg in ALGORITHMS:
        try:
            with rnnfast.cuda_algorithm(alg):
                check_correctness(spec, ref, fast, x, mode)
        except RuntimeError as e:  # the persistent kernel refused the shape
            row[alg] = "n/a: " + first_lines(str(e), 1).split("persistent kernel: ")[-1][:90]
            continue
        except AssertionError as e:
            row[alg] = "FAILED: " + first_lines(str(e), 1)[:90]
            continue
        runners.append(_with_algorithm(rnnfast, alg, make_runner(fast, x, mode)))
        names.append(alg)
    samples = time_interleaved(runners, device, warmup=2, repeats=repeats, min_time=min_time,
                               max_wall=2.0)
    for name, s in zip(names, samples):
        row[name] = statistics.median(s)
    return row


def _ms(v: object) -> str:
    return f"{v * 1e3:.3f}" if isinstance(v, float) else str(v)


def table(rows: Sequence[Dict[str, object]]) -> str:
    head = ["layer", "mode", "dtype", "shape", "cuDNN ms", "standard ms", "persistent ms",
            "cuDNN / persistent", "standard / persistent"]
    body = [head]
    for r in rows:
        p, s, c = r.get("persistent"), r.get("standard"), r.get("cudnn")
        ratio = (lambda a: f"{a / p:.2f}x" if isinstance(a, float) and isinstance(p, float)
                 else "-")
        body.append([r["layer"], r["mode"], r["dtype"], r["shape"], _ms(c), _ms(s), _ms(p),
                     ratio(c), ratio(s)])
    return markdown_table(body, right=range(4, 9))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulate", action="store_true",
                    help="no GPU: run in the SIMT emulator at tiny sizes (times mean nothing)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer shapes (H 64, 256, 1024; B 1, 4, 32)")
    ap.add_argument("--layers", default="lstm,gru,rnn")
    ap.add_argument("--modes", default="infer,train")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--out", default="bench_results",
                    help="directory for gpu-<device>.md (default bench_results/)")
    args = ap.parse_args(argv)
    import rnnfast

    if args.emulate:
        from rnnfast.testing import emulate_cuda

        device, scope, label = "cpu", emulate_cuda(), "emulated"
    else:
        if not torch.cuda.is_available():
            log("skipping: no CUDA device (torch.cuda.is_available() is False); "
                "--emulate runs the script in the SIMT emulator")
            return 0
        device, scope = "cuda", _nothing()
        label = torch.cuda.get_device_name().replace(" ", "-")
        set_tf32(False)
    layers = {s.key: s for s in LAYERS}
    specs = [layers[k] for k in args.layers.split(",")]
    modes = args.modes.split(",")
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    shapes = gpu_shapes(args.quick, args.emulate)
    cells = [(s, m, d, sh) for s in specs for m in modes for d in dtypes for sh in shapes]
    rows: List[Dict[str, object]] = []
    t0 = time.perf_counter()
    with scope:
        for i, (spec, mode, dtype, shape) in enumerate(cells, 1):
            row = measure(spec, mode, shape, dtype, device, args.repeats, args.min_time)
            rows.append(row)
            log(f"[{i}/{len(cells)}] {spec.name} {mode} {dtype_name(dtype)} {shape.name}: "
                f"cuDNN {_ms(row.get('cudnn'))}, standard {_ms(row.get('standard'))}, "
                f"persistent {_ms(row.get('persistent'))} ms  [{time.perf_counter() - t0:.0f}s]")
    title = ("EMULATED (SIMT emulator on the CPU, torch.nn on the CPU): these times are NOT GPU "
             "times; the run checks the script and the kernels' results only"
             if args.emulate else f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, TF32 off; median of CUDA-event times")
    text = (f"# rnnfast on CUDA: cuDNN, standard and persistent\n\n- device: {title}\n"
            f"- rnnfast build: {rnnfast.build_info()}\n- command: `python -m bench.gpu "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n{table(rows)}\n")
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu-{label}.md").write_text(text)
    log(f"wrote {out / f'gpu-{label}.md'}")
    failed = [r for r in rows if any(str(r.get(a, "")).startswith("FAILED") for a in ALGORITHMS)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

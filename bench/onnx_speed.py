"""``--onnx``: an rnnfast model exported to ONNX, run in ONNX Runtime next to torch.nn's export.

rnnfast's layers export to the standard ONNX ``LSTM`` / ``GRU`` / ``RNN`` nodes
(docs/deployment.md, ONNX). This run measures what that means for a user who deploys with
ONNX Runtime. For each layer kind it builds a small model, ``Linear(I→H)`` → 2-layer layer
(time-major) → ``Linear(H→I)``, as a torch.nn model and as ``rnnfast.convert`` of a deep copy
(the same weights), both in ``eval()`` mode, and exports both with each exporter
(``dynamo=False`` with ``dynamic_axes``, ``dynamo=True`` with ``dynamic_shapes``; T and B
dynamic) to a temporary directory. Default sizes: T=50, B=8, I=32, H=64 (``--quick``: T=10,
B=2, I=8, H=16).

Correctness first: each exported model runs in ONNX Runtime at the exported shape and at
another T and B (where its graph keeps that axis dynamic: torch.nn's ``dynamo=True`` export of
``nn.RNN`` unrolls the time loop for the traced length, so it runs at the exported T only, and
the table says so), and every output is compared with torch.nn's eager output (float32, atol
2e-5). A row whose check fails is FAILED and not timed.

Timing: one ``InferenceSession`` per model (CPU execution provider, ``intra_op_num_threads`` =
``--threads``, both sessions alive), called alternately (torch.nn's, rnnfast's, ...) after a
warm-up, for a time budget per row; the *median* per call is reported, and ``ratio = torch.nn
export / rnnfast export`` (above 1: rnnfast's export runs faster).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .grid import LayerSpec, import_rnnfast
from .timing import time_interleaved
from .util import first_lines, markdown_table

__all__ = ["OnnxSizes", "OnnxResult", "EXPORTERS", "DEFAULT_SIZES", "QUICK_SIZES", "ATOL", "SmallModel",
           "make_models", "export_onnx", "graph_summary", "check_input", "measure_onnx", "format_onnx_table",
           "onnx_summary", "onnx_caption"]

#: The exporters, by CLI name: ``dynamo=False`` (TorchScript-based) and ``dynamo=True``.
EXPORTERS = ("legacy", "dynamo")

#: Absolute tolerance of the check against torch.nn's eager output (float32).
ATOL = 2e-5

#: The recurrent ONNX node types.
_RECURRENT = ("LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class OnnxSizes:
    """Sequence length, batch, model input/output width, hidden size, recurrent layers."""

    T: int
    B: int
    I: int  # noqa: E741 - torch.nn's name
    H: int
    layers: int = 2

    @property
    def check_T(self) -> int:
        """The other sequence length the check runs at."""
        return self.T + self.T // 2 + 1

    @property
    def check_B(self) -> int:
        """The other batch the check runs at."""
        return self.B + 3


DEFAULT_SIZES = OnnxSizes(T=50, B=8, I=32, H=64)
QUICK_SIZES = OnnxSizes(T=10, B=2, I=8, H=16)


@dataclass
class OnnxResult:
    """One (layer, exporter) row; times are medians in seconds."""

    layer: str
    exporter: str
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    status: str = "ok"  # ok, FAILED (check), ERROR (rnnfast's export or run), skipped (torch.nn's export)
    message: str = ""
    torch_graph: str = ""
    fast_graph: str = ""
    torch_checked: List[Tuple[int, int]] = field(default_factory=list)
    fast_checked: List[Tuple[int, int]] = field(default_factory=list)
    torch_fixed_T: bool = False
    fast_fixed_T: bool = False
    max_abs_err: Dict[str, float] = field(default_factory=dict)
    torch_s: Optional[float] = None
    fast_s: Optional[float] = None
    runs: int = 0

    @property
    def ratio(self) -> Optional[float]:
        """torch.nn export time / rnnfast export time (above 1: rnnfast's is faster)."""
        if self.torch_s and self.fast_s:
            return self.torch_s / self.fast_s
        return None

    @property
    def label(self) -> str:
        return f"{self.layer} {self.exporter}"


class SmallModel(nn.Module):
    """``Linear(I→H)`` → ``layers``-layer recurrent layer (time-major) → ``Linear(H→I)``."""

    def __init__(self, kind: str, sizes: OnnxSizes):
        super().__init__()
        self.inp = nn.Linear(sizes.I, sizes.H)
        extra = {"nonlinearity": "tanh"} if kind == "RNN" else {}
        self.rnn = getattr(nn, kind)(sizes.H, sizes.H, num_layers=sizes.layers, batch_first=False, **extra)
        self.out = nn.Linear(sizes.H, sizes.I)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.inp(x))
        return self.out(y)


def make_models(spec: LayerSpec, sizes: OnnxSizes, seed: int) -> Tuple[nn.Module, nn.Module]:
    """(torch.nn model, ``rnnfast.convert`` of a deep copy of it), both in ``eval()`` mode."""
    rnnfast = import_rnnfast()
    torch.manual_seed(seed)
    ref = SmallModel(spec.name, sizes).eval()
    fast = rnnfast.convert(copy.deepcopy(ref)).eval()
    if type(fast.rnn).__module__.split(".")[0] != "rnnfast":
        raise RuntimeError(f"rnnfast.convert left {type(fast.rnn).__qualname__} in place")
    return ref, fast


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporters' warnings and log lines (e.g. optional packages not installed)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, x: torch.Tensor, exporter: str, path: str) -> None:
    """Export ``model`` (called on ``x``, shape ``[T, B, I]``) to ``path`` with T and B dynamic."""
    with _quiet_export(), torch.no_grad():
        if exporter == "dynamo":
            dims = {n: torch.export.Dim(n, min=1) for n in ("T", "B")}
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                                        dynamic_shapes=({0: dims["T"], 1: dims["B"]},), verbose=False)
            program.save(path)
        elif exporter == "legacy":
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}})
        else:
            raise ValueError(f"unknown exporter {exporter!r}; use {','.join(EXPORTERS)}")


def graph_summary(path: str) -> Tuple[str, bool, bool]:
    """``(description, T fixed, B fixed)`` of the ONNX graph at ``path``: its recurrent nodes
    (``LSTM x2``) or, with none, the unrolled loop (``unrolled MatMul/Tanh``); the node count."""
    import onnx  # noqa: PLC0415 - only this mode needs it

    proto = onnx.load(path, load_external_data=False)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    # An axis is fixed when the input or the output declares a number for it: torch.nn's
    # dynamo=True export of an LSTM/GRU keeps the input's T symbolic but reshapes its output
    # to the traced T (and declares the output so).
    ins = list(proto.graph.input[0].type.tensor_type.shape.dim)
    outs = list(proto.graph.output[0].type.tensor_type.shape.dim)
    fixed = [next((d.dim_value for d in (ins[a:a + 1] + outs[a:a + 1]) if d.HasField("dim_value")), None)
             for a in (0, 1)]
    fixed_T, fixed_B = fixed[0] is not None, fixed[1] is not None
    rec = [f"{op} x{ops[op]}" for op in _RECURRENT if ops.get(op)]
    if rec:
        text = ", ".join(rec)
    else:
        acts = [op for op in ("Tanh", "Relu", "Sigmoid") if ops.get(op)]
        text = "unrolled MatMul/" + "/".join(acts or ["?"])
    text += f" ({sum(ops.values())} nodes"
    if fixed_T:
        text += f", T fixed at {fixed[0]}"
    if fixed_B:
        text += f", B fixed at {fixed[1]}"
    return text + ")", fixed_T, fixed_B


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort  # noqa: PLC0415 - only this mode needs it

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(0, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def check_input(sizes: OnnxSizes, T: int, B: int, seed: int) -> torch.Tensor:
    """The input a check runs on, ``[T, B, I]`` (torch.nn's eager output on it is the reference)."""
    g = torch.Generator().manual_seed(seed + 1000 * T + B)
    return torch.randn(T, B, sizes.I, generator=g)


def _check(sess: Any, ref: nn.Module, sizes: OnnxSizes, shapes: Sequence[Tuple[int, int]],
           seed: int) -> float:
    """Run ``sess`` at each (T, B) of ``shapes`` and compare with torch.nn's eager output;
    returns the largest absolute difference, raises AssertionError past :data:`ATOL`."""
    worst = 0.0
    for T, B in shapes:
        x = check_input(sizes, T, B, seed)
        with torch.no_grad():
            want = ref(x)
        got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
        if got.shape != want.shape:
            raise AssertionError(f"at T={T}, B={B}: output shape {tuple(got.shape)}, torch.nn {tuple(want.shape)}")
        err = float((got - want).abs().max())
        worst = max(worst, err)
        if not err <= ATOL:
            raise AssertionError(f"at T={T}, B={B}: largest abs(ORT - torch.nn eager) = {err:.3g} > atol {ATOL:g}")
    return worst


def _check_shapes(sizes: OnnxSizes, fixed_T: bool, fixed_B: bool) -> List[Tuple[int, int]]:
    """The exported shape, then another T and B where the graph keeps them dynamic."""
    other = (sizes.T if fixed_T else sizes.check_T, sizes.B if fixed_B else sizes.check_B)
    return [(sizes.T, sizes.B)] + ([other] if other != (sizes.T, sizes.B) else [])


def measure_onnx(
    specs: Sequence[LayerSpec],
    exporters: Sequence[str] = EXPORTERS,
    sizes: OnnxSizes = DEFAULT_SIZES,
    threads: int = 2,
    seed: int = 0,
    warmup: int = 5,
    repeats: int = 20,
    min_time: float = 0.75,
    log: Callable[[str], None] = print,
) -> List[OnnxResult]:
    """Every (layer, exporter) row: export both models, check both in ONNX Runtime against
    torch.nn's eager output, then time both sessions interleaved (medians)."""
    cells = [(spec, exp) for spec in specs for exp in exporters]
    out: List[OnnxResult] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rnnfast-onnx-") as tmp:
        for i, (spec, exporter) in enumerate(cells, 1):
            r = OnnxResult(layer=spec.name, exporter=exporter, T=sizes.T, B=sizes.B, I=sizes.I, H=sizes.H)
            sessions: Dict[str, Any] = {}
            try:
                ref, fast = make_models(spec, sizes, seed)
                x = check_input(sizes, sizes.T, sizes.B, seed)
                for who, model in (("torch", ref), ("rnnfast", fast)):
                    path = os.path.join(tmp, f"{spec.key}-{exporter}-{who}.onnx")
                    try:
                        export_onnx(model, x, exporter, path)
                    except Exception as e:  # noqa: BLE001
                        what = f"{'torch.nn' if who == 'torch' else 'rnnfast'}'s export failed: " \
                               f"{type(e).__name__}: {first_lines(str(e), 2)}"
                        # Nothing to compare against when torch.nn's own export fails.
                        r.status = "skipped" if who == "torch" else "ERROR"
                        r.message = what
                        break
                    desc, fixed_T, fixed_B = graph_summary(path)
                    sessions[who] = _session(path, threads)
                    shapes = _check_shapes(sizes, fixed_T, fixed_B)
                    if who == "torch":
                        r.torch_graph, r.torch_fixed_T, r.torch_checked = desc, fixed_T, shapes
                    else:
                        r.fast_graph, r.fast_fixed_T, r.fast_checked = desc, fixed_T, shapes
                    try:
                        r.max_abs_err[who] = _check(sessions[who], ref, sizes, shapes, seed)
                    except AssertionError as e:
                        r.status = "FAILED"
                        r.message = (f"{'torch.nn' if who == 'torch' else 'rnnfast'}'s export: "
                                     f"{first_lines(str(e), 3) or 'mismatch'}")
            except Exception as e:  # noqa: BLE001 - report, do not crash the whole run
                r.status, r.message = "ERROR", f"{type(e).__name__}: {first_lines(str(e), 3)}"
            if r.status == "ok":
                feed = {"x": x.numpy()}
                runners = [(_noop, _caller(sessions["torch"], feed)), (_noop, _caller(sessions["rnnfast"], feed))]
                samples = time_interleaved(runners, "cpu", warmup, repeats, min_time, max_repeats=100_000,
                                           max_wall=max(1.0, 3.0 * min_time))
                r.torch_s, r.fast_s = (statistics.median(s) for s in samples)
                r.runs = len(samples[0])
                detail = (f"torch.nn export {r.torch_s * 1e3:.3f} ms, rnnfast export {r.fast_s * 1e3:.3f} ms, "
                          f"ratio {r.ratio:.2f} ({r.runs} runs each; {r.torch_graph} vs {r.fast_graph})")
            else:
                detail = f"{r.status}: {r.message}"
            sessions.clear()
            out.append(r)
            log(f"[{i}/{len(cells)}] {r.label} ... {detail}  [{time.perf_counter() - t_start:.1f}s]")
    return out


def _noop() -> None:
    return None


def _caller(sess: Any, feed: Dict[str, Any]) -> Callable[[], None]:
    def run() -> None:
        sess.run(None, feed)
    return run


def _shapes_text(shapes: Sequence[Tuple[int, int]], fixed_T: bool) -> str:
    return ", ".join(f"{T}×{B}" for T, B in shapes) + (" (T fixed)" if fixed_T else "")


def format_onnx_table(results: Sequence[OnnxResult]) -> str:
    """Markdown table: graphs, where each was checked, median ms of each export and the ratio."""
    head = ["layer", "exporter", "T×B×I×H", "torch.nn graph", "rnnfast graph", "checked at T×B (torch.nn; rnnfast)",
            "torch.nn ms", "rnnfast ms", "ratio", "status"]
    rows = [head]
    for r in results:
        dims = f"{r.T}×{r.B}×{r.I}×{r.H}"
        checked = ""
        if r.torch_checked or r.fast_checked:
            checked = (f"{_shapes_text(r.torch_checked, r.torch_fixed_T) or '-'}; "
                       f"{_shapes_text(r.fast_checked, r.fast_fixed_T) or '-'}")
        if r.status != "ok":
            rows.append([r.layer, r.exporter, dims, r.torch_graph or "-", r.fast_graph or "-", checked or "-",
                         "-", "-", "-", f"{r.status}: {r.message}".replace("|", "\\|")])
            continue
        rows.append([r.layer, r.exporter, dims, r.torch_graph, r.fast_graph, checked,
                     f"{r.torch_s * 1e3:.3f}", f"{r.fast_s * 1e3:.3f}", f"{r.ratio:.2f}", "ok"])
    return markdown_table(rows, right=range(6, 9))


def onnx_summary(results: Sequence[OnnxResult]) -> str:
    """How many rows were checked and timed, the range of the ratios, the rows that were not."""
    done = [r for r in results if r.ratio is not None]
    parts = [f"{len(done)} of {len(results)} rows checked and timed"]
    if done:
        lo, hi = min(r.ratio for r in done), max(r.ratio for r in done)
        parts.append(f"ratio torch.nn export / rnnfast export {lo:.2f}" + (f" to {hi:.2f}" if len(done) > 1 else ""))
    for status in ("FAILED", "ERROR", "skipped"):
        n = sum(1 for r in results if r.status == status)
        if n:
            parts.append(f"{n} {status}")
    return "; ".join(parts)


def onnx_caption(sizes: OnnxSizes, threads: int, ort_version: str) -> str:
    """What the table shows, and how it was measured."""
    return (f"Model: Linear({sizes.I}→{sizes.H}) → {sizes.layers}-layer LSTM, GRU or RNN (tanh) (time-major, hidden "
            f"{sizes.H}) → "
            f"Linear({sizes.H}→{sizes.I}), float32, torch.nn and `rnnfast.convert` of a deep copy (same weights), "
            f"exported at T={sizes.T}, B={sizes.B} with T and B dynamic. Each export is first run in ONNX Runtime "
            f"{ort_version} at the shapes under \"checked at\" and compared with torch.nn's eager output "
            f"(atol {ATOL:g}); a graph whose input or output declares a fixed T (\"T fixed\") is checked at the "
            f"exported T only. Then both sessions (CPU "
            f"execution provider, intra_op_num_threads={threads}) are called alternately; ms = median per call "
            f"at T={sizes.T}, B={sizes.B}; ratio = torch.nn export / rnnfast export (above 1: rnnfast's is faster).")

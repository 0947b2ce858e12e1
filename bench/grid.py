"""What is benchmarked: layers, modes, shapes, CPU speedup targets and the FLOP formula.

All of it is data, with docs/performance.md as the source. The layer list (:data:`LAYERS`) decides what
runs: a layer is benchmarked as soon as ``rnnfast`` exports a class of that name with
``torch.nn``'s interface; until then it is skipped with a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "LayerSpec", "Shape", "LAYERS", "MODES", "GRID_ORDER", "GRID_SHAPES", "QUICK_SHAPES",
    "SMALL_BATCH_SHAPES", "TARGETS", "EFFICIENCY_TARGET", "DTYPES", "dtype_name", "import_rnnfast",
    "rnnfast_class", "available_layers", "get_layer", "resolve_layers", "resolve_shapes", "flops",
    "target_for", "is_full_grid",
]


@dataclass(frozen=True)
class LayerSpec:
    """One recurrent layer type.

    ``name`` is the class name both in ``torch.nn`` and in ``rnnfast`` (``"LSTM"``); ``key``
    is its lower-case CLI name; ``gates`` is G in the FLOP formula; ``has_cell_state`` says
    whether the returned state is ``(h_n, c_n)`` rather than ``h_n``.
    """

    key: str
    name: str
    gates: int
    has_cell_state: bool = False

    def torch_class(self) -> type:
        """The ``torch.nn`` baseline class."""
        return getattr(nn, self.name)


#: Every layer rnnfast is meant to provide. Adding one here is all it takes to benchmark it.
LAYERS: Tuple[LayerSpec, ...] = (
    LayerSpec("lstm", "LSTM", gates=4, has_cell_state=True),
    LayerSpec("gru", "GRU", gates=3),
    LayerSpec("rnn", "RNN", gates=1),
)

#: Benchmark modes: ``infer`` = forward under no_grad, ``train`` = forward + backward.
MODES: Tuple[str, ...] = ("infer", "train")


@dataclass(frozen=True)
class Shape:
    """A problem size: T steps, B batch, H hidden (input size I == H), one layer, time-major.

    ``grid`` is the benchmark grid (docs/performance.md) name this shape is (or was scaled down from); ``quick`` marks
    the scaled-down smoke-test variants, to which no speedup target applies.
    """

    name: str
    T: int
    B: int
    H: int
    grid: Optional[str] = None
    quick: bool = False

    @property
    def I(self) -> int:  # noqa: E743 - the paper's letter
        """Input size; docs/performance.md fixes I == H."""
        return self.H

    @property
    def dims(self) -> str:
        """``T200 B16 H128``-style description."""
        return f"T{self.T} B{self.B} H{self.H}"


def _shape_table(rows: Iterable[Tuple[str, int, int, int]], quick: bool = False) -> Dict[str, Shape]:
    return {
        n: Shape(("q" + n) if quick else n, t, b, h, grid=n, quick=quick) for n, t, b, h in rows
    }


#: The benchmark grid.
GRID_SHAPES: Dict[str, Shape] = _shape_table(
    [
        ("S", 200, 16, 128),
        ("M", 100, 64, 256),
        ("L", 100, 64, 512),
        ("XL", 50, 128, 1024),
        ("B1", 100, 1, 256),
        ("B4", 100, 4, 512),
    ]
)

#: Scaled-down variants of the grid for ``--quick`` (smoke tests, CI). Same names, prefixed q.
QUICK_SHAPES: Dict[str, Shape] = _shape_table(
    [
        ("S", 50, 8, 32),
        ("M", 25, 16, 64),
        ("L", 25, 16, 128),
        ("XL", 12, 32, 256),
        ("B1", 25, 1, 64),
        ("B4", 25, 4, 128),
    ],
    quick=True,
)

#: docs/performance.md's extra GPU grid: batch 1-8, H 64-1024 (T = 100). Named like ``T100B2H128``.
SMALL_BATCH_SHAPES: Dict[str, Shape] = {
    f"T100B{b}H{h}": Shape(f"T100B{b}H{h}", 100, b, h)
    for b in (1, 2, 4, 8)
    for h in (64, 128, 256, 512, 1024)
}

#: The grid shapes in report order.
GRID_ORDER: Tuple[str, ...] = ("S", "M", "L", "XL", "B1", "B4")

#: docs/performance.md CPU speedup targets: (layer name, mode) -> {grid shape name: minimum speedup}.
TARGETS: Dict[Tuple[str, str], Dict[str, float]] = {
    (layer, mode): dict(zip(GRID_ORDER, values))
    for layer, mode, values in [
        ("LSTM", "train", (1.3, 1.3, 1.3, 1.3, 1.3, 1.3)),
        ("LSTM", "infer", (1.2, 1.2, 1.0, 1.0, 2.0, 2.0)),
        ("GRU", "train", (2.0, 1.3, 1.3, 1.3, 2.0, 2.0)),
        ("GRU", "infer", (2.0, 1.2, 1.2, 1.2, 2.0, 2.0)),
        ("RNN", "train", (2.0, 1.3, 1.3, 1.3, 2.0, 2.0)),
        ("RNN", "infer", (2.0, 1.2, 1.2, 1.2, 2.0, 2.0)),
    ]
}

#: docs/performance.md, bfloat16 (both sides in bfloat16), on CPUs with AMX-BF16 only; the same
#: for both modes.
BF16_TARGETS: Dict[str, Dict[str, float]] = {
    layer: dict(zip(GRID_ORDER, values))
    for layer, values in [
        ("LSTM", (1.3, 1.0, 1.0, 1.0, 1.3, 1.3)),
        ("GRU", (2.0, 1.3, 1.3, 1.3, 2.0, 2.0)),
        ("RNN", (2.0, 1.3, 1.3, 1.3, 2.0, 2.0)),
    ]
}


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU reports AMX-BF16 (``amx_bf16`` in /proc/cpuinfo; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for ln in f:
                if ln.startswith("flags"):
                    return "amx_bf16" in ln.split()
    except OSError:
        pass
    return False


#: docs/performance.md: at L and XL rnnfast should reach >= 70% of the measured float32 GEMM peak.
EFFICIENCY_TARGET: Tuple[Tuple[str, ...], float] = (("L", "XL"), 0.70)

#: dtypes by CLI name.
DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------------
# Layer lookup.
# --------------------------------------------------------------------------------------------


def import_rnnfast() -> Any:
    """The ``rnnfast`` package (imported on first use, so that this data is usable alone)."""
    import rnnfast  # noqa: PLC0415 - imported lazily so this module's data is usable alone

    return rnnfast


def rnnfast_class(spec: LayerSpec) -> Optional[type]:
    """rnnfast's class for ``spec`` (e.g. ``rnnfast.LSTM``), or None if it does not exist yet."""
    return getattr(import_rnnfast(), spec.name, None)


def available_layers() -> List[LayerSpec]:
    """The entries of :data:`LAYERS` that rnnfast currently provides."""
    return [s for s in LAYERS if rnnfast_class(s) is not None]


def get_layer(key: str) -> LayerSpec:
    """Look a layer up by CLI key (``lstm``) or class name (``LSTM``)."""
    for spec in LAYERS:
        if key.lower() in (spec.key, spec.name.lower()):
            return spec
    raise KeyError(f"unknown layer {key!r}; known: {', '.join(s.key for s in LAYERS)}")


def resolve_layers(keys: Optional[Sequence[str]]) -> List[LayerSpec]:
    """Turn CLI layer keys into specs (all of :data:`LAYERS` when ``keys`` is None)."""
    if not keys:
        return list(LAYERS)
    return [get_layer(k) for k in keys]


def resolve_shapes(names: Optional[Sequence[str]], quick: bool = False, device: str = "cpu") -> List[Shape]:
    """Turn CLI shape names into shapes.

    Accepts grid names (``S,M,L,XL,B1,B4``; with ``quick`` they mean the scaled-down
    variants), the aliases ``grid``, ``small-batch`` (docs/performance.md's GPU grid of batch 1-8 and
    H 64-1024) and ``all``, and explicit sizes written ``T100B8H256``. The default is the grid,
    plus ``small-batch`` on CUDA (not in quick mode).
    """
    grid = QUICK_SHAPES if quick else GRID_SHAPES
    if not names:
        names = ["grid"] + (["small-batch"] if device == "cuda" and not quick else [])
    out: List[Shape] = []
    for raw in names:
        n = raw.strip()
        if not n:
            continue
        key = n.upper()
        if n.lower() == "grid":
            out.extend(grid[g] for g in GRID_ORDER)
        elif n.lower() in ("small-batch", "smallbatch"):
            out.extend(SMALL_BATCH_SHAPES.values())
        elif n.lower() == "all":
            out.extend(grid[g] for g in GRID_ORDER)
            out.extend(SMALL_BATCH_SHAPES.values())
        elif key in grid:
            out.append(grid[key])
        elif key.startswith("Q") and key[1:] in QUICK_SHAPES:
            out.append(QUICK_SHAPES[key[1:]])
        else:
            m = re.fullmatch(r"T(\d+)B(\d+)H(\d+)", key)
            if not m:
                raise ValueError(
                    f"unknown shape {raw!r}: use {','.join(GRID_ORDER)}, grid, small-batch, all "
                    "or T<steps>B<batch>H<hidden>"
                )
            t, b, h = (int(v) for v in m.groups())
            out.append(Shape(f"T{t}B{b}H{h}", t, b, h))
    # keep order, drop duplicates
    seen: set = set()
    return [s for s in out if not (s in seen or seen.add(s))]


def flops(spec: LayerSpec, shape: Shape, mode: str) -> float:
    """docs/performance.md FLOP count of one call: ``2*T*B*G*H*(I+H)``, times 3 for ``train``."""
    fwd = 2.0 * shape.T * shape.B * spec.gates * shape.H * (shape.I + shape.H)
    return fwd * (3.0 if mode == "train" else 1.0)


def target_for(spec: LayerSpec, mode: str, shape: Shape, device: str, dtype: torch.dtype,
               amx: Optional[bool] = None) -> Optional[float]:
    """The docs/performance.md speedup target for a cell, or None where none applies.

    Targets exist for the CPU and the full-size grid shapes only: float32 on every CPU, and
    bfloat16 on CPUs with AMX-BF16 (``amx``; default: this CPU's flags).
    """
    if device != "cpu" or shape.quick or shape.grid is None:
        return None
    if dtype == torch.bfloat16:
        if not (cpu_has_amx_bf16() if amx is None else amx):
            return None
        return BF16_TARGETS.get(spec.name, {}).get(shape.grid)
    if dtype != torch.float32:
        return None
    return TARGETS.get((spec.name, mode), {}).get(shape.grid)


def is_full_grid(specs: Sequence[LayerSpec], modes: Sequence[str], shapes: Sequence[Shape],
                 dtypes: Sequence[torch.dtype], device: str = "cpu") -> bool:
    """True for the whole docs/performance.md CPU grid: every layer of :data:`LAYERS`, both modes, the six
    full-size grid shapes, float32 only or bfloat16 only, on the CPU (the runs whose results go to
    ``docs/``)."""
    return (device == "cpu"
            and {s.key for s in specs} == {s.key for s in LAYERS}
            and set(modes) == set(MODES)
            and {s.name for s in shapes} == set(GRID_ORDER) and not any(s.quick for s in shapes)
            and list(dtypes) in ([torch.float32], [torch.bfloat16]))

"""The speedup plot: grouped bars per layer × mode, targets as red ticks (needs matplotlib)."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

from .grid import MODES
from .timing import CellResult

__all__ = ["plot_results"]


def plot_results(results: Sequence[CellResult], path: str, title: str = "") -> bool:
    """Save grouped speedup bars (one panel per layer × mode; groups = shapes, bars = dtypes).

    The target of each shape is drawn as a red tick, 1.0 as a dashed line. Returns False,
    with a message on stderr, when matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: PLC0415 - optional dependency, imported only when plotting

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("note: matplotlib is not installed; no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    panels: List[Tuple[str, str]] = []
    for r in results:
        if (r.layer, r.mode) not in panels:
            panels.append((r.layer, r.mode))
    if not panels:
        return False
    modes = [m for m in MODES if any(p[1] == m for p in panels)] or [panels[0][1]]
    layers = [lay for lay in dict.fromkeys(p[0] for p in panels)]
    nrows, ncols = len(layers), len(modes)
    dtypes = list(dict.fromkeys(r.dtype for r in results))
    shapes_all = list(dict.fromkeys(r.shape for r in results))
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(5.0, 0.9 * len(shapes_all) + 2) * ncols, 3.6 * nrows),
                             squeeze=False)
    width = 0.8 / max(1, len(dtypes))
    legend: Dict[str, Any] = {}
    for li, layer in enumerate(layers):
        for mi, mode in enumerate(modes):
            ax = axes[li][mi]
            cells = [r for r in results if r.layer == layer and r.mode == mode]
            if not cells:
                ax.set_visible(False)
                continue
            shapes = list(dict.fromkeys(r.shape for r in cells))
            ymax = 1.2
            for di, dt in enumerate(dtypes):
                for si, sh in enumerate(shapes):
                    r = next((c for c in cells if c.shape == sh and c.dtype == dt), None)
                    if r is None:
                        continue
                    xpos = si - 0.4 + width * (di + 0.5)
                    if r.status != "ok" or r.speedup is None:
                        ax.text(xpos, 0.05, r.status, rotation=90, ha="center", va="bottom",
                                color="red", fontsize=8)
                        continue
                    color = ("tab:green" if r.target_met else "tab:orange") if r.target is not None else "tab:blue"
                    ax.bar(xpos, r.speedup, width * 0.9, color=color, alpha=1.0 - 0.3 * di,
                           label=dt if (si == 0 and len(dtypes) > 1) else None)
                    ax.text(xpos, r.speedup, f"{r.speedup:.2f}", ha="center", va="bottom", fontsize=7)
                    ymax = max(ymax, r.speedup * 1.15)
            first_target = True
            for si, sh in enumerate(shapes):
                tgt = next((c.target for c in cells if c.shape == sh and c.target is not None), None)
                if tgt is not None:
                    ax.hlines(tgt, si - 0.45, si + 0.45, colors="red", linewidth=2,
                              label="target" if first_target else None)
                    first_target = False
                    ymax = max(ymax, tgt * 1.15)
            ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
            ax.set_xlim(-0.5, len(shapes) - 0.5)
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels(shapes, rotation=45 if len(shapes) > 8 else 0, fontsize=8)
            ax.set_ylim(0, ymax)
            ax.set_title(f"{layer} {mode}")
            ax.set_ylabel("speedup vs torch.nn")
            handles, labels = ax.get_legend_handles_labels()
            for h, lab in zip(handles, labels):
                legend.setdefault(lab, h)
            if any(c.target is not None and c.status == "ok" for c in cells):
                from matplotlib.patches import Patch  # noqa: PLC0415

                legend.setdefault("target met", Patch(color="tab:green"))
                legend.setdefault("target NOT met", Patch(color="tab:orange"))
    if legend:
        # One legend for the figure, below the panels, so it never hides a bar or a target.
        fig.legend(list(legend.values()), list(legend.keys()), loc="lower center",
                   ncol=len(legend), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if legend else 0, 1, 1))
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

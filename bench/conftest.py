"""pytest configuration for the rnnfast benchmark suite (``bench/test_bench_rnn.py``, the
pytest-benchmark front end of the ``bench`` package; ``python -m bench`` is the other).

The suite runs only when asked for by path (``pytest bench``, ``pytest bench/test_bench_rnn.py``,
``python -m pytest bench``); a plain ``pytest`` from the repository root does not collect it, so
the test command (``python -m pytest tests``) and a bare ``pytest`` stay fast.

It also prints, after pytest-benchmark's own tables, a short side-by-side summary:
torch.nn time, rnnfast time, and the speedup per (layer, mode, shape) group.

Kept free of heavy imports at module level: pytest imports this file whenever it walks into
``bench/``, even when the suite is then ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

BENCH_DIR = Path(__file__).resolve().parent

_RECORDS = pytest.StashKey[List[Dict[str, Any]]]()


def _explicitly_requested(config: pytest.Config) -> bool:
    """True when one of pytest's path arguments is bench/ or something inside it."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path_part = str(arg).split("::", 1)[0]
        if not path_part:
            continue
        p = Path(path_part)
        p = (p if p.is_absolute() else base / p).resolve()
        if p == BENCH_DIR or BENCH_DIR in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> Optional[bool]:
    """Skip bench/ unless it (or a file in it) was named on the command line."""
    p = Path(collection_path).resolve()
    if (p == BENCH_DIR or BENCH_DIR in p.parents) and not _explicitly_requested(config):
        return True
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDS] = []


@pytest.fixture
def bench_record(request: pytest.FixtureRequest):
    """Append one finished benchmark's summary (a dict) for the end-of-run speedup table."""

    def record(**row: Any) -> None:
        request.config.stash[_RECORDS].append(row)

    return record


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print torch.nn vs rnnfast side by side, with speedup and the target."""
    rows = config.stash.get(_RECORDS, [])
    if not rows:
        return
    groups: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["impl"]] = r
    tr = terminalreporter
    stat = rows[0].get("stat", "min")
    tr.write_sep("-", f"rnnfast vs torch.nn ({stat} time per call; speedup = torch / rnnfast)")
    header = f"{'group':<34} {'torch ms':>10} {'rnnfast ms':>11} {'speedup':>8} {'target':>7}  status"
    tr.write_line(header)
    for g, by_impl in groups.items():
        t, f = by_impl.get("torch"), by_impl.get("rnnfast")
        ts = t["seconds"] if t else None
        fs = f["seconds"] if f else None
        target = (f or t or {}).get("target")
        sp = ts / fs if ts and fs else None
        status = "-"
        if f and f.get("failed"):
            status = "FAILED (rnnfast differs from torch.nn)"
        elif sp is not None and target is not None:
            status = "met" if sp >= target else "NOT met"
        tr.write_line(
            f"{g:<34} {('%.2f' % (ts * 1e3)) if ts else '-':>10} {('%.2f' % (fs * 1e3)) if fs else '-':>11} "
            f"{('%.2fx' % sp) if sp else '-':>8} {('%.1fx' % target) if target else '-':>7}  {status}"
        )
    if os.environ.get("RNNFAST_BENCH_QUICK") == "1":
        tr.write_line("(quick mode: scaled-down shapes, no targets judged)")

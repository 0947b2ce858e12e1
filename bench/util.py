"""Small helpers shared by the bench modules: messages, number formatting, markdown tables."""

from __future__ import annotations

import sys
from typing import Collection, Optional, Sequence


def log(msg: str) -> None:
    """Progress and notes go to stderr (the report goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def first_lines(text: str, n: int) -> str:
    """The first ``n`` non-empty lines of ``text``, stripped, joined with `` | ``."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[:n])


def fmt(v: Optional[float], spec: str) -> str:
    """``format(v, spec)``, or ``-`` for None."""
    return "-" if v is None else format(v, spec)


def markdown_table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """A markdown table with padded columns; ``rows[0]`` is the header, columns in ``right``
    are right-aligned."""
    head = rows[0]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])

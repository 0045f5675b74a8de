"""How a value looks in a table cell, and how a Markdown or CSV table is written: one way for the
leaderboard, the search's reports and the reproduction report (which sit above the record and
may not import each other)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def cell(value: Any) -> str:
    """A float to 4 significant digits, True as ``*`` (False and None: empty), else ``str``."""
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def escape_markdown(text: str) -> str:
    """``text`` safe inside a Markdown table cell or heading (a ``|`` would end the cell)."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """A Markdown table of cell texts, every cell escaped (tabulate pads the columns but
    escapes nothing); ``align``: ``left``, ``right`` or ``center`` per column, marked in the
    rule under the header (None: every column left, no marks)."""
    from tabulate import tabulate

    body = [[escape_markdown(text) for text in row] for row in rows]
    return tabulate(
        body,
        headers=[escape_markdown(h) for h in headers],
        tablefmt="github" if align is None else "pipe",
        colalign=None if align is None else tuple(align),
        disable_numparse=True,
    )


def write_csv(path: Path, columns: Sequence[str], records: Iterable[Mapping[str, Any]]) -> None:
    """``records`` as CSV rows of ``columns`` (other keys left out), values as they are."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)

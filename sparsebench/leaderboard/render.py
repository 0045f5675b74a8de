"""The leaderboard's rows as tables: in the terminal (rich), Markdown, CSV and the HTML report's
table, one table per benchmark key, its cells formatted by :func:`sparsebench.record.tables.cell`
(the HTML report's plots are :mod:`.html`)."""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sparsebench.leaderboard.rows import HEADINGS, SHOWN, Row, heading
from sparsebench.record.tables import cell, escape_markdown, markdown_table, write_csv

CSV_COLUMNS = (
    "benchmark_key",
    "metric",
    *SHOWN,
    "flops_dense",
    "flops_train",
    "train_samples",
    "seeds",
)
LEFT = ("method", "pattern", "run_hash")  # text columns; the others are numbers and marks
# Left out first when a terminal is too narrow for every column (the CSV has them all).
DROP_ORDER = (
    "run_hash",
    "train_speedup",
    "speedup",
    "latency_estimated",
    "latency_front",
    "budget_differs",
    "std",
    "n",
    "flops_front",
    "latency_noisy",
    "latency_ms",
)
STAR = "&#9733;"  # the HTML report's mark: on the front, budget differs, latency noisy


def align(column: str) -> str:
    return "left" if column in LEFT else "right"


def groups(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows per benchmark key, in rank order (ranks restart per key: runs of different keys
    are not comparable)."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(row.benchmark_key, []).append(row)
    return out


def fitting(rows: list[Row], width: int | None) -> tuple[str, ...]:
    """The columns that fit ``width`` characters without folding a header or a value."""
    columns = list(SHOWN)
    if width is None:
        return tuple(columns)

    def needed() -> int:
        return 1 + sum(
            3 + max(len(HEADINGS[c]), *(len(cell(getattr(r, c))) for r in rows)) for c in columns
        )

    for column in DROP_ORDER:
        if needed() <= width:
            break
        columns.remove(column)
    return tuple(columns)


def tables(rows: list[Row], width: int | None = None, top: int | None = None) -> list[Table]:
    """One terminal table per benchmark key, the key as its title (never cut to fit); at
    ``width`` characters, the columns that fit; the ``top`` rows of each key (None: all) and a
    caption counting the rest."""
    out = []
    shown = fitting(rows, width)
    for key, members in groups(rows).items():
        hidden = len(members) - top if top is not None and len(members) > top else 0
        caption = f"+{hidden} more rows (--top 0 or --csv for all)" if hidden else None
        table = Table(
            title=key,
            title_justify="left",
            title_style="bold",
            caption=caption,
            caption_justify="left",
        )
        for column in shown:
            table.add_column(heading(column, members), justify=align(column), overflow="fold")
        for row in members[: len(members) - hidden]:
            table.add_row(*(cell(getattr(row, c)) for c in shown))
        out.append(table)
    return out


def print_tables(rows: list[Row], width: int | None = None, top: int | None = None) -> None:
    """The tables at the terminal's width (``width``: a given one, e.g. for a file)."""
    console = Console(width=width)  # rich reads the terminal's width (or $COLUMNS) when None
    console.print(
        "sparsebench leaderboard (* = on the Pareto front / budget differs / latency noisy: "
        "timed on a busy machine or known to worse than +-5%)"
    )
    best = [r for r in rows if top is None or r.rank <= top]
    shown = fitting(best, console.width)
    if len(shown) < len(SHOWN):
        left = ", ".join(HEADINGS[c] for c in SHOWN if c not in shown)
        console.print(f"(too narrow for {left}: see --csv, or widen the terminal)")
    for table in tables(rows, console.width, top):
        console.print(table)


def markdown(rows: list[Row]) -> str:
    """A Markdown section per benchmark key (a key full of ``|`` stays one heading)."""
    sections = []
    for key, members in groups(rows).items():
        grid = markdown_table(
            [heading(c, members) for c in SHOWN],
            [[cell(getattr(r, c)) for c in SHOWN] for r in members],
        )
        sections.append(f"### {escape_markdown(key)}\n\n{grid}\n")
    return "\n".join(sections)


def save_csv(rows: list[Row], path: Path) -> None:
    """Every row with every column (:data:`CSV_COLUMNS`), values unformatted."""
    write_csv(path, CSV_COLUMNS, (asdict(row) for row in rows))


def html_table(rows: list[Row]) -> list[str]:
    """The HTML report's table of ``rows`` (one key's), as lines of the page."""
    heads = "".join(f"<th>{html.escape(heading(c, rows))}</th>" for c in SHOWN)
    lines = ["<table class='leaderboard'><tr>", heads, "</tr>"]
    for row in rows:
        cells = "".join(f"<td>{_html_cell(getattr(row, c))}</td>" for c in SHOWN)
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</table>")
    return lines


def _html_cell(value) -> str:
    if isinstance(value, bool):
        return STAR if value else ""
    return html.escape(cell(value))

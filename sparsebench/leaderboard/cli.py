"""``sparsebench leaderboard`` / ``python -m sparsebench.leaderboard``: the runs in an MLflow
store as a ranked table per benchmark_key, with Pareto fronts (terminal, CSV, Markdown)."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sparsebench.leaderboard.read import read_runs
from sparsebench.leaderboard.rows import HEADINGS, SHOWN, Row, admit, aggregate, describe_left_out
from sparsebench.record.mlflow_logging import DEFAULT_URI, store_problem, ui_link

CSV_COLUMNS = ("benchmark_key", *SHOWN, "flops_dense", "flops_train", "train_samples", "seeds")


def select(rows: list[Row], min_sparsity: float | None, max_sparsity: float | None) -> list[Row]:
    def inside(row: Row) -> bool:
        s = row.sparsity or 0.0
        return (min_sparsity is None or s >= min_sparsity) and (
            max_sparsity is None or s <= max_sparsity
        )

    return [r for r in rows if inside(r)]


def _cell(row: Row, column: str) -> str:
    value = getattr(row, column)
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def groups(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows per benchmark key, in rank order (ranks restart per key: runs of different keys
    are not comparable)."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(row.benchmark_key, []).append(row)
    return out


# Left out first when a terminal is too narrow for every column (the CSV has them all).
DROP_ORDER = ("run_hash", "latency_estimated", "latency_front", "budget_differs", "acc_std", "n",
              "flops_front", "latency_noisy", "latency_ms")  # fmt: skip


def fitting(rows: list[Row], width: int | None) -> tuple[str, ...]:
    """The columns that fit ``width`` characters without folding a header or a value."""
    columns = list(SHOWN)
    if width is None:
        return tuple(columns)

    def needed() -> int:
        return 1 + sum(
            3 + max(len(HEADINGS[c]), *(len(_cell(r, c)) for r in rows)) for c in columns
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
        table = Table(title=key, title_justify="left", title_style="bold", caption=caption,
                      caption_justify="left")  # fmt: skip
        for column in shown:
            left = column in ("method", "pattern", "run_hash")
            table.add_column(HEADINGS[column], justify="left" if left else "right",
                             overflow="fold")  # fmt: skip
        for row in members[: len(members) - hidden]:
            table.add_row(*(_cell(row, c) for c in shown))
        out.append(table)
    return out


def print_tables(rows: list[Row], width: int | None = None, top: int | None = None) -> None:
    """The tables at the terminal's width (``width``: a given one, e.g. for a file)."""
    console = Console(width=width)  # rich reads the terminal's width (or $COLUMNS) when None
    console.print("sparsebench leaderboard (* = on the Pareto front / budget differs / latency "
                  "noisy: timed on a busy machine or known to worse than +-5%)")  # fmt: skip
    best = [r for r in rows if top is None or r.rank <= top]
    shown = fitting(best, console.width)
    if len(shown) < len(SHOWN):
        left = ", ".join(HEADINGS[c] for c in SHOWN if c not in shown)
        console.print(f"(too narrow for {left}: see --csv, or widen the terminal)")
    for table in tables(rows, console.width, top):
        console.print(table)


def markdown(rows: list[Row]) -> str:
    """A Markdown section per benchmark key (tabulate aligns the columns; it does not escape
    ``|``, so the cells are escaped here, and a key full of ``|`` stays one heading)."""
    from tabulate import tabulate

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|")

    sections = []
    for key, members in groups(rows).items():
        body = [[escape(_cell(r, c)) for c in SHOWN] for r in members]
        grid = tabulate(body, headers=[HEADINGS[c] for c in SHOWN], tablefmt="github",
                        disable_numparse=True)  # fmt: skip
        sections.append(f"### {escape(key)}\n\n{grid}\n")
    return "\n".join(sections)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            data = asdict(row)
            writer.writerow({k: data[k] for k in writer.fieldnames})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sparsebench leaderboard", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    )
    parser.add_argument("--experiment", default=None, help="default: every experiment")
    for tag in ("dataset", "model", "method", "pattern", "hardware", "benchmark_key"):
        parser.add_argument(
            f"--{tag.replace('_', '-')}", default=None, help=f"only runs with this {tag} tag"
        )
    parser.add_argument("--min-sparsity", type=float, default=None)
    parser.add_argument("--max-sparsity", type=float, default=None)
    parser.add_argument(
        "--top", type=int, default=20,
        help="rows per benchmark key in the terminal (default 20; 0: all); files hold all rows",
    )  # fmt: skip
    parser.add_argument(
        "--no-cache", action="store_true",
        help="read every run from a tracking server again (default: only what changed since "
             "the last read)",
    )  # fmt: skip
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows as CSV")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a Markdown table")
    parser.add_argument(
        "--html", type=Path, default=None, help="also write the self-contained HTML report"
    )
    parser.add_argument(
        "--png", type=Path, default=None,
        help="also save the report as slide-sized PNGs, one per benchmark key, NAME-1.png ... "
             "(needs Chromium or Chrome)",
    )  # fmt: skip
    parser.add_argument(
        "--log-to-mlflow",
        action="store_true",
        help="log the table (CSV, Markdown) and the HTML report as artifacts of a leaderboard run",
    )
    args = parser.parse_args(argv)
    problem = check_arguments(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    filters = {
        t: getattr(args, t)
        for t in ("dataset", "model", "method", "pattern", "hardware", "benchmark_key")
    }
    problem = store_problem(args.tracking_uri)
    if problem:
        print(f"error: {problem}.", file=sys.stderr)
        return 1
    runs = read_runs(args.tracking_uri, args.experiment, filters, cache=not args.no_cache)
    admitted, left = admit(runs)
    rows = select(aggregate(admitted), args.min_sparsity, args.max_sparsity)
    note = describe_left_out(left)
    if not rows:
        print(f"no complete ok runs in {args.tracking_uri} match these filters"
              f"{'; ' + note if note else '.'}", file=sys.stderr)  # fmt: skip
        return 1
    print_tables(rows, top=args.top or None)
    if note:
        print(note)
    for experiment in sorted({r["experiment_id"] for r in admitted}):
        print(f"in the MLflow UI: {ui_link(args.tracking_uri, experiment)}")
    if args.csv:
        write_csv(rows, args.csv)
    if args.markdown:
        args.markdown.write_text(markdown(rows))
    if args.html or args.png:
        from sparsebench.leaderboard.html import find_browser, html_report, slides

        if args.png:
            try:
                find_browser()  # fail before writing anything
            except FileNotFoundError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        if args.html:
            html_report(rows, args.html)
        if args.png:
            for path in slides(rows, args.png):
                print(f"wrote {path}")
    if args.log_to_mlflow:
        print(
            f"leaderboard logged as MLflow run {log_artifacts(rows, args.tracking_uri, args.experiment)}"
        )
    return 0


def check_arguments(args: argparse.Namespace) -> str | None:
    """One sentence about the first bad argument, or None."""
    from sparsebench.config.schemas import TRACKING_SCHEMES

    scheme = args.tracking_uri.split(":", 1)[0] if ":" in args.tracking_uri else ""
    if scheme not in TRACKING_SCHEMES:
        return (f"--tracking-uri must start with one of {', '.join(TRACKING_SCHEMES)} (an MLflow "
                f"store), got '{args.tracking_uri}'.")  # fmt: skip
    if scheme == "sqlite":
        path = Path(args.tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():  # reading must never create a database
            return f"--tracking-uri {args.tracking_uri}: no such database file {path}."
    if args.top < 0:
        return f"--top must be 0 (every row) or a positive number of rows, got {args.top}."
    for name in ("min_sparsity", "max_sparsity"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:  # also rejects nan
            return f"--{name.replace('_', '-')} must be in [0, 1], got {value}."
    for name in ("csv", "markdown", "html", "png"):
        path = getattr(args, name)
        if path is not None and not path.resolve().parent.is_dir():
            return f"--{name} {path}: folder {path.resolve().parent} does not exist."
    return None


def log_artifacts(rows: list[Row], tracking_uri: str, experiment: str | None) -> str:
    """A ``leaderboard`` run holding the CSV, Markdown and HTML report; returns its id."""
    import tempfile

    from mlflow import MlflowClient

    from sparsebench.leaderboard.html import html_report
    from sparsebench.record.mlflow_logging import create_run

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = create_run(client, experiment or "sparsebench", "leaderboard",
                        {"sparsebench.leaderboard": "true"})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_csv(rows, folder / "leaderboard.csv")
        (folder / "leaderboard.md").write_text(markdown(rows))
        html_report(rows, folder / "leaderboard.html")
        for path in sorted(folder.iterdir()):
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


if __name__ == "__main__":
    raise SystemExit(main())

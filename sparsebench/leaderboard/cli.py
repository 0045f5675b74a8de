"""``sparsebench leaderboard`` / ``python -m sparsebench.leaderboard``: the runs in an MLflow
store as a ranked table per benchmark_key, with Pareto fronts (terminal, CSV, Markdown)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparsebench.config.cli import command_parser, fail, run_command
from sparsebench.errors import ConfigError
from sparsebench.leaderboard.read import read_runs
from sparsebench.leaderboard.render import markdown, print_tables, save_csv
from sparsebench.leaderboard.rows import Row, admit, aggregate, describe_left_out
from sparsebench.record.mlflow_logging import store_problem
from sparsebench.record.ui import ui_link

FILTERS = ("dataset", "model", "method", "pattern", "hardware", "benchmark_key")


def select(rows: list[Row], min_sparsity: float | None, max_sparsity: float | None) -> list[Row]:
    def inside(row: Row) -> bool:
        s = row.sparsity or 0.0
        return (min_sparsity is None or s >= min_sparsity) and (
            max_sparsity is None or s <= max_sparsity
        )

    return [r for r in rows if inside(r)]


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("sparsebench leaderboard", __doc__, "every experiment")
    for tag in FILTERS:
        parser.add_argument(
            f"--{tag.replace('_', '-')}", default=None, help=f"only runs with this {tag} tag"
        )
    parser.add_argument("--min-sparsity", type=float, default=None)
    parser.add_argument("--max-sparsity", type=float, default=None)
    parser.add_argument(
        "--top",
        type=int,
        default=20,
        help="rows per benchmark key in the terminal (default 20; 0: all); files hold all rows",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="read every run from a tracking server again (default: only what changed since "
        "the last read)",
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows as CSV")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a Markdown table")
    parser.add_argument(
        "--html", type=Path, default=None, help="also write the self-contained HTML report"
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=None,
        help="also save the report as slide-sized PNGs, one per benchmark key, NAME-1.png ... "
        "(needs Chromium or Chrome)",
    )
    parser.add_argument(
        "--log-to-mlflow",
        action="store_true",
        help="log the table (CSV, Markdown) and the HTML report as artifacts of a leaderboard run",
    )
    return run_command(parser, argv, _leaderboard)


def _leaderboard(args: argparse.Namespace) -> int:
    check_arguments(args)
    problem = store_problem(args.tracking_uri)
    if problem:
        return fail(f"{problem}.")
    filters = {t: getattr(args, t) for t in FILTERS}
    runs = read_runs(args.tracking_uri, args.experiment, filters, cache=not args.no_cache)
    admitted, left = admit(runs)
    rows = select(aggregate(admitted), args.min_sparsity, args.max_sparsity)
    note = describe_left_out(left)
    if not rows:  # nothing to show; said without "error:", as the input was fine
        print(
            f"no complete ok runs in {args.tracking_uri} match these filters"
            f"{'; ' + note if note else '.'}",
            file=sys.stderr,
        )
        return 1
    print_tables(rows, top=args.top or None)
    if note:
        print(note)
    views = {(r["experiment_id"], r["tags"].get("task", "classification")) for r in admitted}
    for experiment, task in sorted(views):  # each task's view: its quality, best first
        print(f"in the MLflow UI: {ui_link(args.tracking_uri, experiment, task=task)}")
    if args.csv:
        save_csv(rows, args.csv)
    if args.markdown:
        args.markdown.write_text(markdown(rows))
    if args.html or args.png:
        from sparsebench.leaderboard.html import find_browser, html_report, slides

        if args.png:
            try:
                find_browser()  # fail before writing anything
            except FileNotFoundError as exc:
                raise ConfigError(str(exc)) from None
        if args.html:
            html_report(rows, args.html)
        if args.png:
            for path in slides(rows, args.png):
                print(f"wrote {path}")
    if args.log_to_mlflow:
        run_id = log_artifacts(rows, args.tracking_uri, args.experiment)
        print(f"leaderboard logged as MLflow run {run_id}")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """ConfigError with one sentence about the first bad argument (the URI's scheme is checked
    by :func:`sparsebench.config.cli.run_command`)."""
    path = args.store.path or Path(args.tracking_uri)
    if args.store.scheme == "sqlite" and not path.is_file():  # reading never creates a database
        raise ConfigError(f"--tracking-uri {args.tracking_uri}: no such database file {path}.")
    if args.top < 0:
        raise ConfigError(
            f"--top must be 0 (every row) or a positive number of rows, got {args.top}."
        )
    for name in ("min_sparsity", "max_sparsity"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:  # also rejects nan
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}.")
    for name in ("csv", "markdown", "html", "png"):
        path = getattr(args, name)
        if path is not None and not path.resolve().parent.is_dir():
            raise ConfigError(f"--{name} {path}: folder {path.resolve().parent} does not exist.")


def log_artifacts(rows: list[Row], tracking_uri: str, experiment: str | None) -> str:
    """A ``leaderboard`` run holding the CSV, Markdown and HTML report; returns its id."""
    import tempfile

    from mlflow import MlflowClient

    from sparsebench.leaderboard.html import html_report
    from sparsebench.record.mlflow_logging import create_run

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = create_run(
        client, experiment or "sparsebench", "leaderboard", {"sparsebench.leaderboard": "true"}
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_csv(rows, folder / "leaderboard.csv")
        (folder / "leaderboard.md").write_text(markdown(rows))
        html_report(rows, folder / "leaderboard.html")
        for path in sorted(folder.iterdir()):
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


if __name__ == "__main__":
    raise SystemExit(main())

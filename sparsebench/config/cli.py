"""The sub-commands that are not Hydra apps (``sparsebench leaderboard``, ``sparsebench upload``):
one way to build their parsers, the MLflow store arguments they share, and bad input ending as
one ``error: ...`` sentence on stderr with exit code 2, as it ends in the Hydra apps."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from sparsebench.config.store import DEFAULT_URI, parse_store
from sparsebench.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse would print its usage and exit; its complaint becomes our one sentence.
        raise ConfigError(f"{message} (see {self.prog} --help).")


def command_parser(prog: str, doc: str, experiment: str) -> argparse.ArgumentParser:
    """A parser for ``prog``, described by the first line of ``doc``, with the shared
    ``--tracking-uri`` and ``--experiment`` (``experiment``: what leaving it out means)."""
    parser = _Parser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI),
        help=f"the MLflow store (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})",
    )
    parser.add_argument("--experiment", default=None, help=f"default: {experiment}")
    return parser


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    command: Callable[[argparse.Namespace], int],
) -> int:
    """Parse ``argv`` (the tracking URI parsed into ``args.store``) and return
    ``command(args)``'s exit code; 2 with one sentence when argparse, the URI or the command's
    own checks (a ConfigError) refuse the input."""
    try:
        args = parser.parse_args(argv)
        args.store = parse_store(args.tracking_uri, "--tracking-uri")
        return command(args)
    except ConfigError as exc:
        return fail(str(exc), 2)


def fail(message: str, code: int = 1) -> int:
    """``error: MESSAGE`` on stderr; returns ``code``, the exit code to end with."""
    print(f"error: {message}", file=sys.stderr)
    return code

"""The errors a run can end with; the bottom floor of the library (imports nothing of ours).

:class:`ConfigError` is bad input: one sentence for the user, exit 2, before anything is trained
or recorded. The others end a run that started, and its record says which (docs/records.md).
"""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A config value is invalid; the message is one sentence for the user."""


def require(ok: bool, message: str) -> None:
    """A schema's range check: :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), at most
    ``limit`` characters: how a library's multi-line error becomes part of one sentence."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class RunDiverged(Exception):
    """The training loss became non-finite (or exceeded ``trainer.max_loss``)."""


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT ended the run; a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")


class ContractIncomplete(Exception):
    """The run ended without error but did not record every contract metric."""

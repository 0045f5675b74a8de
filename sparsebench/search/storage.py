"""Optuna storages: an SQLite file by default, PostgreSQL for many workers, a journal file on a
shared filesystem. RDB storages (SQLite, PostgreSQL) get a heartbeat, so a trial whose worker
died is marked failed and retried; Optuna's journal storage has no heartbeat."""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from sparsebench.errors import ConfigError

SCHEMES = "sqlite:///FILE, postgresql://USER@HOST:PORT/DB, journal:FILE"


def normalise(url: str) -> str:
    """SQLAlchemy 2.1 takes plain ``postgresql://`` to mean psycopg 3; we ship psycopg2."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def redact(url: str) -> str:
    if url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 2
) -> optuna.storages.BaseStorage:
    """The storage behind ``url``; raises ConfigError (one sentence) if it cannot be used."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        if not path.parent.is_dir():
            raise ConfigError(
                f"study storage {url}: folder {path.parent} does not exist (create it first)."
            )
        # The open(2)-based lock works on NFS, where symlink locks may not.
        return JournalStorage(
            JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        )
    url = normalise(url)
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise ConfigError(f"study storage '{url}' has an unknown scheme; allowed: {SCHEMES}.")
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///")).resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"study storage {url}: folder {folder} does not exist.")
    _check_reachable(url)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    # Workers started together (a submitit array, `workers=N`) race to create Optuna's schema
    # on a new database: the losers hit a duplicate `alembic_version` row, a locked SQLite file
    # or (PostgreSQL) a table that already exists. RDBStorage has no retry of its own; once the
    # winner committed, a retry finds the schema and only checks its version.
    def connect() -> RDBStorage:
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )

    for attempt in range(4):
        try:
            return connect()
        except (IntegrityError, OperationalError, ProgrammingError):
            time.sleep(0.2 + random.random() * (attempt + 1))
    return connect()  # a fifth failure is raised


def _check_reachable(url: str) -> None:
    from sqlalchemy import create_engine, text

    connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, connect_args=connect_args)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"cannot reach the study storage {redact(url)} ({reason}).") from None

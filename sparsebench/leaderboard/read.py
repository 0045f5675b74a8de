"""Runs read back from an MLflow store: only the metrics and tags a leaderboard uses.

MLflow's ``search_runs`` builds every param, tag and metric of every run as ORM objects and
entities (about 4 ms per run: 4,000 runs took 16 s and 0.9 GB; ``benchmarks/leaderboard_scale``),
and has no way to ask for fewer fields. So:

- A database store (``sqlite:``, ``postgresql:``, ``mysql:`` URIs) is read with three SQL queries
  on the tables MLflow itself writes (``runs``, ``experiments``, ``latest_metrics``, ``tags``;
  SQLAlchemy Core, MLflow's own dependency): the active runs of active experiments, and only the
  latest values of :data:`METRICS` and the values of :data:`TAGS`. Written by hand because no
  MLflow API selects columns; ``tests/leaderboard/test_reader.py`` checks it against MLflow's client on the
  installed MLflow, so a schema change fails a test rather than a leaderboard.
- A tracking server (``http(s):``) is read through MLflow's client, page by page (nothing is
  truncated), and the finished runs are kept in a local cache (a SQLite file per server under
  ``$XDG_CACHE_HOME/sparsebench/runs``; JSON records, nothing executable). Later reads ask the
  server only for runs that ended after the newest cached end time (less an hour for clocks that
  differ between machines), the runs still going, and the ids of deleted runs. A run whose tags
  are edited after it ended, without ending again, keeps its cached record: ``--no-cache`` reads
  everything again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from sparsebench.config.store import Store
from sparsebench.leaderboard.rows import METRICS, TAGS, Run

PAGE = 1000  # runs per request to a tracking server
CLOCK_MARGIN_MS = 3_600_000  # end times of other machines may lag the newest one by this much
FINISHED = ("FINISHED", "FAILED", "KILLED")  # MLflow's terminal states


def read_runs(
    uri: str,
    experiment: str | None = None,
    filters: dict[str, str | None] | None = None,
    cache: bool = True,
) -> list[Run]:
    """The active runs of the active experiments at ``uri`` (or of ``experiment``) whose tags
    equal ``filters``, as :data:`Run` records holding :data:`METRICS` and :data:`TAGS` only."""
    wanted = {k: v for k, v in (filters or {}).items() if v}
    unknown = set(wanted) - set(TAGS)
    if unknown:
        raise ValueError(f"cannot filter on tags the reader does not read: {sorted(unknown)}")
    if Store.of(uri).database:
        runs = _from_database(uri, experiment)
    else:
        runs = _from_client(uri, experiment, RunCache.for_uri(uri) if cache else None)
    # Filters are compared here, never put into an MLflow filter string: user text is not parsed.
    return [r for r in runs if all(r["tags"].get(k) == v for k, v in wanted.items())]


def _from_database(uri: str, experiment: str | None) -> list[Run]:
    import sqlalchemy as sa

    runs = sa.table(
        "runs",
        *map(
            sa.column,
            ("run_uuid", "name", "status", "end_time", "experiment_id", "lifecycle_stage"),
        ),
    )
    experiments = sa.table(
        "experiments", *map(sa.column, ("experiment_id", "name", "lifecycle_stage"))
    )
    metrics = sa.table("latest_metrics", *map(sa.column, ("run_uuid", "key", "value", "is_nan")))
    tags = sa.table("tags", *map(sa.column, ("run_uuid", "key", "value")))
    live = [runs.c.lifecycle_stage == "active", experiments.c.lifecycle_stage == "active"]
    if experiment is not None:
        live.append(experiments.c.name == experiment)

    def joined(table):
        joins = table.join(runs, runs.c.run_uuid == table.c.run_uuid) if table is not runs else runs
        return joins.join(experiments, experiments.c.experiment_id == runs.c.experiment_id)

    engine = sa.create_engine(uri)
    out: dict[str, Run] = {}
    try:
        with engine.connect() as connection:
            query = (
                sa.select(
                    runs.c.run_uuid,
                    runs.c.name,
                    runs.c.status,
                    runs.c.end_time,
                    runs.c.experiment_id,
                )
                .select_from(joined(runs))
                .where(*live)
            )
            for run_id, name, status, end_time, experiment_id in connection.execute(query):
                out[run_id] = _record(run_id, name, status, end_time, str(experiment_id), {}, {})
            query = (
                sa.select(metrics.c.run_uuid, metrics.c.key, metrics.c.value, metrics.c.is_nan)
                .select_from(joined(metrics))
                .where(*live, metrics.c.key.in_(METRICS))
            )
            for run_id, key, value, is_nan in connection.execute(query):
                out[run_id]["metrics"][key] = math.nan if is_nan else float(value)
            query = (
                sa.select(tags.c.run_uuid, tags.c.key, tags.c.value)
                .select_from(joined(tags))
                .where(*live, tags.c.key.in_(TAGS))
            )
            for run_id, key, value in connection.execute(query):
                out[run_id]["tags"][key] = value
    finally:
        engine.dispose()
    return list(out.values())


def _record(run_id, name, status, end_time, experiment_id, metrics, tags) -> Run:
    return {
        "id": run_id,
        "name": name,
        "status": status,
        "end_time": end_time,
        "experiment_id": experiment_id,
        "metrics": metrics,
        "tags": tags,
    }


def _slim(run) -> Run:
    """An MLflow ``Run`` entity as a record with the leaderboard's fields only."""
    data = run.data
    return _record(
        run.info.run_id,
        run.info.run_name,
        run.info.status,
        run.info.end_time,
        run.info.experiment_id,
        {k: v for k, v in data.metrics.items() if k in METRICS},
        {k: v for k, v in data.tags.items() if k in TAGS},
    )


def _paged(search) -> Iterator:
    """Every item of an MLflow search, ``search(page_token)`` called page after page."""
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _pages(client, ids: list[str], filter_string: str = "", deleted: bool = False) -> Iterator:
    from mlflow.entities import ViewType

    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    # Oldest first: runs created while paging land on the last page and shift nothing.
    return _paged(
        lambda token: client.search_runs(
            ids,
            filter_string,
            run_view_type=view,
            max_results=PAGE,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
    )


def _from_client(uri: str, experiment: str | None, cache: RunCache | None) -> list[Run]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    # Every active experiment: the cache is one for the whole store.
    experiments = list(
        _paged(lambda token: client.search_experiments(max_results=PAGE, page_token=token))
    )
    ids = [e.experiment_id for e in experiments]
    if not ids:
        return []
    if cache is not None:
        cache.check({e.experiment_id: e.creation_time for e in experiments})
    newest = cache.newest_end() if cache is not None else None
    if newest is None:
        if cache is not None:
            print(
                f"reading every run of {uri} once (later reads fetch only what changed; "
                f"cache: {cache.path})",
                file=sys.stderr,
                flush=True,
            )
        fresh = {r.info.run_id: _slim(r) for r in _pages(client, ids)}
    else:
        fresh = {
            r.info.run_id: _slim(r)
            for query in (
                f"attributes.end_time > {newest - CLOCK_MARGIN_MS}",
                "attributes.status = 'RUNNING'",
                "attributes.status = 'SCHEDULED'",
            )
            for r in _pages(client, ids, query)
        }
    runs = fresh
    if cache is not None:
        deleted = {r.info.run_id for r in _pages(client, ids, deleted=True)}
        cache.store(fresh.values(), forget=deleted)
        runs = {**cache.load(), **fresh}
        for run_id in deleted:
            runs.pop(run_id, None)
    live = {e.experiment_id for e in experiments if experiment in (None, e.name)}
    return [r for r in runs.values() if r["experiment_id"] in live]


class RunCache:
    """Finished runs of one tracking server, by run id, in a SQLite file (JSON records)."""

    FORMAT = 1  # bump when a record's shape changes

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, end_time INTEGER, record TEXT)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        fields = hashlib.sha256(json.dumps([self.FORMAT, METRICS, TAGS]).encode()).hexdigest()
        (stored,) = self.db.execute("SELECT value FROM meta WHERE key = 'fields'").fetchone() or (
            None,
        )
        if stored != fields:  # other fields read now: start again
            with self.db:
                self.db.execute("DELETE FROM runs")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('fields', ?)", (fields,))

    @classmethod
    def for_uri(cls, uri: str) -> RunCache:
        home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        name = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:20]
        return cls(Path(home) / "sparsebench" / "runs" / f"{name}.sqlite")

    def check(self, experiments: dict[str, int | None]) -> None:
        """Start again when the server holds another store than the one cached (a new database
        behind the same address): an experiment id cached before was created at another time."""
        known = dict(self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'experiment:%'"))
        known = {k.removeprefix("experiment:"): v for k, v in known.items()}
        if any(i in experiments and str(experiments[i]) != v for i, v in known.items()):
            with self.db:
                self.db.execute("DELETE FROM runs")
                self.db.execute("DELETE FROM meta WHERE key LIKE 'experiment:%'")
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(f"experiment:{i}", str(t)) for i, t in experiments.items()],
            )

    def newest_end(self) -> int | None:
        return self.db.execute("SELECT MAX(end_time) FROM runs").fetchone()[0]

    def load(self) -> dict[str, Run]:
        return {i: json.loads(r) for i, r in self.db.execute("SELECT id, record FROM runs")}

    def store(self, runs: Iterable[Run], forget: Iterable[str] = ()) -> None:
        """Keep the finished runs; forget ``forget`` and the runs going again (resumed)."""
        done, going = [], []
        for run in runs:
            if run["status"] in FINISHED and run["end_time"] is not None:
                done.append((run["id"], run["end_time"], json.dumps(run)))
            else:
                going.append((run["id"],))
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", done)
            self.db.executemany("DELETE FROM runs WHERE id = ?", [*going, *((i,) for i in forget)])

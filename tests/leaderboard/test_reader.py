"""Reading runs for the leaderboard: the SQL reader against MLflow's own client, and the
incremental cache of a tracking server's finished runs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from sparsebench.leaderboard.read import RunCache, _from_client, _from_database, read_runs
from sparsebench.leaderboard.rows import METRICS, TAGS
from sparsebench.record.results import STATUS_TAG


def log_run(
    client: MlflowClient, experiment: str, name: str, acc: float, end: bool = True, **tags: str
) -> str:
    run = client.create_run(experiment, run_name=name)
    now = int(time.time() * 1000)
    metrics = [Metric(k, 1.0, now, 0) for k in METRICS]
    metrics += [Metric("test/acc", acc, now, 0), Metric("train/loss", 0.5, now, 3)]  # not read
    every = {
        "benchmark_key": "digits|mlp|cpu",
        "run_hash": name,
        "method": "rigl",
        "seed": "0",
        "dataset": "digits",
        STATUS_TAG: "ok",
        "git_sha": "not read",
        **tags,
    }
    client.log_batch(
        run.info.run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in every.items()]
    )
    client.log_param(run.info.run_id, "trainer.max_epochs", "3")  # params are never read
    if end:
        client.set_terminated(run.info.run_id)
    return run.info.run_id


def comparable(runs: list[dict]) -> dict[str, dict]:
    """Runs by id, NaN as a string (NaN != NaN)."""

    def clean(metrics):
        return {k: "nan" if math.isnan(v) else v for k, v in metrics.items()}

    return {r["id"]: {**r, "metrics": clean(r["metrics"])} for r in runs}


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, dict[str, str]]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    main, other, gone = (client.create_experiment(n) for n in ("main", "other", "gone"))
    ids = {
        "a": log_run(client, main, "a", 0.9),
        "b": log_run(client, main, "b", 0.8, dataset="mnist1d", pattern="2:4"),
        "running": log_run(client, main, "running", 0.7, end=False),
        "other": log_run(client, other, "other", 0.6),
        "deleted": log_run(client, main, "deleted", 0.5),
        "in_deleted_experiment": log_run(client, gone, "x", 0.4),
    }
    client.log_metric(ids["b"], "val/acc", math.nan)  # NaN is stored as a flag by MLflow
    client.delete_run(ids["deleted"])
    client.delete_experiment(gone)
    return uri, client, ids


@pytest.mark.parametrize("experiment", [None, "main", "other", "gone", "absent"])
def test_the_sql_reader_reads_what_mlflow_reads(store, experiment) -> None:
    uri, _, ids = store
    direct = comparable(_from_database(uri, experiment))
    assert direct == comparable(_from_client(uri, experiment, None))
    if experiment is None:
        assert set(direct) == {ids[k] for k in ("a", "b", "running", "other")}
        b = direct[ids["b"]]
        assert b["metrics"]["val/acc"] == "nan" and b["tags"]["pattern"] == "2:4"
        assert set(b["metrics"]) == set(METRICS) and set(b["tags"]) <= set(TAGS)
        assert direct[ids["running"]]["status"] == "RUNNING"


def test_filters_compare_tags_and_refuse_unread_ones(store) -> None:
    uri, _, ids = store
    assert [r["id"] for r in read_runs(uri, None, {"dataset": "mnist1d"})] == [ids["b"]]
    assert read_runs(uri, None, {"pattern": "2:4' OR '1'='1"}) == []  # compared, never parsed
    with pytest.raises(ValueError, match="git_sha"):
        read_runs(uri, None, {"git_sha": "x"})


def test_the_cache_fetches_what_changed(store, tmp_path: Path) -> None:
    uri, client, ids = store
    cache = RunCache(tmp_path / "cache.sqlite")
    first = comparable(_from_client(uri, None, cache))
    assert first == comparable(_from_database(uri, None))
    assert set(cache.load()) == {ids[k] for k in ("a", "b", "other")}  # finished runs only

    # Changes after the first read: a new run, the running one finished, a deletion, a
    # finished run resumed (RUNNING again); all seen by the second read.
    new = log_run(client, client.get_experiment_by_name("main").experiment_id, "new", 0.95)
    client.set_terminated(ids["running"])
    client.delete_run(ids["other"])
    client.update_run(ids["a"], status="RUNNING")
    second = comparable(_from_client(uri, None, cache))
    assert second == comparable(_from_database(uri, None))
    assert new in second and ids["other"] not in second
    assert second[ids["a"]]["status"] == "RUNNING" and ids["a"] not in cache.load()

    # A tag edited long after a run ended (its end time unchanged) is not fetched again: the
    # record comes from the cache, and --no-cache (cache=None) reads it afresh.
    old = int(time.time() * 1000) - 2 * 3_600_000
    client.set_terminated(ids["b"], end_time=old)
    _from_client(uri, None, cache)
    client.set_tag(ids["b"], "method", "edited")
    assert comparable(_from_client(uri, None, cache))[ids["b"]]["tags"]["method"] == "rigl"
    assert comparable(_from_client(uri, None, None))[ids["b"]]["tags"]["method"] == "edited"


def test_a_new_store_behind_the_same_address_is_not_mixed_with_the_cached_one(
    store, tmp_path: Path
) -> None:
    uri, _, ids = store
    cache = RunCache(tmp_path / "cache.sqlite")  # the cache of one address
    _from_client(uri, None, cache)
    time.sleep(0.01)  # another creation time for the new store's experiments
    other = f"sqlite:///{tmp_path / 'other.db'}"
    client = MlflowClient(tracking_uri=other)
    fresh = log_run(client, client.create_experiment("main"), "fresh", 0.5)
    assert set(comparable(_from_client(other, None, cache))) == {fresh}
    assert set(cache.load()) == {fresh}


def test_the_cache_starts_again_when_the_fields_change(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "cache.sqlite"
    RunCache(path).store(
        [
            {
                "id": "r",
                "status": "FINISHED",
                "end_time": 5,
                "metrics": {},
                "tags": {},
                "experiment_id": "1",
                "name": "r",
            }
        ]
    )
    assert set(RunCache(path).load()) == {"r"}
    monkeypatch.setattr("sparsebench.leaderboard.read.TAGS", (*TAGS, "latency/noisy"))
    assert RunCache(path).load() == {}

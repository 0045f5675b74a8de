"""Many search workers on one study: PostgreSQL on 127.0.0.1:5432 with a worker killed
mid-trial, a journal file with ``workers=N``, a Hydra multirun of workers through the
submitit launcher; and plain grids through the submitit launcher, each job a nested run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.pool import NullPool

from tests.fixtures import FAST, run_cli, search, write_sweep

pytestmark = pytest.mark.slow
NO_MLFLOW = 'trial_overrides=["logger=none"]'


def _worker(args: list[str], cwd: Path, index: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen(
        [sys.executable, "-m", "sparsebench.search", *args, f"worker={index}"],
        cwd=cwd,
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def test_two_workers_on_postgres_survive_a_killed_worker(pg_database: str, tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path,
        overrides=[*FAST, "+method=random", "trainer.max_epochs=2"],
        n_trials=12,
        storage=pg_database,
    )
    args = [f"sweep={path}", "heartbeat_interval=1", "grace_period=3", "poll_s=0.5", NO_MLFLOW]
    log = tmp_path / "workers.log"
    first, second = _worker(args, tmp_path, 0, log), _worker(args, tmp_path, 1, log)
    # One storage for the whole poll: a URL string would open a new engine (and its pooled
    # connections) on every call, and 0.1 s polls exhaust PostgreSQL's max_connections.
    storage = optuna.storages.RDBStorage(
        pg_database.replace("postgresql://", "postgresql+psycopg2://"),
        engine_kwargs={"poolclass": NullPool},
    )
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline:  # kill `first` in the middle of a trial
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name="study", storage=storage).get_trials()
        except KeyError:
            continue  # the study is not created yet
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        mine = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and t.user_attrs.get("worker", "").endswith(f":{first.pid}")
        ]
        if done >= 2 and mine:
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed = mine[0].number
    assert killed is not None, log.read_text()[-3000:]
    restarted = _worker(args, tmp_path, 0, log)
    assert second.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert restarted.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = optuna.load_study(study_name="study", storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 12 and len({t.number for t in complete}) == 12
    dead = trials[killed]
    assert dead.state == TrialState.FAIL
    (retry,) = [
        t for t in complete if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed
    ]
    assert retry.params == dead.params  # the killed trial ran again, same configuration
    others = [t for t in trials if t.state == TrialState.FAIL and t.number != killed]
    assert all(t.user_attrs.get("surplus") for t in others)  # never a lost trial
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}


def test_local_workers_share_a_journal_file(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    path = write_sweep(tmp_path, n_trials=4, storage=f"journal:{journal}")
    proc = search([f"sweep={path}", "workers=2", NO_MLFLOW], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    trials = optuna.load_study(study_name="study", storage=storage).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    workers = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) == 2  # both processes ran trials


def test_multirun_of_workers_with_the_submitit_launcher(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, n_trials=4)
    proc = search(
        ["-m", f"sweep={path}", "worker=0,1", "hydra/launcher=submitit_local", NO_MLFLOW],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="study", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 4


def test_grid_with_the_submitit_launcher_nests_every_job(tmp_path: Path) -> None:
    # python -m sparsebench -m +method=rigl,set method.sparsity=0.5,0.9 hydra/launcher=submitit_local
    # (one method here: two jobs in their own processes are the point; Hydra cannot take a
    # single-valued method.sparsity beside a swept +method, it composes it before the sweep)
    proc = run_cli(
        [
            "-m",
            *FAST,
            "+method=rigl",
            "method.sparsity=0.5,0.9",
            "hydra/launcher=submitit_local",
            "hardware.min_run_time=0.05",
        ],
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sparsebench").experiment_id])
    (parent,) = [r for r in runs if "sparsebench.sweep" in r.data.tags]
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.tags["method"], r.data.params["method.sparsity"]) for r in jobs) == [
        ("rigl", "0.5"),
        ("rigl", "0.9"),
    ]
    assert all(r.info.status == "FINISHED" for r in jobs)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_optuna_dashboard_reads_the_study_storages(tmp_path: Path, kind: str) -> None:
    # optuna-dashboard (the cluster extra; also in docker-compose.yml) on a study file.
    import json
    import urllib.request

    from sparsebench.search.storage import open_storage
    from tests.fixtures import free_port

    url = (
        f"sqlite:///{tmp_path}/optuna.db"
        if kind == "sqlite"
        else f"journal:{tmp_path}/study.journal"
    )
    study = optuna.create_study(study_name="board", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    port = free_port()
    target = url if kind == "sqlite" else url.removeprefix("journal:")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            target,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, answer = time.time() + 60, None
        while answer is None and time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    answer = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert answer is not None, "optuna-dashboard did not answer"
        (summary,) = answer["study_summaries"]
        assert summary["study_name"] == "board"
    finally:
        server.terminate()
        server.wait(timeout=30)

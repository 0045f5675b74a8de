"""The fault matrix, outages: the tracking server killed mid-run (upload completes the run), a
full disk, a diverging run and a diverging study. Each case checks that results.json, MLflow and
the leaderboard agree and that nothing already computed is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from sparsebench.record.contract import CONTRACT_METRICS
from tests.fixtures import free_port, wait_until_healthy
from tests.record.faults import (
    RUN,
    board,
    cli,
    mlflow_run,
    pause,
    reach,
    record,
    start,
    upload,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path):
    """A restartable ``mlflow server`` on loopback with an SQLite backend in tmp_path."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def up() -> None:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{tmp_path}/server.db",
                "--artifacts-destination",
                str(tmp_path / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(proc)
        wait_until_healthy(uri, proc, timeout=120)

    def down() -> None:
        os.killpg(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait(timeout=60)

    up()
    yield uri, up, down
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_tracking_server_killed_mid_run_then_upload_completes_it(tmp_path: Path, server) -> None:
    uri, up, down = server
    proc = start(tmp_path, "outage", pause(tmp_path, "outage", epoch=1, batch=1), uri=uri)
    reach(tmp_path, "outage", proc)
    down()
    (tmp_path / "outage.go").touch()
    assert proc.wait(timeout=300) == 0
    printed = proc.stdout.read() + proc.stderr.read()  # Hydra logs warnings to stdout
    assert f"sparsebench upload {tmp_path / 'outage'}" in printed
    data = record(tmp_path, "outage")
    assert data["status"] == "ok" and set(CONTRACT_METRICS) <= data["metrics"].keys()
    assert len(data["history"]) == 3  # nothing computed was lost to the outage

    # A dead server: one sentence within seconds, for upload and leaderboard alike.
    began = time.time()
    failed = cli(tmp_path, "upload", str(tmp_path / "outage"), "--tracking-uri", uri, timeout=60)
    assert failed.returncode == 1 and time.time() - began < 30
    assert failed.stderr.startswith(f"error: tracking server {uri} cannot be reached")
    assert "Traceback" not in failed.stderr
    from sparsebench.leaderboard.cli import main as leaderboard

    began = time.time()
    assert leaderboard(["--tracking-uri", uri]) == 1 and time.time() - began < 15

    up()
    client = MlflowClient(tracking_uri=uri)
    before = client.get_run(data["mlflow"]["run_id"])
    assert before.info.status == "RUNNING" and len(before.data.params) > 50  # sent at start
    code, printed = upload(str(tmp_path / "outage"), "--tracking-uri", uri)
    assert code == 0 and "\ncompleted: " in f"\n{printed}", printed
    after = client.get_run(data["mlflow"]["run_id"])
    assert after.info.status == "FINISHED" and after.data.tags["sparsebench.status"] == "ok"
    assert {k: after.data.metrics[k] for k in CONTRACT_METRICS} == {
        k: data["metrics"][k] for k in CONTRACT_METRICS
    }
    history = client.get_metric_history(after.info.run_id, "train/loss")
    assert sorted({m.step for m in history}) == [0, 1, 2]
    assert {a.path for a in client.list_artifacts(after.info.run_id)} >= {
        "results.json",
        "config.yaml",
    }
    code, printed = upload(str(tmp_path / "outage"), "--tracking-uri", uri)
    assert code == 0 and printed.startswith("already complete: "), printed
    assert len(client.search_runs([after.info.experiment_id])) == 1
    assert board(uri) == ({data["run_uid"]}, {})


def test_full_disk_keeps_the_last_good_checkpoint_and_records_the_failure(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # From epoch 1 on, no file may grow past 64 kB: the next checkpoint and MLflow's database
    # cannot be written, results.json (a few kB) still can.
    proc = start(
        tmp_path, "full", pause(tmp_path, "full", hook="train_epoch_start", epoch=1, fsize=64_000)
    )
    # ... and one where not even the failed status can be written (1 kB from the start).
    tiny = start(
        tmp_path, "tiny", pause(tmp_path, "tiny", hook="train_epoch_start", epoch=0, fsize=1_000)
    )
    proc.wait(timeout=300)
    assert proc.returncode == 1
    data = record(tmp_path, "full")
    assert data["status"] == "failed" and data["error"].startswith(
        "OSError: could not write checkpoint"
    )
    assert [row["epoch"] for row in data["history"]] == [0, 1]  # epoch 1 was trained and kept
    checkpoints = sorted(p.name for p in (tmp_path / "full/checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]  # no temporary file left behind
    assert torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0
    # MLflow's database could not take the end of the run; upload completes it afterwards.
    client, run = mlflow_run(data)
    assert run.info.status == "RUNNING"
    assert upload(str(tmp_path / "full"), "--tracking-uri", uri)[0] == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED" and run.data.tags["sparsebench.status"] == "failed"

    # When not even the failed status can be written, stderr says so.
    tiny.wait(timeout=300)
    stderr = tiny.stderr.read()
    assert tiny.returncode != 0
    assert f"error: could not write {tmp_path / 'tiny' / 'results.json'}" in stderr
    assert "final status 'failed'" in stderr
    unrecorded = record(tmp_path, "tiny")  # as it was when the disk filled up: still running
    assert unrecorded["status"] == "running"
    assert board(uri) == (set(), {"failed": {data["run_uid"]}, "running": {unrecorded["run_uid"]}})


def test_a_diverging_run_ends_as_diverged_and_never_ranks(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = cli(
        tmp_path,
        *RUN,
        "trainer.optimizer.lr=inf",
        f"hydra.run.dir={tmp_path / 'nan'}",
        f"logger.tracking_uri={uri}",
    )
    assert proc.returncode == 1 and "diverged: the training loss is nan at step " in proc.stderr
    assert "Traceback" not in proc.stderr
    data = record(tmp_path, "nan")
    assert data["status"] == "diverged" and "test/acc" not in data["metrics"]
    client, run = mlflow_run(data)
    assert run.info.status == "FAILED" and run.data.tags["sparsebench.status"] == "diverged"
    assert board(uri) == (set(), {"diverged": {data["run_uid"]}})


def test_a_diverging_study_fails_its_trials_everywhere_and_stops(
    tmp_path: Path, monkeypatch
) -> None:
    import optuna
    import yaml

    from sparsebench.errors import ConfigError
    from sparsebench.search.worker import Worker
    from tests.fixtures import search_in_process

    study = {
        "overrides": [
            "model=mlp",
            "dataset=digits",
            "debug=fast",
            "+method=random",
            "trainer.optimizer.lr=inf",
        ],
        "space": {"method.sparsity": {"type": "float", "low": 0.3, "high": 0.9}},
        "objectives": [{"metric": "val/acc", "direction": "maximize"}],
        "sampler": {"name": "random", "seed": 0},
        "n_trials": 5,
    }
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(study))
    worker = Worker(
        *search_in_process(
            [f"sweep={tmp_path / 'nan.yaml'}", "max_failures=2"], tmp_path, monkeypatch
        )
    )
    with pytest.raises(
        ConfigError,
        match="2 trials in a row failed in study 'nan'; the last: "
        "RunDiverged: the training loss is nan",
    ):
        worker.run()
    trials = optuna.load_study(study_name="nan", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    for trial in trials:
        data = json.loads((Path(trial.user_attrs["run_dir"]) / "results.json").read_text())
        assert data["status"] == "diverged"
        assert client.get_run(data["mlflow"]["run_id"]).info.status == "FAILED"


# -- labels and numbers (in-process) ---------------------------------------------------------

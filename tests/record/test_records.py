"""The fault matrix, kills: real processes disturbed where runs die in practice (SIGKILL in an
epoch, between epochs and while latency is measured; SIGTERM; a preempted SLURM job); the
outages (tracking server, full disk, divergence) are tests/record/test_outages.py. Each case checks that results.json, MLflow
and the leaderboard agree, and that nothing already computed is lost; the resume test checks
that a killed run continued from its checkpoint ends exactly as an uninterrupted one."""

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

from sparsebench.record.contract import CONTRACT_METRICS
from tests.record.faults import (
    RUN,
    assert_identifiable,
    board,
    cli,
    env,
    kill,
    masks,
    mlflow_run,
    pause,
    reach,
    record,
    start,
    upload,
)

pytestmark = pytest.mark.slow


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "whole.go").touch()  # same config (same run_hash), never held
    whole = start(tmp_path, "whole", pause(tmp_path, "whole", epoch=1, batch=3))
    killed = start(tmp_path, "killed", pause(tmp_path, "killed", epoch=1, batch=3))
    reach(tmp_path, "killed", killed)
    kill(killed)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]
    data = record(tmp_path, "killed")
    assert [row["epoch"] for row in data["history"]] == [0]  # epoch 0 kept, epoch 1 in flight
    client, run = mlflow_run(data)
    assert_identifiable(data, run)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0]
    ranked, left = board(uri)
    assert left == {"running": {data["run_uid"]}} and ranked == {
        record(tmp_path, "whole")["run_uid"]
    }

    # `upload` settles a run whose process is gone: interrupted in results.json and MLflow.
    code, printed = upload(str(tmp_path / "killed"), "--tracking-uri", uri)
    assert code == 0 and printed.startswith("completed: ")
    data = record(tmp_path, "killed")
    assert data["status"] == "interrupted" and "SIGKILL" in data["error"]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert board(uri)[1] == {"interrupted": {data["run_uid"]}}

    (tmp_path / "killed.go").touch()  # the resumed run passes its pause point
    proc = cli(tmp_path, f"resume={tmp_path / 'killed'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, reference = record(tmp_path, "killed"), record(tmp_path, "whole")
    assert resumed["status"] == "ok" and resumed["resumed"] == 1
    assert resumed["mlflow"]["run_id"] == run.info.run_id  # the same MLflow run, continued
    for key in (
        "test/acc",
        "test/loss",
        "val/acc",
        "sparsity/actual",
        "train/samples",
        "flops/train",
        "flops/sparse",
        "params/nonzero",
    ):
        assert resumed["metrics"][key] == reference["metrics"][key], key
    assert resumed["history"] == reference["history"]
    final = masks(tmp_path / "killed/checkpoints/last.ckpt")
    expected = masks(tmp_path / "whole/checkpoints/last.ckpt")
    assert final.keys() == expected.keys() and all(
        torch.equal(final[k], expected[k]) for k in final
    )
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["sparsebench.status"] == "ok"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2]
    ranked, left = board(uri)
    assert ranked == {resumed["run_uid"], reference["run_uid"]} and not left
    # A finished run is not resumed again.
    proc = cli(tmp_path, f"resume={tmp_path / 'killed'}")
    assert proc.returncode == 2 and proc.stderr.startswith("error: run folder ")
    assert "already finished ok" in proc.stderr and "Traceback" not in proc.stderr


def test_kill_9_between_epochs_and_while_latency_is_measured(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    between = start(
        tmp_path, "between", pause(tmp_path, "between", hook="train_epoch_start", epoch=1)
    )
    latency = start(tmp_path, "latency", "hardware.min_run_time=2")  # seconds of timing
    deadline = time.time() + 240  # `between` waits at its pause meanwhile
    results = tmp_path / "latency/results.json"
    while "flops/sparse" not in (json.loads(results.read_text()) if results.exists() else {}).get(
        "metrics", {}
    ):
        assert latency.poll() is None and time.time() < deadline, "latency run ended early"
        time.sleep(0.02)
    kill(latency)  # tested and counted, now timing its kernels
    reach(tmp_path, "between", between)
    kill(between)

    data = record(tmp_path, "between")
    assert [row["epoch"] for row in data["history"]] == [0]
    checkpoint = torch.load(tmp_path / "between/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0  # the last good checkpoint is whole
    assert_identifiable(data, mlflow_run(data)[1])

    data = record(tmp_path, "latency")  # tested and FLOPs counted, killed while timing
    assert "test/acc" in data["metrics"] and "latency/p50_ms" not in data["metrics"]
    client, run = mlflow_run(data)
    assert_identifiable(data, run)  # not FINISHED: the contract is incomplete
    ranked, left = board(uri)
    assert not ranked and left == {
        "running": {record(tmp_path, n)["run_uid"] for n in ("between", "latency")}
    }

    # Resuming the half-measured run trains nothing more and completes the contract.
    proc = cli(tmp_path, f"resume={tmp_path / 'latency'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = record(tmp_path, "latency")
    assert done["status"] == "ok" and set(CONTRACT_METRICS) <= done["metrics"].keys()
    assert done["metrics"]["test/acc"] == data["metrics"]["test/acc"]
    assert done["metrics"]["train/samples"] == data["metrics"]["train/samples"]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert board(uri)[0] == {done["run_uid"]}


def test_sigterm_ends_the_run_as_interrupted_with_exit_143(tmp_path: Path) -> None:
    proc = start(tmp_path, "term", pause(tmp_path, "term", epoch=1, batch=2))
    reach(tmp_path, "term", proc)
    proc.send_signal(signal.SIGTERM)
    (tmp_path / "term.go").touch()  # the batch ends; the run stops there
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    stderr = proc.stderr.read()
    assert f"resume={tmp_path / 'term'}" in stderr and "Traceback" not in stderr
    data = record(tmp_path, "term")
    assert (
        data["status"] == "interrupted"
        and data["error"] == "RunInterrupted: interrupted by SIGTERM"
    )
    assert [row["epoch"] for row in data["history"]] == [0]
    client, run = mlflow_run(data)
    assert run.info.status == "KILLED" and run.data.tags["sparsebench.status"] == "interrupted"
    assert board(f"sqlite:///{tmp_path}/mlflow.db") == (set(), {"interrupted": {data["run_uid"]}})
    assert torch.load(tmp_path / "term/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


def test_a_preempted_submitit_job_is_requeued_and_resumes(tmp_path: Path) -> None:
    # SLURM preemption as submitit delivers it (USR2 to the job): submitit checkpoints the
    # Hydra launcher's job and requeues it into the same job folder, which resumes the run.
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "-m",
        *RUN,
        pause(tmp_path, "job", epoch=1, batch=1),
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"logger.tracking_uri={uri}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsebench", *args],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reach(tmp_path, "job", proc)
    os.kill(int((tmp_path / "job.at").read_text()), signal.SIGUSR2)
    (tmp_path / "job.go").touch()  # the requeued job passes the pause
    assert proc.wait(timeout=400) == 0, proc.stderr.read()[-3000:]
    data = record(tmp_path, "sweep/0")
    assert data["status"] == "ok" and data["resumed"] == 1
    assert [row["epoch"] for row in data["history"]] == [0, 1, 2]
    client, run = mlflow_run(data)
    assert run.info.status == "FINISHED" and run.data.tags["sparsebench.status"] == "ok"
    jobs = [r for r in client.search_runs([run.info.experiment_id]) if "run_hash" in r.data.tags]
    assert [r.info.run_id for r in jobs] == [run.info.run_id]  # one record, continued
    logs = "".join(p.read_text() for p in (tmp_path / "sweep/.submitit").rglob("*.err"))
    assert "this job is preempted" in logs and "Restored all states from the checkpoint" in logs

"""What the fault-matrix tests share (tests/record/test_records.py, test_outages.py): a short RigL
run started as a process, paused at a named point, killed, and its record read back from
results.json, MLflow and the leaderboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from sparsebench.leaderboard.rows import admit
from sparsebench.record.contract import CONTRACT_TAGS
from tests.fixtures import REPO

# RigL on MNIST-1D: 3 epochs of 8 batches, a mask update every 5 steps (masks move mid-epoch).
RUN = [
    "model=mlp",
    "dataset=mnist1d",
    "+method=rigl",
    "method.update_interval=5",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "hardware.threads=1",
    "hardware.min_run_time=0.02",
    "hardware.warmup=1",
    "print_summary=false",
    "trainer.enable_progress_bar=false",
]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out["PYTHONPATH"] = str(REPO)  # tests.fixtures.Pause inside the run
    return out


def pause(tmp: Path, name: str, **options) -> str:
    """A ``trainer.callbacks`` override holding the run at a point (tests.fixtures.Pause)."""
    fields = {"marker": str(tmp / f"{name}.at"), "go": str(tmp / f"{name}.go"), **options}
    body = ",".join(f"{k}:{json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items())
    return f"+trainer.callbacks=[{{_target_:tests.fixtures.Pause,{body}}}]"


def start(tmp: Path, name: str, *extra: str, uri: str | None = None) -> subprocess.Popen:
    keys = {e.split("=")[0] for e in extra}
    args = [
        *(a for a in RUN if a.split("=")[0] not in keys),
        *extra,
        f"hydra.run.dir={tmp / name}",
        f"logger.tracking_uri={uri or f'sqlite:///{tmp}/mlflow.db'}",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "sparsebench", *args],
        cwd=tmp,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sparsebench", *args],
        cwd=tmp,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def reach(tmp: Path, name: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    marker = tmp / f"{name}.at"
    deadline = time.time() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run {name} ended early:\n{proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"run {name} never reached its pause"
        time.sleep(0.05)


def kill(proc: subprocess.Popen, signum: int = signal.SIGKILL) -> None:
    proc.send_signal(signum)
    proc.wait(timeout=120)


def record(tmp: Path, name: str) -> dict:
    return json.loads((tmp / name / "results.json").read_text())


def mlflow_run(data: dict):
    client = MlflowClient(tracking_uri=data["mlflow"]["tracking_uri"])
    return client, client.get_run(data["mlflow"]["run_id"])


def board(uri: str) -> tuple[set[str], dict[str, set[str]]]:
    """Run uids the leaderboard ranks, and those it leaves out by reason."""
    from sparsebench.leaderboard.read import read_runs

    runs = read_runs(uri)
    client = MlflowClient(tracking_uri=uri)
    for run in runs:  # name the runs by the uid results.json holds
        run["name"] = client.get_run(run["id"]).data.tags["sparsebench.run_uid"]
    admitted, left = admit(runs)
    return {r["name"] for r in admitted}, {k: set(v) for k, v in left.items()}


def masks(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith("weight_mask")}


def assert_identifiable(data: dict, run) -> None:
    """A killed run still says what it was: params, config and contract tags from the start."""
    assert run.info.status == "RUNNING" and data["status"] == "running"
    assert run.data.tags["sparsebench.status"] == "running"
    assert set(CONTRACT_TAGS) <= run.data.tags.keys()
    assert run.data.params["method.name"] == "rigl" and len(run.data.params) > 50
    assert run.data.tags["run_hash"] == data["tags"]["run_hash"]


def upload(*args: str) -> tuple[int, str]:
    """``sparsebench upload ARGS`` in-process; (exit code, what it printed)."""
    import contextlib
    import io

    from sparsebench.record.upload import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()

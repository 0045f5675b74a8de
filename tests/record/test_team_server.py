"""Cluster mode for real: an MLflow tracking server on the local PostgreSQL, a multirun sweep
logging to it, and the leaderboard read back from it (PostgreSQL runs on 127.0.0.1:5432)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sparsebench.record.contract import CONTRACT_METRICS, CONTRACT_TAGS
from tests.fixtures import REPO, free_port, run_cli, wait_until_healthy

pytestmark = pytest.mark.slow


ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "team-secret-7"}


@pytest.fixture
def tracking_server(tmp_path: Path, pg_database: str):
    """`mlflow server` as docker-compose.yml runs it (MLflow's basic-auth app, the admin's
    password from the environment, docker/mlflow/basic_auth.ini with a local user store) on a
    free loopback port with a fresh PostgreSQL database; stopped after."""
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the cluster extra ships psycopg2.
    store = pg_database.replace("postgresql://", "postgresql+psycopg2://")
    ini = (REPO / "docker/mlflow/basic_auth.ini").read_text()
    auth = tmp_path / "basic_auth.ini"
    auth.write_text(ini.replace("sqlite:////mlauth/basic_auth.db", f"sqlite:///{tmp_path}/auth.db"))
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_BACKEND_STORE_URI": store,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key",
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--serve-artifacts",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(uri, server, timeout=120)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_sweep_to_postgres_server_and_leaderboard(
    tracking_server: str, tmp_path: Path, monkeypatch
) -> None:
    # Without credentials the server refuses everything but its health check.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{tracking_server}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    # 2 methods x 2 sparsities x 2 seeds on digits/mlp, all to the team server.
    proc = run_cli(
        [
            "-m",
            "debug=fast",
            "hardware.threads=1",
            "hardware.min_run_time=0.05",
            "model=mlp",
            "dataset=digits",
            "+method=random,magnitude",
            "method.sparsity=0.5,0.9",
            "seed=0,1",
            "trainer.limit_train_batches=null",
        ],
        cwd=tmp_path,
        timeout=900,
        env={"MLFLOW_TRACKING_URI": tracking_server, **ADMIN},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # What the MLflow UI shows is what the server's REST API serves: all 8 jobs, each with every
    # metric and tag of the results contract, nested under the sweep's parent.
    served = _search_runs(tracking_server)
    jobs = [run for run in served if "mlflow.parentRunId" in _tags(run)]
    assert len(jobs) == 8 and len(served) == 9
    for run in jobs:
        assert set(CONTRACT_METRICS) <= {m["key"] for m in run["data"]["metrics"]}
        assert set(CONTRACT_TAGS) <= _tags(run).keys()
        assert run["info"]["status"] == "FINISHED"
    out = tmp_path / "board.csv"
    from sparsebench.leaderboard.cli import main

    for key, value in ADMIN.items():
        monkeypatch.setenv(key, value)
    assert main(["--tracking-uri", tracking_server, "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and all(r["n"] == "2" for r in rows)
    assert {(r["method"], round(float(r["sparsity"]), 1)) for r in rows} == {
        ("random", 0.5),
        ("random", 0.9),
        ("magnitude", 0.5),
        ("magnitude", 0.9),
    }
    # The front: a row is on it exactly when no other row is at least as accurate and cheaper.
    for r in rows:
        acc, flops = float(r["mean"]), float(r["flops_sparse"])
        dominated = any(
            float(o["mean"]) >= acc
            and float(o["flops_sparse"]) <= flops
            and (float(o["mean"]) > acc or float(o["flops_sparse"]) < flops)
            for o in rows
        )
        assert (r["flops_front"] == "True") == (not dominated)


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _search_runs(base: str) -> list[dict]:
    """runs/search over the REST API, as the MLflow UI calls it (signed in as the admin)."""
    import base64

    user = f"{ADMIN['MLFLOW_TRACKING_USERNAME']}:{ADMIN['MLFLOW_TRACKING_PASSWORD']}"
    signed = {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}
    url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=sparsebench"
    with urllib.request.urlopen(urllib.request.Request(url, headers=signed)) as r:
        experiment_id = json.load(r)["experiment"]["experiment_id"]
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
        headers={"Content-Type": "application/json", **signed},
    )
    with urllib.request.urlopen(request) as r:
        return json.load(r)["runs"]

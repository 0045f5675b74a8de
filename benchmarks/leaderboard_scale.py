"""How the leaderboard scales with the number of runs in a store.

``python -m benchmarks.leaderboard_scale [--runs 1000 10000 50000] [--postgres]``

Fills fresh MLflow stores with synthetic runs shaped like real ones (the params, tags and
metrics a ``debug=fast`` run records: ~74 params, ~25 tags, ~25 latest metrics and an epoch
history; 5 seeds per configuration, 200 benchmark keys, a few failed and diverged runs) and times
``python -m sparsebench.leaderboard --csv`` on each as a separate process: wall time and peak
memory (the process's own maximum resident set). Stores: a SQLite file; with ``--postgres`` also
a PostgreSQL database read directly and through ``mlflow server`` (first read, then a second
read served by the leaderboard's cache of finished runs).

The runs are written with SQL inserts into the tables MLflow created (logging 50,000 runs through
MLflow's client would take hours); one run is first logged through the client, and its params
and tags are the template.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 defaults to psycopg 3
METHODS = ("dense", "magnitude", "gmp", "random", "rigl", "set", "snip", "wanda", "sr_ste", "nm")
EPOCHS = 10  # history rows per run: train/loss, train/acc, val/loss, val/acc per epoch


def _template(uri: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Log one run through MLflow (creating the schema); its experiment id, params, tag keys."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sparsebench")
    run = client.create_run(experiment, run_name="template")
    params = [(f"trainer.option_{i}", str(i)) for i in range(40)]
    params += [(f"model.option_{i}", f"value-{i}") for i in range(20)]
    params += [(f"dataset.option_{i}", "x" * 12) for i in range(14)]
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params])
    client.set_terminated(run.info.run_id)
    return experiment, params, []


def populate(uri: str, n_runs: int, seed: int = 0) -> None:
    """``n_runs`` synthetic runs in the (new) store at ``uri``."""
    import sqlalchemy as sa

    from sparsebench.record.contract import CONTRACT_METRICS
    from sparsebench.record.results import PACKAGES, STATUS_TAG

    experiment, params, _ = _template(uri)
    rng = random.Random(seed)
    engine = sa.create_engine(uri)
    md = sa.MetaData()
    tables = {
        name: sa.Table(name, md, autoload_with=engine)
        for name in ("runs", "params", "tags", "metrics", "latest_metrics")
    }
    now = int(time.time() * 1000)
    batch: dict[str, list[dict]] = {name: [] for name in tables}

    def flush() -> None:
        with engine.begin() as connection:
            for name, rows in batch.items():
                if rows:
                    connection.execute(tables[name].insert(), rows)
                rows.clear()

    for i in range(n_runs):
        config, seed_of_run = divmod(i, 5)
        key_index = config % 200
        method = METHODS[config % len(METHODS)]
        sparsity = 0.0 if method == "dense" else rng.choice((0.5, 0.7, 0.8, 0.9, 0.95))
        run_hash = f"{config:012x}"
        key = f"dataset{key_index % 4}|model{key_index % 50}|cpu|epochs={1 + key_index // 50}"
        failed = rng.random() < 0.02
        diverged = not failed and rng.random() < 0.01
        run_id = uuid.uuid4().hex
        name = f"{method}-{sparsity:g}-model{key_index % 50}-dataset{key_index % 4}-s{seed_of_run}-{run_hash[:6]}"
        start = now - (n_runs - i) * 60_000
        batch["runs"].append(
            {
                "run_uuid": run_id,
                "name": name,
                "source_type": "UNKNOWN",
                "source_name": "",
                "entry_point_name": "",
                "user_id": "bench",
                "status": "FAILED" if failed else "FINISHED",
                "start_time": start,
                "end_time": start + 30_000,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": f"/tmp/mlruns/{run_id}",
                "experiment_id": int(experiment),
                "deleted_time": None,
            }
        )
        tags = {
            "run_hash": run_hash,
            "benchmark_key": key,
            "model": f"model{key_index % 50}",
            "dataset": f"dataset{key_index % 4}",
            "method": method,
            "hardware": "cpu",
            "seed": str(seed_of_run),
            "git_sha": "0" * 40,
            "pattern": "dense" if method == "dense" else "unstructured",
            "sparsebench.run_uid": uuid.uuid4().hex,
            "hw/cpu": "AMD EPYC",
            "hw/threads": "2",
            "hw/torch": "2.14.1",
            "latency/estimated": "false",
            "hw/train_device": "cpu",
            "mlflow.runName": name,
            STATUS_TAG: "failed" if failed else "diverged" if diverged else "ok",
            **{f"version/{p}": "1.0" for p in PACKAGES},
        }
        batch["tags"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()]
        batch["params"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in params]
        acc = min(0.99, 0.9 - sparsity * 0.1 + rng.gauss(0, 0.01))
        metrics = {k: rng.random() for k in CONTRACT_METRICS}
        metrics.update(
            {
                "test/acc": acc,
                "sparsity/actual": sparsity,
                "train/samples": 60_000.0,
                "flops/sparse": 1e6 * (1 - sparsity),
                "flops/dense": 1e6,
                "latency/p50_ms": 1 + rng.random(),
                "time/startup_s": 9.0,
                "macs/dense": 5e5,
                "throughput/samples_per_s": 240.0,
            }
        )
        if failed:
            metrics = {"train/loss": 2.3}
        for k, v in metrics.items():
            row = {
                "key": k,
                "value": v,
                "timestamp": start,
                "step": 0,
                "is_nan": False,
                "run_uuid": run_id,
            }
            batch["latest_metrics"].append(row)
            batch["metrics"].append(dict(row))
        for epoch in range(1, EPOCHS):
            for k in ("train/loss", "train/acc", "val/loss", "val/acc"):
                batch["metrics"].append(
                    {
                        "key": k,
                        "value": rng.random(),
                        "timestamp": start + epoch,
                        "step": epoch,
                        "is_nan": False,
                        "run_uuid": run_id,
                    }
                )
        if len(batch["runs"]) == 1000:
            flush()
    flush()


def measure(uri: str, workdir: Path) -> tuple[float, float, str]:
    """Wall seconds and peak MB of one ``sparsebench.leaderboard`` process; its last line.

    The peak is GNU time's (``%M``): a child's own ``ru_maxrss`` would include the memory of
    this process, which it was forked from."""
    start = time.perf_counter()
    process = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "peak_kb=%M",
            sys.executable,
            "-m",
            "sparsebench.leaderboard",
            "--tracking-uri",
            uri,
            "--csv",
            str(workdir / "board.csv"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160", "XDG_CACHE_HOME": str(workdir / "cache")},
    )
    seconds = time.perf_counter() - start
    output = process.stdout + process.stderr
    if process.returncode != 0 and "no complete ok runs" not in output:
        raise RuntimeError(f"leaderboard failed on {uri}:\n{output[-3000:]}")
    peak = int(output.rsplit("peak_kb=", 1)[1].split()[0]) / 1024
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    return seconds, peak, (lines[-1] if lines else process.stderr.splitlines()[0])[:90]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_database(name: str) -> str:
    import psycopg2

    connection = psycopg2.connect(f"{PG.replace('+psycopg2', '')}/postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"{PG}/{name}"


def _server(backend: str, artifacts: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(uri + "/health", timeout=1).close()
            return process, uri
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("mlflow server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[0, 1000, 10_000, 50_000])
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"host: {os.cpu_count()} cores, load average {load:.2f} at start")
    print(f"{'store':<34} {'runs':>7} {'fill s':>7} {'read s':>7} {'peak MB':>8}  last line")
    for n in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            stores = [("sqlite", f"sqlite:///{work / 'mlflow.db'}")]
            if args.postgres:
                stores.append(("postgresql (direct)", _postgres_database(f"sb_scale_{n}")))
            for label, uri in stores:
                start = time.perf_counter()
                populate(uri, n)
                fill = time.perf_counter() - start
                seconds, peak, last = measure(uri, work)
                print(f"{label:<34} {n:>7} {fill:>7.1f} {seconds:>7.1f} {peak:>8.0f}  {last}")
                if label.startswith("postgresql"):
                    server, http = _server(uri, work / "artifacts")
                    try:
                        for read in ("first read", "cached read"):
                            seconds, peak, last = measure(http, work)
                            print(
                                f"{'mlflow server on postgresql, ' + read:<34} {n:>7} {'':>7} "
                                f"{seconds:>7.1f} {peak:>8.0f}  {last}"
                            )
                    finally:
                        server.terminate()
                        server.wait()
            shutil.rmtree(work / "cache", ignore_errors=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

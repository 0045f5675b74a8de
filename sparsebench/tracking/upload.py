"""``sparsebench upload RUN_DIR...``: send runs kept in results.json to an MLflow tracking store.

For runs made while the tracking server was down (or with logging off). Each run carries a
``sparsebench.run_uid`` tag, so uploading the same run twice, or a run that was logged live,
does not duplicate it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sparsebench.tracking.identity import flatten
from sparsebench.tracking.mlflow_logging import DEFAULT_URI
from sparsebench.tracking.mlflow_logging import experiment_id as get_experiment_id

UID_TAG = "sparsebench.run_uid"


def upload_run(client, results_path: Path, experiment_name: str) -> tuple[str, bool]:
    """Log one results.json; returns (run_id, created). Skips runs already in the store."""
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    data = json.loads(results_path.read_text())
    uid = data["run_uid"]
    experiment_id = get_experiment_id(client, experiment_name)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{UID_TAG}` = '{uid}'", max_results=1
    )
    if found:
        return found[0].info.run_id, False
    tags = {**data["tags"], UID_TAG: uid}
    run = client.create_run(experiment_id, start_time=int(data["started"] * 1000), tags=tags)
    run_id = run.info.run_id
    ts = int(data.get("finished", data["started"]) * 1000)
    metrics = [Metric(k, v, ts, 0) for k, v in data["metrics"].items()]
    for row in data.get("history", []):
        epoch = int(row["epoch"])
        metrics += [Metric(k, v, ts, epoch) for k, v in row.items() if k != "epoch"]
    params = [Param(k, str(v)[:6000]) for k, v in flatten(data.get("config", {})).items()]
    for i in range(0, max(len(metrics), len(params)), 100):
        client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
    client.log_batch(run_id, tags=[RunTag("sparsebench.uploaded", "true")])
    client.log_artifact(run_id, str(results_path))
    status = RunStatus.FINISHED if data.get("status") == "ok" else RunStatus.FAILED
    client.set_terminated(run_id, RunStatus.to_string(status), end_time=ts)
    return run_id, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparsebench upload", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="run directories holding results.json"
    )
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
    )
    parser.add_argument(
        "--experiment", default=None, help="default: each run's logger.experiment_name"
    )
    args = parser.parse_args(argv)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    paths = []
    for run_dir in args.run_dirs:
        path = run_dir / "results.json" if run_dir.is_dir() else run_dir
        if not path.is_file():
            parser.error(f"'{run_dir}' holds no results.json")
        paths.append(path)
    for path in paths:
        config = json.loads(path.read_text()).get("config", {})
        experiment = args.experiment or config.get("logger", {}).get(
            "experiment_name", "sparsebench"
        )
        run_id, created = upload_run(client, path, experiment)
        print(f"{'uploaded' if created else 'already there'}: {path.parent} -> run {run_id}")
    return 0

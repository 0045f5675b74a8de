"""``sparsebench upload RUN_DIR...``: send runs kept in results.json to an MLflow tracking store.

For runs made while the tracking server was down (or with logging off), and for runs whose
MLflow record stopped part-way (a server that went down mid-run, a full disk). Each run carries
a ``sparsebench.run_uid`` tag: a run not in the store is created; a run already there is
completed (missing params, metrics, epoch rows, tags, artifacts and the final status), so the
command is idempotent and a second call finds nothing to do.

A results.json still saying ``running`` whose process is gone (on this host) was killed
without a word (SIGKILL, out of memory, power loss): it is recorded as ``interrupted`` first.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from sparsebench.config.cli import command_parser, fail, run_command
from sparsebench.errors import ConfigError
from sparsebench.record.identity import flatten
from sparsebench.record.mlflow_logging import experiment_id as get_experiment_id
from sparsebench.record.mlflow_logging import store_problem
from sparsebench.record.results import MLFLOW_STATUS, STATUS_TAG, write_atomic
from sparsebench.record.resume import process_alive

UID_TAG = "sparsebench.run_uid"


def settle(path: Path, data: dict) -> dict:
    """Mark a run whose process died without recording a status as interrupted."""
    if data.get("status") == "running" and not process_alive(data):
        process = data.get("process") or {}
        data.update(
            status="interrupted",
            finished=time.time(),
            error=f"the process ({process.get('pid')} on {process.get('host')}) ended "
            "without recording a status (SIGKILL, out of memory or power loss)",
        )
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))
    return data


def upload_run(client, results_path: Path, experiment_name: str) -> tuple[str, str]:
    """Log one results.json; returns (run_id, what was done: created, completed or unchanged)."""
    from mlflow.entities import Metric, Param, RunTag

    data = settle(results_path, json.loads(results_path.read_text()))
    uid = data["run_uid"]
    experiment_id = get_experiment_id(client, experiment_name)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{UID_TAG}` = '{uid}'", max_results=1
    )  # uid: hex digits, safe to quote
    if found:
        run, action = found[0], "completed"
    else:
        tags = {**data["tags"], UID_TAG: uid}
        run = client.create_run(experiment_id, start_time=int(data["started"] * 1000), tags=tags)
        action = "created"
    run_id = run.info.run_id
    have_metrics = run.data.metrics if found else {}
    have_params = run.data.params if found else {}
    have_tags = run.data.tags if found else {}
    ts = int(data.get("finished", data["started"]) * 1000)

    # Epoch rows at step = epoch, the final contract at the last epoch's step (as live runs).
    history = data.get("history", [])
    last = max([int(row["epoch"]) for row in history] or [0])
    logged_steps = {}
    metrics = []
    for row in history:
        for key, value in row.items():
            if key == "epoch" or not math.isfinite(float(value)):
                continue
            if key not in logged_steps:
                logged_steps[key] = (
                    {m.step for m in client.get_metric_history(run_id, key)} if found else set()
                )
            if int(row["epoch"]) not in logged_steps[key]:
                metrics.append(Metric(key, float(value), ts, int(row["epoch"])))
    metrics += [
        Metric(k, float(v), ts, last)
        for k, v in data["metrics"].items()
        if have_metrics.get(k) != float(v)
    ]
    params = [
        Param(k, str(v)[:6000])
        for k, v in flatten(data.get("config", {})).items()
        if k not in have_params
    ]
    status = data.get("status", "running")
    wanted_tags = {**data["tags"], UID_TAG: uid, STATUS_TAG: status}
    if data.get("error"):
        wanted_tags["sparsebench.error"] = str(data["error"])[:5000]
    tags = [RunTag(k, str(v)) for k, v in wanted_tags.items() if have_tags.get(k) != str(v)]
    mlflow_status = MLFLOW_STATUS.get(status, "FAILED")
    logged = _artifact_names(client, run_id) if found else set()
    if (
        found
        and not metrics
        and not params
        and not tags
        and "results.json" in logged
        and run.info.status == mlflow_status
    ):
        return run_id, "unchanged"
    for i in range(0, max(len(metrics), len(params), len(tags)), 100):
        client.log_batch(
            run_id, metrics=metrics[i : i + 100], params=params[i : i + 100], tags=tags[i : i + 100]
        )
    if not found:
        client.set_tag(run_id, "sparsebench.uploaded", "true")
    # The record's latest results.json replaces the one logged live (same artifact path).
    client.log_artifact(run_id, str(results_path))
    config = results_path.parent / "config.yaml"
    if config.is_file() and "config.yaml" not in logged:
        client.log_artifact(run_id, str(config))
    if mlflow_status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, mlflow_status, end_time=ts)
    return run_id, action


def _artifact_names(client, run_id: str) -> set[str]:
    """The run's top-level artifacts, listed once."""
    try:
        return {f.path for f in client.list_artifacts(run_id)}
    except Exception:  # an artifact store that cannot list: log again (same path, replaced)
        return set()


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("sparsebench upload", __doc__, "each run's logger.experiment_name")
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, help="run directories holding results.json"
    )
    return run_command(parser, argv, _upload)


def results_path(run_dir: Path) -> Path:
    """``RUN_DIR/results.json`` (or the file given), or ConfigError saying why it is not one."""
    path = run_dir / "results.json" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no results.json.")
    try:
        data = json.loads(path.read_text())
        missing = [k for k in ("run_uid", "started", "tags", "metrics") if k not in data]
    except (OSError, ValueError, TypeError) as exc:
        missing = [f"({type(exc).__name__}: {str(exc)[:100]})"]
    if missing:
        raise ConfigError(
            f"{path} is not a sparsebench results.json (no {', '.join(missing)}); nothing was "
            "uploaded."
        )
    return path


def _upload(args: argparse.Namespace) -> int:
    paths = [results_path(run_dir) for run_dir in args.run_dirs]
    problem = store_problem(args.tracking_uri)
    if problem:
        return fail(f"{problem}; nothing was uploaded.")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    words = {"created": "uploaded", "completed": "completed", "unchanged": "already complete"}
    for path in paths:
        config = json.loads(path.read_text()).get("config", {})
        experiment = args.experiment or config.get("logger", {}).get(
            "experiment_name", "sparsebench"
        )
        run_id, action = upload_run(client, path, experiment)
        print(f"{words[action]}: {path.parent} -> run {run_id}")
    return 0

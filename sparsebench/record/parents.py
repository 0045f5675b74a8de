"""Parent MLflow runs: the one run that the runs of a multirun sweep, a search study, the random
search baseline or a claim of the reproduction suite are nested under.

A :class:`ParentRun` is created with its name, tags and params, and published: its id (and its
store) is written to ``FOLDER/mlflow_parent.json`` beside the jobs' own folders, in whichever
process the jobs run (a pool, SLURM through the submitit launcher, on a shared filesystem);
each job's recorder finds the file above its output folder (:func:`parent_run_id`) and tags its
run with ``mlflow.parentRunId``. When the jobs are done the parent gets its summary (metrics,
tags, artifacts and, per ``run_hash``, the mean, std and n of the jobs' main metrics over
replicates) and is closed; MLflow trouble at that point is a warning, never an error, since
every job's own record is complete.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparsebench.errors import first_line
from sparsebench.record.mlflow_logging import create_run, send_batches

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
AGGREGATED = (
    "test/acc",
    "val/acc",
    "test/ppl",
    "val/ppl",
    "sparsity/actual",
    "flops/sparse",
    "latency/p50_ms",
)


def aggregates(folder: Path) -> dict[str, float]:
    """``RUN_HASH/METRIC/mean|std|n`` over the ok jobs in ``folder`` (their results.json)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in sorted(folder.glob("*/results.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("status") != "ok":
            continue
        for metric in AGGREGATED:
            value = data.get("metrics", {}).get(metric)
            if value is not None and math.isfinite(value):
                values[(data["tags"]["run_hash"], metric)].append(float(value))
    out: dict[str, float] = {}
    for (run_hash, metric), found in values.items():
        out[f"{run_hash}/{metric}/mean"] = statistics.fmean(found)
        out[f"{run_hash}/{metric}/std"] = statistics.stdev(found) if len(found) > 1 else 0.0
        out[f"{run_hash}/{metric}/n"] = float(len(found))
    return out


def override_params(overrides: list[str]) -> dict[str, str]:
    """A parent run's params: every override (``overrides``) and each one's value by key."""
    params = {"overrides": " ".join(overrides)}
    for override in overrides:
        if "=" in override:
            key, value = override.split("=", 1)
            params[key.lstrip("+~")] = value
    return params


def parent_run_id(output_dir: str | Path) -> str | None:
    """The parent run id published above a job's folder ``output_dir``, if there is one."""
    path = Path(output_dir).parent / PARENT_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


class ParentRun:
    """One parent run in the store of ``client``."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def start(
        cls,
        client,
        experiment: str,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
    ) -> ParentRun:
        """A new parent run named ``name`` in ``experiment``, with ``tags`` and ``params``."""
        parent = cls(client, create_run(client, experiment, name, dict(tags)))
        if params:
            parent.log(params=params)
        return parent

    @classmethod
    def published(cls, folder: Path) -> ParentRun | None:
        """The parent run published in ``folder`` (by this or another process), or None."""
        path = folder / PARENT_FILE
        if not path.is_file():
            return None
        from mlflow import MlflowClient

        data = json.loads(path.read_text())
        return cls(MlflowClient(tracking_uri=data["tracking_uri"]), data["run_id"])

    def publish(self, folder: Path) -> None:
        """Write the run's id and store to ``folder``, where the jobs in its sub-folders find it."""
        folder.mkdir(parents=True, exist_ok=True)
        record = {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri}
        (folder / PARENT_FILE).write_text(json.dumps(record))

    def log(
        self,
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Iterable[Path] = (),
        dicts: Mapping[str, Any] | None = None,
    ) -> None:
        """Metrics (at step 0), params (MLflow's 6000 characters at most), tags, files and
        JSON documents (``dicts``: artifact name -> data)."""
        metrics, params, tags = dict(metrics or {}), dict(params or {}), dict(tags or {})
        send_batches(self.client, self.run_id, metrics, 0, params, tags)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        for name, data in (dicts or {}).items():
            self.client.log_dict(self.run_id, data, name)

    def close(self, jobs: Path | None = None, status: str = "FINISHED", **summary: Any) -> bool:
        """Log ``summary`` (the arguments of :meth:`log`) and the :func:`aggregates` of the
        jobs in ``jobs``, then end the run with ``status``; False, with a warning, when MLflow
        fails (the jobs' records have it all)."""
        try:
            self.log(**summary)
            if jobs is not None:
                self.log(metrics=aggregates(jobs))
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {first_line(exc, 300)}"
            log.warning("could not close the parent MLflow run %s (%s)", self.run_id, problem)
            return False
        return True

    def delete(self) -> None:
        self.client.delete_run(self.run_id)


__all__ = ["PARENT_FILE", "ParentRun", "aggregates", "override_params", "parent_run_id"]

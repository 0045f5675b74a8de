"""One parent MLflow run per Hydra multirun sweep; every job's run is nested under it.

A Hydra callback creates the parent run when the sweep starts, in the launching process, and
writes its id to ``<sweep dir>/mlflow_parent.json``; each job (in this process, a pool, or a
SLURM job through the submitit launcher, on the shared filesystem) finds the file beside its own
output folder and tags its run with ``mlflow.parentRunId``. The parent is named after the
sweep's overrides and holds them as params; when the sweep ends it gets, per ``run_hash``
(replicates over seeds), the mean, std and n of the jobs' main metrics, and is closed.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sparsebench.config.compose import shown_override

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"
AGGREGATED = ("test/acc", "val/acc", "sparsity/actual", "flops/sparse", "latency/p50_ms")


def aggregates(sweep_dir: Path) -> dict[str, float]:
    """``RUN_HASH/METRIC/mean|std|n`` over the ok jobs of a sweep (their results.json)."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in sorted(sweep_dir.glob("*/results.json")):
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
    params = {"overrides": " ".join(overrides)[:6000]}
    params.update({o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1][:6000]
                   for o in overrides if "=" in o})  # fmt: skip
    return params


def log_aggregates(client, run_id: str, folder: Path) -> None:
    """Log :func:`aggregates` of the jobs in ``folder`` to the parent run ``run_id``."""
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    metrics = [Metric(k, v, now, 0) for k, v in sorted(aggregates(folder).items())]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def parent_run_id(output_dir: str | Path) -> str | None:
    """The sweep's parent run id, when ``output_dir`` is a job folder of a multirun sweep."""
    path = Path(output_dir).parent / PARENT_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


class ParentRun(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("logger") is None:
            return
        from sparsebench.record.mlflow_logging import create_run, tracking_client

        client, problem = tracking_client(config)
        if problem:
            return  # logging is off, or jobs will report the dead server themselves
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = [shown_override(str(o)) for o in config.hydra.overrides.task]
        name = " ".join(overrides)
        name = f"sweep {name[:200] + '...' if len(name) > 200 else name or sweep_dir.name}"
        try:
            run_id = create_run(client, config.logger.experiment_name, name,
                                {"sparsebench.sweep": str(sweep_dir)})  # fmt: skip
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in override_params(overrides).items()]
            client.log_batch(run_id, params=params)
        except Exception as exc:  # the sweep goes on without a parent
            log.warning("could not create the sweep's parent MLflow run (%s)", exc)
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(
            json.dumps({"run_id": run_id, "tracking_uri": client.tracking_uri})
        )
        self.client, self.run_id = client, run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if getattr(self, "run_id", None):
            try:
                log_aggregates(self.client, self.run_id, Path(config.hydra.sweep.dir))
                self.client.set_terminated(self.run_id)
            except Exception as exc:
                log.warning("could not close the sweep's parent MLflow run (%s)", exc)


__all__ = ["PARENT_FILE", "ParentRun", "log_aggregates", "override_params", "parent_run_id"]

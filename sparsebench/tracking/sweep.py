"""One parent MLflow run per Hydra multirun sweep; every job's run is nested under it.

A Hydra callback creates the parent run when the sweep starts, in the launching process, and
writes its id to ``<sweep dir>/mlflow_parent.json``; each job (in this process, a pool, or a
SLURM job through the submitit launcher, on the shared filesystem) finds the file beside its own
output folder and tags its run with ``mlflow.parentRunId``. The parent is closed at sweep end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent.json"


def parent_run_id(output_dir: str | Path) -> str | None:
    """The sweep's parent run id, when ``output_dir`` is a job folder of a multirun sweep."""
    path = Path(output_dir).parent / PARENT_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


class ParentRun(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("logger") is None:
            return
        from sparsebench.tracking.mlflow_logging import create_run, tracking_client

        client, problem = tracking_client(config)
        if problem:
            return  # logging is off, or jobs will report the dead server themselves
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            run_id = create_run(client, config.logger.experiment_name, f"sweep {sweep_dir.name}",
                                {"sparsebench.sweep": str(sweep_dir)})  # fmt: skip
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
                self.client.set_terminated(self.run_id)
            except Exception as exc:
                log.warning("could not close the sweep's parent MLflow run (%s)", exc)


__all__ = ["PARENT_FILE", "ParentRun", "parent_run_id"]

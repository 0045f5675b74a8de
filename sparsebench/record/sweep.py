"""The parent MLflow run of a Hydra multirun sweep (a Hydra callback, ``hydra.callbacks`` in
conf/config.yaml): every job's run is nested under it.

It is created when the sweep starts, in the launching process, named after the sweep's
overrides and holding them as params, and published in the sweep folder, beside the jobs'
folders (:mod:`sparsebench.record.parents`); when the sweep ends it gets, per ``run_hash``
(replicates over seeds), the mean, std and n of the jobs' main metrics, and is closed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sparsebench.config.compose import shown_override
from sparsebench.record.parents import ParentRun, override_params

log = logging.getLogger(__name__)


class SweepParent(Callback):
    parent: ParentRun | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("logger") is None:
            return
        from sparsebench.record.mlflow_logging import tracking_client

        client, problem = tracking_client(config)
        if problem:
            return  # logging is off, or jobs will report the dead server themselves
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = [shown_override(str(o)) for o in config.hydra.overrides.task]
        name = " ".join(overrides)
        name = f"sweep {name[:200] + '...' if len(name) > 200 else name or sweep_dir.name}"
        try:
            self.parent = ParentRun.start(
                client,
                config.logger.experiment_name,
                name,
                {"sparsebench.sweep": str(sweep_dir)},
                override_params(overrides),
            )
        except Exception as exc:  # the sweep goes on without a parent
            log.warning("could not create the sweep's parent MLflow run (%s)", exc)
            return
        self.parent.publish(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is not None:
            self.parent.close(jobs=Path(config.hydra.sweep.dir))


__all__ = ["SweepParent"]

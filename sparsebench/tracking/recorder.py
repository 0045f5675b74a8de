"""One run's record: results.json and its MLflow run, opened before training, closed after.

Only global rank zero writes: under DDP every rank runs the runner, but one results.json and
one MLflow run come out. Closing (also on failure) marks the status, sends the contract to
MLflow, and says how to upload later if the server was unreachable.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sparsebench.summary import print_summary
from sparsebench.tracking.identity import flatten
from sparsebench.tracking.mlflow_logging import SafeMLFlowLogger, make_logger
from sparsebench.tracking.results import Results
from sparsebench.tracking.sweep import parent_run_id

log = logging.getLogger(__name__)


class RunRecorder:
    """Context manager around a run: ``with RunRecorder(cfg, out, tags) as rec: ...``."""

    def __init__(
        self, cfg: DictConfig, output_dir: Path, tags: dict[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.is_zero = getattr(rank_zero_only, "rank", 0) == 0
        self.results = Results(self.output_dir, cfg, write=self.is_zero)
        self.results.update(tags=tags)
        self.notes: list[str] = []  # tracking problems (each followed by how to upload)
        self.lines: list[str] = []  # anything else the summary should show (e.g. transformations)
        self.artifacts: list[Path] = []  # files logged beside results.json (e.g. genotype.json)
        self.logger: SafeMLFlowLogger | None = None
        if self.is_zero:
            parent = parent_run_id(self.output_dir)
            if parent:  # a job of a multirun sweep: nest under the sweep's run
                self.results.update(tags={"mlflow.parentRunId": parent})
            self.logger, problem = make_logger(cfg, self.results.tags)
            if problem:
                self.notes.append(f"MLflow: {problem}; results are kept in {self.results.path}.")

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(exc)
        return False  # never swallow the error

    def close(self, error: BaseException | None = None) -> None:
        self.results.finish(error)
        if not self.is_zero:
            return
        logger = self.logger
        if logger is not None:
            config_path = self.output_dir / "config.yaml"
            OmegaConf.save(self.cfg, config_path, resolve=True)
            params = flatten(self.results.data["config"])
            logger.log_final(
                self.results.metrics,
                params,
                self.results.tags,
                [self.results.path, config_path, *self.artifacts],
            )
            status = self.results.data["status"]
            logger.finalize({"ok": "success", "pruned": "KILLED"}.get(status, "failed"))
            if logger.failure:
                self.notes.append(f"{logger.failure}; results are kept in {self.results.path}.")
            else:
                self.results.data["mlflow"] = {
                    "tracking_uri": logger._tracking_uri,
                    "run_id": logger.run_id,
                }
                self.results.save()
        if self.notes:
            self.notes.append(
                f"Send them to a tracking server later with: sparsebench upload {self.output_dir}"
            )
        if error is None and self.cfg.print_summary:
            print_summary(self.results.metrics, self.results.tags, self.lines + self.notes)
        else:
            for note in self.notes:
                log.warning(note)

"""One run's record: results.json and its MLflow run, opened before training, closed after.

The lifecycle (docs/records.md): the record opens as ``running`` with the
resolved config (MLflow params and ``config.yaml``) and the contract tags, so even a run killed
with SIGKILL says what it was; every epoch's row goes to both; closing sets the final status
(``ok`` only with the whole contract) in results.json first, then in MLflow (FINISHED, FAILED
or KILLED, and the exact state as the ``sparsebench.status`` tag).

Only global rank zero writes: under DDP every rank runs the runner, but one results.json and
one MLflow run come out. SIGTERM and SIGINT are turned into :class:`RunInterrupted` while the
record is open: during training at the end of the current batch (so the state stays
consistent), elsewhere at once.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from sparsebench.config.store import Store
from sparsebench.errors import RunInterrupted
from sparsebench.record.identity import flatten
from sparsebench.record.mlflow_logging import MlflowRun, open_run
from sparsebench.record.parents import parent_run_id
from sparsebench.record.results import MLFLOW_STATUS, Results, write_atomic
from sparsebench.record.summary import print_summary
from sparsebench.record.ui import ui_link

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunRecorder:
    """Context manager around a run: ``with RunRecorder(cfg, out, tags) as rec: ...``.

    ``contract``: contract tags only the runner knows (the built method's pattern);
    ``tags``: extra tags (hardware fingerprint, study and trial); ``resume``: continue the
    unfinished record in ``output_dir`` (same run uid and MLflow run)."""

    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        tags: dict[str, str] | None = None,
        contract: dict[str, str] | None = None,
        resume: bool = False,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.is_zero = getattr(rank_zero_only, "rank", 0) == 0
        self.results = Results(
            self.output_dir, cfg, write=self.is_zero, contract_tags=contract, resume=resume
        )
        self.results.update(tags=tags)
        self.notes: list[str] = []  # tracking problems (each followed by how to upload)
        self.lines: list[str] = []  # anything else the summary should show (e.g. transformations)
        self.artifacts: list[Path] = []  # files logged beside results.json (e.g. genotype.json)
        self.mlflow: MlflowRun | None = None
        self.in_training = False  # set by the training callbacks: signals wait for the batch end
        self.signal: int | None = None
        self._handlers: dict[int, object] = {}
        if self.is_zero:
            self._open_mlflow(resume)

    def _open_mlflow(self, resume: bool) -> None:
        config_path = self.output_dir / "config.yaml"
        write_atomic(config_path, OmegaConf.to_yaml(self.cfg, resolve=True))  # resume reads it
        if not resume:
            parent = parent_run_id(self.output_dir)
            if parent:  # a job of a multirun sweep: nest under the sweep's run
                self.results.update(tags={"mlflow.parentRunId": parent})
        previous = self.results.mlflow.get("run_id") if resume else None
        self.mlflow, problem = open_run(self.cfg, self.results.tags, previous)
        if problem:
            self.notes.append(f"MLflow: {problem}; results are kept in {self.results.path}.")
            return
        self.results.set_mlflow(tracking_uri=self.mlflow.tracking_uri, run_id=self.mlflow.run_id)
        if not resume:  # a resumed run's params are there already (and cannot change)
            config = self.results.config
            self.mlflow.log(
                "logging the config",
                params=flatten(config),
                tags=dict(self.results.tags),
                artifacts=[config_path],
            )
            self.mlflow.log_dataset(dict(config.get("dataset") or {}))
        if self.cfg.logger.get("log_system_metrics"):
            self.mlflow.start_system_metrics()
        self.mlflow.terminate("RUNNING", "running")

    # -- during the run -------------------------------------------------------------------
    def add_epoch(self, row: dict[str, float]) -> None:
        """One epoch's train and val metrics: into results.json, and to MLflow at step =
        the row's epoch."""
        self.results.add_epoch(row)
        if self.mlflow is not None:
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            self.mlflow.log("logging an epoch", metrics, step=int(row["epoch"]))

    def add_transform(
        self, sections: dict[str, Any], metrics: dict[str, float], description: list[str]
    ) -> None:
        """What a model transformation adds to the record: its sections (DASS's genotype; each
        also NAME.json beside results.json), metrics, and description lines (the ``transform``
        section, shown in the summary)."""
        for key, value in sections.items():
            self.results.attach(key, value)
            path = self.output_dir / f"{key}.json"
            write_atomic(path, json.dumps(value, indent=1, default=str))
            self.artifacts.append(path)
        self.results.update(metrics)
        if description:
            self.results.attach("transform", description)
            self.lines += description

    def _on_signal(self, signum: int, frame) -> None:
        first = self.signal is None
        self.signal = signum
        if first:
            log.warning(
                "received %s: ending the run as interrupted%s",
                signal.Signals(signum).name,
                " after this batch" if self.in_training else "",
            )
        if not self.in_training or not first:
            raise RunInterrupted(signum)  # a second signal does not wait

    def log_model(self, model, example) -> None:
        """``logger.log_model=true``: the final model as an MLflow logged model of the run
        (its id in results.json); after the contract's metrics, before the run ends."""
        if not (self.is_zero and self.mlflow and self.cfg.logger.get("log_model")):
            return
        model_id = self.mlflow.log_model(model, example)
        if model_id is not None:
            self.results.set_mlflow(model_id=model_id)
        else:
            self.lines.append(
                "logger.log_model: the model could not be logged (see the "
                "warning above); its weights are in checkpoints/."
            )

    def check_signal(self) -> None:
        """Raise :class:`RunInterrupted` if a signal arrived (training calls this per batch)."""
        if self.signal is not None:
            raise RunInterrupted(self.signal)

    def __enter__(self) -> RunRecorder:
        for signum in SIGNALS:
            try:
                self._handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: leave signals to the caller
                break
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        if self.signal is not None and exc is not None and not isinstance(exc, RunInterrupted):
            # Lightning stops fit on SIGTERM itself (SIGTERMException, exit code 0): the
            # signal is what ended the run, and the exit code says so.
            interrupted = RunInterrupted(self.signal)
            self.close(interrupted)
            raise interrupted from exc
        self.close(exc)
        return False  # never swallow the error

    # -- at the end -----------------------------------------------------------------------
    def close(self, error: BaseException | None = None) -> None:
        results = self.results
        try:
            results.finish(error)
        finally:
            if self.is_zero:
                self._close_mlflow()
        if not self.is_zero:
            return
        if self.notes:
            self.notes.append(
                f"Send them to a tracking server later with: sparsebench upload {self.output_dir}"
            )
        if results.status != "ok" and error is None:
            log.warning("run %s: %s", results.status, results.error)
        if results.status == "ok" and self.cfg.print_summary:
            print_summary(results.metrics, results.tags, self.lines + self.notes)
        else:
            for note in self.notes:
                log.warning(note)
        if self.cfg.print_summary:
            for line in self.where():
                print(line, flush=True)

    def where(self) -> list[str]:
        """Where the run's record is: its folder and, when logged, its MLflow run and URL."""
        lines = [f"run folder: {self.output_dir} (results.json, config.yaml, checkpoints/)"]
        run = self.mlflow
        if run is None or run.failure:
            return lines
        link = ui_link(run.tracking_uri, run.experiment_id, run.run_id)
        if Store.of(run.tracking_uri).http:
            return [*lines, f"MLflow run: {run.run_id}  {link}"]
        return [*lines, f"MLflow run: {run.run_id} (browse: {link})"]

    def _close_mlflow(self) -> None:
        run, results = self.mlflow, self.results
        if run is None:
            return
        step = max([int(row["epoch"]) for row in results.history] or [0])
        # Contract metrics at the last epoch's step: val/acc lands on its curve's last point.
        tags = dict(results.tags)
        if results.error:
            tags["sparsebench.error"] = results.error[:5000]
        run.log(
            "final logging",
            results.metrics,
            step=step,
            tags=tags,
            artifacts=[results.path, *self.artifacts],
        )
        run.terminate(MLFLOW_STATUS[results.status], results.status)
        if run.failure:
            self.notes.append(f"{run.failure}; results are kept in {results.path}.")

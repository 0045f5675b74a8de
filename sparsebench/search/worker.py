"""The search worker: it owns the study, asks Optuna for a trial, composes the trial's Hydra
config (``hydra.compose`` with the trial's overrides), runs the training runner in-process and
tells Optuna the result.

Any number of workers share one study through its storage (N local processes with
``workers=N``, or a Hydra multirun of workers, e.g. on SLURM through the submitit launcher).
Exactly ``n_trials`` trials complete: a worker starts a trial only while completed + running
trials are fewer than ``n_trials``, and a trial that finds itself beyond the count (two workers
asked at once) stops before training, marked failed with ``surplus=true``. On RDB storages a
worker's heartbeat marks its trial failed when the worker dies, and the trial is retried with
the same parameters (Optuna's RetryFailedTrialCallback). Restarted workers continue the study.

MLflow: one parent run per study (shared by every worker through a study attribute); each trial
is a nested run tagged with ``optuna.study`` and ``optuna.trial``. When the study is complete,
the best trial (or the Pareto front) is printed and logged to the parent run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from sparsebench.config.checks import validate
from sparsebench.config.schemas import task_of
from sparsebench.errors import ConfigError, first_line
from sparsebench.record.parents import ParentRun, override_params
from sparsebench.record.results import Results
from sparsebench.record.tables import cell
from sparsebench.search.spec import StudySpec, baseline_cell, baseline_options, load_spec
from sparsebench.search.storage import open_storage, redact
from sparsebench.training.parts import build_hardware, build_method, build_transform

log = logging.getLogger(__name__)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ACTIVE = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
PARENT_ATTR = "mlflow_parent_run_id"


class SurplusTrial(Exception):
    """The study already has ``n_trials`` finished or running trials."""


def compose_trial(overrides: list[str]) -> DictConfig:
    """The training config of one trial, composed like ``python -m sparsebench OVERRIDES``."""
    from sparsebench.config.checks import check_group_choices
    from sparsebench.config.compose import compose

    check_group_choices(overrides)
    return compose(overrides)


def check_space(spec: StudySpec, extra: list[str]) -> None:
    """Compose and validate a trial config at every corner of every dimension, before any
    trial runs: an unknown key or a value the config rejects is one sentence."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if spec.baseline:  # check the first of the baseline's studies (they differ in values only)
        options = baseline_options(spec)
        spec = baseline_cell(spec, options, options["sparsities"][0], options["seeds"][0])
    where = f"sweep '{spec.name}'"
    try:
        compose_trial([*spec.overrides, *extra, "paths.output_dir=."])
    except ConfigError as exc:
        raise ConfigError(f"{where} overrides: {exc}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{where} overrides do not compose: {first_line(exc)}") from None
    defaults = {p.key: p.corners()[0] for p in spec.space}
    for param in spec.space:
        for value in param.corners():
            values = {**defaults, param.key: value}
            overrides = [
                *spec.overrides,
                *extra,
                *(f"{k}={v}" for k, v in values.items()),
                "paths.output_dir=.",
            ]
            try:
                trial_cfg = compose_trial(overrides)
                validate(trial_cfg)
                method = build_method(trial_cfg)  # their own range checks
                build_transform(trial_cfg, method), build_hardware(trial_cfg)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {param.key}={value}: {exc}") from None
            except (HydraException, OmegaConfBaseException) as exc:
                raise ConfigError(
                    f"{where}: search-space key '{param.key}' (value {value}) is not a key of "
                    f"the trial config ({first_line(exc)})."
                ) from None


class Worker:
    """One worker of one study. ``spec`` (default: the sweep named by ``cfg.sweep``) and
    ``parent`` (an MLflow run to nest under instead of the study's own) serve drivers that run
    several studies, such as the random-search baseline."""

    def __init__(
        self,
        cfg: DictConfig,
        output_dir: Path,
        spec: StudySpec | None = None,
        parent: ParentRun | None = None,
    ) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.results: dict[int, Results] = {}  # the trials this worker ran, by number
        self.spec = spec or load_spec(cfg.sweep, cfg.get("n_trials"), cfg.get("storage"))
        # Trials print no summary table each (the study prints its own); trial_overrides win.
        self.extra = ["print_summary=false", *(str(o) for o in cfg.get("trial_overrides") or [])]
        if spec is None:
            check_space(self.spec, self.extra)
        self.base = compose_trial([*self.spec.overrides, *self.extra, "paths.output_dir=."])
        self.spec = self.spec.for_task(task_of(self.base))  # objectives in its runs' contract
        self.storage = open_storage(
            self.spec.storage,
            int(cfg.heartbeat_interval),
            int(cfg.grace_period),
            self.spec.max_retry,
        )
        try:
            self.study = optuna.create_study(
                study_name=self.spec.name,
                storage=self.storage,
                load_if_exists=True,
                directions=self.spec.directions,
                pruner=self.spec.make_pruner(),
            )
        except ValueError as exc:  # e.g. an existing study with other directions
            raise ConfigError(f"study '{self.spec.name}': {first_line(exc)}") from None
        offset = 1000 * int(cfg.worker) + len(self.study.get_trials(deepcopy=False))
        self.study.sampler = self.spec.make_sampler(seed_offset=offset)
        self.study.set_user_attr("n_trials", self.spec.n_trials)
        self.parent = parent if parent is not None else self._parent_run()
        if self.parent is not None:  # trials find it in the folder above their own
            self.parent.publish(self.output_dir / "trials")

    # MLflow ------------------------------------------------------------------------------
    def _client(self):
        return mlflow_client(self.base)

    def _parent_run(self) -> ParentRun | None:
        """The study's parent run: created by the first worker, found by the others."""
        client = self._client()
        if client is None:
            return None
        found = self.study.user_attrs.get(PARENT_ATTR)
        if found:
            return ParentRun(client, found)
        tags = {"sparsebench.study": self.spec.name, "optuna.storage": redact(self.spec.storage)}
        experiment = self.base.logger.experiment_name
        mine = ParentRun.start(client, experiment, f"study {self.spec.name}", tags)
        self.study.set_user_attr(PARENT_ATTR, mine.run_id)
        time.sleep(0.5)  # two workers may have raced: the last write wins, the loser retracts
        winner = self.study.user_attrs[PARENT_ATTR]
        if winner != mine.run_id:
            mine.delete()
            return ParentRun(client, winner)
        sampler, pruner = self.spec.sampler, self.spec.pruner
        mine.log(
            params={
                "n_trials": self.spec.n_trials,
                "sampler": sampler.get("_target_") or sampler.get("name"),
                "pruner": pruner.get("_target_") or pruner.get("name"),
                "sweep": str(self.spec.path),
                "space": " ".join(p.key for p in self.spec.space),
                # the study's fixed overrides and the command line's trial_overrides
                **override_params([*self.spec.overrides, *self.extra]),
            }
        )
        return mine

    # Trials ------------------------------------------------------------------------------
    def _counts(self) -> tuple[int, int, int]:
        trials = self.study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in trials)
        return finished, running, waiting

    def objective(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        earlier = self.study.get_trials(deepcopy=False, states=(*FINISHED, *ACTIVE))
        if sum(t.number < trial.number for t in earlier) >= self.spec.n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the study has its {self.spec.n_trials}")
        started = time.time()
        values = {p.key: p.suggest(trial) for p in self.spec.space}
        run_dir = self.output_dir / "trials" / f"{trial.number:04d}"
        overrides = [
            *self.spec.overrides,
            *self.extra,
            *(f"{k}={v}" for k, v in values.items()),
            f"paths.output_dir={run_dir}",
        ]
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        cfg = compose_trial(overrides)
        callbacks = []
        if self.spec.prunes:
            from optuna_integration import PyTorchLightningPruningCallback

            monitor = self.spec.pruner.get("monitor", self.spec.objectives[0].metric)
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=monitor))
        from sparsebench.runners.train import run

        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in values.items()))
        tags = {"optuna.study": self.spec.name, "optuna.trial": str(trial.number)}
        results = run(cfg, callbacks=callbacks, tags=tags, started=started)
        self.results[trial.number] = results
        if results.mlflow.get("run_id"):
            trial.set_user_attr("mlflow_run_id", results.mlflow["run_id"])
        metrics = results.metrics
        missing = [o.metric for o in self.spec.objectives if o.metric not in metrics]
        if missing:
            raise RuntimeError(f"trial {trial.number} wrote no {', '.join(missing)}")
        out = tuple(float(metrics[o.metric]) for o in self.spec.objectives)
        if not all(math.isfinite(v) for v in out):  # never hand Optuna a NaN as a result
            raise RuntimeError(f"trial {trial.number}: non-finite objective {out}")
        return out if self.spec.multi_objective else out[0]

    def trial_metrics(self, trial: optuna.trial.FrozenTrial) -> dict[str, float]:
        """A trial's metrics: the value of this worker's own run of it, else (a trial that
        another worker or an earlier process ran) its run folder's record."""
        if trial.number in self.results:
            return dict(self.results[trial.number].metrics)
        record = Path(trial.user_attrs["run_dir"]) / "results.json"
        return dict(json.loads(record.read_text())["metrics"])

    def run(self) -> int:
        """Run trials until the study has ``n_trials`` completed or pruned; returns how many
        this worker ran. A worker whose last ``max_failures`` trials all failed stops with
        the last error (a broken configuration would otherwise fail forever)."""
        ran, failures = 0, 0
        while True:
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial -> retried
            finished, running, waiting = self._counts()
            if finished >= self.spec.n_trials:
                break
            if waiting == 0 and finished + running >= self.spec.n_trials:
                time.sleep(float(self.cfg.poll_s))  # the last trials run elsewhere: wait
                continue
            self._last_error = None
            self.study.optimize(self._guarded, n_trials=1, catch=(Exception,))
            ran += 1
            error = self._last_error
            failures = failures + 1 if error and not isinstance(error, SurplusTrial) else 0
            if failures >= int(self.cfg.max_failures):
                raise ConfigError(
                    f"{failures} trials in a row failed in study '{self.spec.name}'; the last: "
                    f"{type(error).__name__}: {first_line(error)}"
                )
        return ran

    def _guarded(self, trial: optuna.Trial):
        try:
            return self.objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # Optuna records the trial as failed; we count it
            self._last_error = exc
            raise

    # Report ------------------------------------------------------------------------------
    def best(self) -> list[optuna.trial.FrozenTrial]:
        if not self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            return []  # e.g. every trial pruned
        if self.spec.multi_objective:
            return sorted(self.study.best_trials, key=lambda t: t.number)
        return [self.study.best_trial]

    def report(self) -> dict[str, Any]:
        best = self.best()
        metrics = [o.metric for o in self.spec.objectives]
        rows = [
            {
                "trial": t.number,
                **dict(zip(metrics, t.values, strict=True)),
                **t.params,
                "run_dir": t.user_attrs.get("run_dir"),
            }
            for t in best
        ]
        states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
        summary = {
            "study": self.spec.name,
            "storage": redact(self.spec.storage),
            "objectives": [f"{o.metric} ({o.direction})" for o in self.spec.objectives],
            "trials": {s: states.count(s) for s in sorted(set(states))},
            "pareto_front" if self.spec.multi_objective else "best": rows,
        }
        title = "Pareto front" if self.spec.multi_objective else "best trial"
        counts = ", ".join(f"{n} {s.lower()}" for s, n in summary["trials"].items())
        table = Table(title=f"study {self.spec.name} ({counts}): {title}")
        columns = [k for k in (rows[0] if rows else {}) if k != "run_dir"]
        for column in columns:
            table.add_column(column, justify="left" if column == "trial" else "right")
        for row in rows:
            table.add_row(*(cell(row[c]) for c in columns))
        Console(width=max(100, shutil.get_terminal_size().columns)).print(table)
        if rows and rows[0].get("run_dir"):
            print(
                f"run folders: {Path(str(rows[0]['run_dir'])).parent}; summary: "
                f"{self.output_dir / 'study.json'}"
            )
        (self.output_dir / "study.json").write_text(json.dumps(summary, indent=2, default=str))
        if self.parent:
            self._log_summary(summary)
        return summary

    def _log_summary(self, summary: dict[str, Any]) -> None:
        """The best trial (or the Pareto front's size), study.json and the trials' aggregates
        on the study's parent run, which then ends."""
        rows = summary.get("best") or summary.get("pareto_front")
        metrics, tags = {}, {}
        if rows and "best" in summary:
            metrics = {f"best/{o.metric}": float(rows[0][o.metric]) for o in self.spec.objectives}
            tags = {"best_trial": str(rows[0]["trial"])}
        elif rows:
            metrics = {"pareto/size": len(rows)}
        summary_file = {"study.json": summary}
        self.parent.close(
            self.output_dir / "trials", metrics=metrics, tags=tags, dicts=summary_file
        )


def mlflow_client(base: DictConfig):
    """An MlflowClient for the trials' tracking store, or None (logging off, store down)."""
    from sparsebench.record.mlflow_logging import tracking_client

    client, problem = tracking_client(base)
    if problem and base.logger.get("enabled", True):
        log.warning("MLflow: %s; trials keep their results.json", problem)
    return client


def spawn_workers(output_dir: Path, count: int) -> int:
    """``workers=N``: N worker processes on this machine sharing the study; returns the
    number that failed."""
    args = [a for a in sys.argv[1:] if not a.startswith(("workers=", "worker=", "hydra.run.dir="))]
    procs = []
    for index in range(count):
        folder = output_dir / f"worker{index}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sparsebench.search",
                    *args,
                    "workers=1",
                    f"worker={index}",
                    f"hydra.run.dir={folder}",
                ]
            )
        )
    return sum(p.wait() != 0 for p in procs)


__all__ = ["Worker", "check_space", "compose_trial", "mlflow_client", "spawn_workers"]

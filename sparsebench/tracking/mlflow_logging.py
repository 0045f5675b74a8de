"""MLflow: where runs go, and a Lightning logger that never takes a run down with it.

The default store is ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses a plain
file store by default, and Lightning's MLFlowLogger would otherwise pick one). A tracking server
that cannot be reached, before or during the run, turns logging off with a warning; the run
finishes and keeps ``results.json``, which ``sparsebench upload`` sends later.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri(cfg: DictConfig) -> str:
    """``logger.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else sqlite:///mlflow.db; a
    relative SQLite path is made absolute (from the working directory now), since MLflow caches
    one store per URI string in a process and would keep writing to the first folder's file."""
    uri = cfg.logger.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def reachable(uri: str, timeout: float) -> str | None:
    """None if the store can be used, else one sentence saying why not."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"tracking server {uri} cannot be reached ({getattr(exc, 'reason', exc)})"
    if uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).resolve().parent
        if not parent.is_dir():
            return f"tracking store {uri}: folder {parent} does not exist"
    return None


class SafeMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, but a failing server disables it instead of failing the run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failure: str | None = None

    def _guard(self, what: str, fn, *args: Any, **kwargs: Any) -> None:
        if self.failure is not None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # any transport or server error: keep training
            self.failure = f"MLflow {what} failed ({type(exc).__name__}: {exc})"
            log.warning("%s; MLflow logging is off for the rest of this run.", self.failure)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._guard("log_metrics", super().log_metrics, metrics, step)

    def log_hyperparams(self, params: Any) -> None:
        self._guard("log_hyperparams", super().log_hyperparams, params)

    def finalize(self, status: str = "success") -> None:
        self._guard("finalize", super().finalize, status)

    def log_final(
        self,
        metrics: dict[str, float],
        params: dict[str, Any],
        tags: dict[str, str],
        artifacts: list[Path],
    ) -> None:
        """Contract metrics, flattened config as params, tags and artifacts in few requests."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        def send() -> None:
            client, run_id, now = self.experiment, self.run_id, get_current_time_millis()
            metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
            param_list = [Param(k, str(v)[:6000]) for k, v in params.items()]
            tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
            for i in range(0, max(len(metric_list), len(param_list), len(tag_list)), 100):
                client.log_batch(
                    run_id, metric_list[i : i + 100], param_list[i : i + 100], tag_list[i : i + 100]
                )
            for path in artifacts:
                client.log_artifact(run_id, str(path))

        self._guard("final logging", send)


def store(cfg: DictConfig) -> tuple[str, str | None]:
    """(tracking URI, None) when ``cfg``'s MLflow store can be used, else (URI, the reason)."""
    uri = tracking_uri(cfg)
    if not cfg.logger.get("enabled", True):
        return uri, "logging disabled (logger.enabled=false)"
    problem = reachable(uri, cfg.logger.get("connect_timeout_s", 5.0))
    if problem is None:
        try:
            prepare(uri, cfg.logger.experiment_name)
        except Exception as exc:
            problem = f"tracking store {uri} failed ({type(exc).__name__}: {exc})"
    return uri, problem


def prepare(uri: str, experiment: str) -> None:
    """Creates the store's schema and ``experiment`` once, however many processes start at once.

    Workers and sweep jobs starting together on a new SQLite store race in MLflow's schema
    migrations ("duplicate column") and in creating the experiment; MLflow does neither under a
    lock, so an SQLite store is prepared under a file lock beside it, and a lost race to create
    the experiment on a server reads the winner's.
    """
    from filelock import FileLock
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        with FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=120):
            experiment_id(MlflowClient(tracking_uri=uri), experiment)
    else:
        experiment_id(MlflowClient(tracking_uri=uri), experiment)


def experiment_id(client, experiment: str) -> str:
    """The id of ``experiment``, created if missing (a lost creation race reads the winner's)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment)
    except MlflowException:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def tracking_client(cfg: DictConfig):
    """(MlflowClient, None) for ``cfg``'s store, or (None, the reason it cannot be used)."""
    uri, problem = store(cfg)
    if problem:
        return None, problem
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri), None


def create_run(client, experiment: str, name: str, tags: dict[str, str]) -> str:
    """A run (e.g. the parent of a sweep or study) in ``experiment``, created if missing;
    returns its id."""
    return client.create_run(
        experiment_id(client, experiment), run_name=name, tags=tags
    ).info.run_id


def make_logger(
    cfg: DictConfig, tags: dict[str, str]
) -> tuple[SafeMLFlowLogger | None, str | None]:
    """The run's MLflow logger, or (None, reason) when logging is off or impossible."""
    # Fail fast on a dead server instead of MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    uri, problem = store(cfg)
    if problem:
        return None, problem
    logger = SafeMLFlowLogger(
        experiment_name=cfg.logger.experiment_name,
        run_name=cfg.logger.get("run_name")
        or f"{tags['method']}-{tags['model']}-{tags['dataset']}-s{tags['seed']}",
        tracking_uri=uri,
        tags=tags,
        log_model=False,
    )
    try:
        _ = logger.experiment, logger.run_id  # create the run now, so a failure shows up front
    except Exception as exc:
        return None, f"tracking store {uri} failed ({type(exc).__name__}: {exc})"
    return logger, None

"""MLflow: where runs go, and a run record that never takes a run down with it.

The default store is ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses a plain
file store by default). A tracking server that cannot be reached, before or during the run,
turns logging off with a warning; the run finishes and keeps ``results.json``, which
``sparsebench upload`` sends later (and completes a partial run with).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sparsebench.config.store import DEFAULT_URI, Store
from sparsebench.errors import first_line
from sparsebench.record.results import STATUS_TAG
from sparsebench.record.ui import EXPERIMENT_TAGS

log = logging.getLogger(__name__)


def tracking_uri(cfg: DictConfig) -> str:
    """``logger.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else sqlite:///mlflow.db; a
    relative SQLite path is made absolute (from the working directory now), since MLflow caches
    one store per URI string in a process and would keep writing to the first folder's file."""
    uri = cfg.logger.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = Store.of(uri).path
    if path is not None and not path.is_absolute():
        uri = f"sqlite:///{path.resolve()}"
    return uri


def reachable(uri: str, timeout: float) -> str | None:
    """None if the store can be used, else one sentence saying why not."""
    store = Store.of(uri)
    if store.http:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                return None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"tracking server {uri} cannot be reached ({getattr(exc, 'reason', exc)})"
    if store.path is not None:
        parent = store.path.resolve().parent
        if not parent.is_dir():
            return f"tracking store {uri}: folder {parent} does not exist"
    return None


class MlflowRun:
    """One run's MLflow record, kept in step with results.json by :class:`RunRecorder`.

    sparsebench writes the run itself rather than through Lightning's MLFlowLogger: Lightning
    marks a run FINISHED after every fit and test, before FLOPs and latency are known, and logs
    epoch metrics against the global step. Here the run is RUNNING with its params, config and
    contract tags from the start, gets each epoch's row at step = epoch (as ``sparsebench
    upload`` does), and is terminated once, with the lifecycle status. A failing store turns
    logging off for the rest of the run (``failure`` says why); results.json keeps everything.
    """

    def __init__(self, client, run_id: str, tracking_uri: str, experiment_id: str) -> None:
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self.experiment_id = experiment_id
        self.failure: str | None = None

    def _guard(self, what: str, fn, *args: Any, **kwargs: Any) -> None:
        if self.failure is not None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # any transport or server error: keep training
            self.failure = f"MLflow {what} failed ({type(exc).__name__}: {first_line(exc, 300)})"
            log.warning("%s; MLflow logging is off for the rest of this run.", self.failure)

    def log(
        self,
        what: str,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        artifacts: list[Path] = (),
    ) -> None:
        """Metrics at ``step``, params, tags and artifacts, in batches of 100 (MLflow's limit)."""

        def send() -> None:
            send_batches(self.client, self.run_id, metrics or {}, step, params or {}, tags or {})
            for path in artifacts:
                self.client.log_artifact(self.run_id, str(path))

        self._guard(what, send)

    def log_dataset(self, dataset: dict[str, Any]) -> None:
        """The run's dataset as an MLflow input (the UI's Datasets column): its name, a digest
        of its config (splits, sizes, seed) and the config as source."""
        import hashlib

        from mlflow.entities import Dataset, DatasetInput, InputTag

        blob = json.dumps(dataset, sort_keys=True, default=str)
        entry = Dataset(
            name=str(dataset.get("name")),
            digest=hashlib.sha256(blob.encode()).hexdigest()[:12],
            source_type="sparsebench",
            source=blob,
        )
        context = [InputTag("mlflow.data.context", "training")]
        self._guard(
            "logging the dataset",
            self.client.log_inputs,
            self.run_id,
            datasets=[DatasetInput(entry, context)],
        )

    def log_model(self, model, example) -> str | None:
        """The final model as an MLflow logged model of this run (the UI's Models tab;
        ``mlflow.pytorch.load_model("models:/ID")``), in PyTorch's pt2 format: torch.export's
        graph and weights, which load without unpickling code (MLflow's default, a pickled
        module, would run code when loaded). Returns the model id, or None with a warning when
        the model cannot be exported (the run itself is not affected)."""
        import mlflow
        import mlflow.pytorch
        from mlflow.models import Model

        if self.failure is not None:
            return None
        previous = mlflow.get_tracking_uri()
        try:
            mlflow.set_tracking_uri(self.tracking_uri)  # Model.log resolves its client from it
            info = Model.log(
                None,
                name="model",
                flavor=mlflow.pytorch,
                run_id=self.run_id,
                pytorch_model=model.eval(),
                serialization_format="pt2",
                input_example=example.cpu().numpy(),
            )
            return info.model_id
        except Exception as exc:  # export limits of a model, or a store error: warn, keep the run
            log.warning(
                "logger.log_model: the model was not logged (%s: %s)",
                type(exc).__name__,
                first_line(exc, 300),
            )
            return None
        finally:
            mlflow.set_tracking_uri(previous)

    def start_system_metrics(self) -> None:
        """CPU, memory (and GPU) use sampled into the run while it lives (MLflow's monitor)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        def start() -> None:
            self.monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=1,
                resume_logging=True,
                tracking_uri=self.tracking_uri,
            )
            self.monitor.start()

        self._guard("starting system metrics", start)

    def terminate(self, status: str, lifecycle: str) -> None:
        """End the run with MLflow ``status`` (FINISHED, FAILED, KILLED); ``lifecycle`` is the
        exact state (ok, diverged, interrupted ...) kept as a tag beside it."""
        from mlflow.entities import RunTag

        def send() -> None:
            monitor = getattr(self, "monitor", None)
            if monitor is not None and status != "RUNNING":
                monitor.finish()
                # MLflow's monitor drops the samples of its last unfinished interval: a run
                # shorter than one interval would have none. One last sample, published.
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
                self.monitor = None
            self.client.log_batch(self.run_id, tags=[RunTag(STATUS_TAG, lifecycle)])
            if status == "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                self.client.set_terminated(self.run_id, status)

        self._guard("closing the run", send)


def send_batches(
    client,
    run_id: str,
    metrics: dict[str, float],
    step: int,
    params: dict[str, Any],
    tags: dict[str, str],
) -> None:
    """``log_batch`` in chunks of 100 entries per kind; params keep MLflow's 6000-char limit."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    metric_list = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    param_list = [Param(k, str(v)[:6000]) for k, v in params.items()]
    tag_list = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, max(len(metric_list), len(param_list), len(tag_list)), 100):
        client.log_batch(
            run_id, metric_list[i : i + 100], param_list[i : i + 100], tag_list[i : i + 100]
        )


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

    path = Store.of(uri).path
    if path is not None:
        with FileLock(f"{path}.lock", timeout=120):
            experiment_id(MlflowClient(tracking_uri=uri), experiment)
    else:
        experiment_id(MlflowClient(tracking_uri=uri), experiment)


def experiment_id(client, experiment: str) -> str:
    """The id of ``experiment``, created if missing (a lost creation race reads the winner's),
    tagged to open in the MLflow UI's model-training view."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            return client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        except MlflowException:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
    for key, value in EXPERIMENT_TAGS.items():
        if key not in found.tags:  # made before sparsebench set it (a user's own value stays)
            client.set_experiment_tag(found.experiment_id, key, value)
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


def quick_failure() -> None:
    """Fail fast on a dead server instead of MLflow's minutes of retries (a user's own
    settings win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def store_problem(uri: str, timeout: float = 5.0) -> str | None:
    """One sentence if the store at ``uri`` cannot be used, within about ``timeout`` seconds
    (MLflow's own client would retry for minutes); None when it answers. For the commands
    that read or write a store (``upload``, ``leaderboard``)."""
    quick_failure()
    return reachable(uri, timeout)


def run_name(cfg: DictConfig, tags: dict[str, str]) -> str:
    """A readable name that tells runs apart: method, sparsity, model, dataset, seed and the
    first digits of the run hash (so 1 and 10 epochs, or a prune runner's dense pre-training,
    differ): ``rigl-0.9-mlp-mnist1d-s0-3fa2c1``."""
    method = cfg.get("method")
    sparsity = method.get("sparsity") if method is not None else None
    pattern = tags.get("pattern", "")
    level = pattern if ":" in pattern else f"{float(sparsity):g}" if sparsity is not None else None
    parts = [
        tags["method"],
        level,
        tags["model"],
        tags["dataset"],
        f"s{tags['seed']}",
        tags["run_hash"][:6],
    ]
    return "-".join(p for p in parts if p)


def open_run(
    cfg: DictConfig, tags: dict[str, str], run_id: str | None = None
) -> tuple[MlflowRun | None, str | None]:
    """The run's MLflow record (a new run, or ``run_id`` reopened as RUNNING on resume), or
    (None, the reason) when logging is off or impossible."""
    quick_failure()
    uri, problem = store(cfg)
    if problem:
        return None, problem
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        if run_id is not None:
            experiment = client.get_run(run_id).info.experiment_id  # raises if it is not there
            client.update_run(run_id, status="RUNNING")
        else:
            name = cfg.logger.get("run_name") or run_name(cfg, tags)
            experiment = experiment_id(client, cfg.logger.experiment_name)
            run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    except Exception as exc:
        return None, f"tracking store {uri} failed ({type(exc).__name__}: {first_line(exc, 300)})"
    return MlflowRun(client, run_id, uri, experiment), None

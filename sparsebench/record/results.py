"""results.json: the results contract of one run, written as soon as anything is known.

The file is rewritten after every stage (set-up, each epoch, test, metrics), so a failure
mid-run keeps what was already computed, with ``status: failed`` and the error.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

import psutil
from omegaconf import DictConfig, OmegaConf

from sparsebench.config.schemas import task_of
from sparsebench.errors import ConfigError, ContractIncomplete, RunDiverged, RunInterrupted
from sparsebench.record.contract import CONTRACT_TAGS, contract_metrics
from sparsebench.record.identity import benchmark_key, run_hash

PACKAGES = (
    "sparsebench",
    "torch",
    "torchvision",
    "timm",
    "lightning",
    "mlflow",
    "optuna",
    "hydra-core",
)


def git_sha() -> str:
    """The commit of the sparsebench checkout, or 'unknown' outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    tags = {}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            tags[f"version/{name}"] = version(name)
    return tags


def method_name(cfg: DictConfig) -> str:
    """The ``method`` tag: the method's name (``dense`` without one), joined by a model
    transformation's name unless a preset names both (``sparse_ift``, ``sparse_ift+set``)."""
    method = cfg.get("method")
    name = str(method.get("name", "dense")) if method is not None else "dense"
    transform = cfg.get("transform")
    if transform is not None and transform.get("name") and transform.name != name:
        return str(transform.name) if name == "dense" else f"{transform.name}+{name}"
    return name


RESERVED_PREFIXES = ("sparsebench.", "mlflow.", "optuna.", "version/", "hw/", "latency/", "method/")
RESERVED_TAGS = (*CONTRACT_TAGS, "baseline_benchmark_key")


def check_user_tags(cfg: DictConfig) -> None:
    """User tags (``+tags.NAME=VALUE``) may add to a run's tags, never replace its contract
    tags: a ``+tags.method=rigl`` on a dense run would put it on the wrong leaderboard row."""
    for key in cfg.get("tags") or {}:
        if str(key) in RESERVED_TAGS or str(key).startswith(RESERVED_PREFIXES):
            raise ConfigError(
                f"tags.{key} is set by sparsebench (contract tags: {', '.join(CONTRACT_TAGS)}; "
                f"prefixes {', '.join(RESERVED_PREFIXES)}); give your tag another name."
            )


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The contract's tags that follow from the config alone."""
    tags = {
        "run_hash": run_hash(cfg),
        "benchmark_key": benchmark_key(cfg),
        "model": str(cfg.model.model_name),
        "dataset": str(cfg.dataset.name),
        "task": task_of(cfg),
        "method": method_name(cfg),
        "hardware": str(cfg.hardware.name),
        "seed": str(cfg.seed),
        "git_sha": git_sha(),
        **package_versions(),
    }
    transform = cfg.get("transform")
    if transform is not None and transform.get(
        "family"
    ):  # Sparse-IFT: pair with the dense baseline
        tags["method/family"] = str(transform.family)
        tags["baseline_benchmark_key"] = tags["benchmark_key"]
    check_user_tags(cfg)
    return {**{str(k): str(v) for k, v in (cfg.get("tags") or {}).items()}, **tags}


STATUSES = ("running", "ok", "failed", "diverged", "interrupted", "pruned")
"""The run lifecycle: ``running`` -> ``ok`` | ``failed`` | ``diverged`` | ``interrupted``
(``pruned``: a search trial stopped by its pruner). ``ok`` means no error *and* every contract
metric recorded; an error-free run that misses one is ``failed`` and names what is missing."""

MLFLOW_STATUS = {
    "running": "RUNNING",
    "ok": "FINISHED",
    "failed": "FAILED",
    "diverged": "FAILED",
    "interrupted": "KILLED",
    "pruned": "KILLED",
}
STATUS_TAG = "sparsebench.status"  # the exact lifecycle state, beside MLflow's coarser one


def status_of(error: BaseException | None, missing: list[str]) -> str:
    if error is None:
        return "failed" if missing else "ok"
    if type(error).__name__ == "TrialPruned":  # optuna's, without importing optuna here
        return "pruned"
    if isinstance(error, RunDiverged):
        return "diverged"
    if isinstance(error, (RunInterrupted, KeyboardInterrupt)) or (
        isinstance(error, SystemExit) and error.code not in (None, 0)
    ):  # SystemExit: e.g. submitit's requeue on preemption exits the job
        return "interrupted"
    return "failed"


def error_text(error: BaseException | None, missing: list[str]) -> str | None:
    if error is None:
        return f"results contract incomplete: no {', '.join(missing)}" if missing else None
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else repr(error)}"


def write_atomic(path: Path, content: str | Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through a temporary file in the same folder and an atomic rename, so a
    full disk or a kill never leaves a truncated file in place of the last good one.
    ``content``: text, or a function writing bytes to the open file (``torch.save``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode())
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


SECTIONS = (
    "kernels",
    "kernels_decode",
    "kernels_train",
    "layers",
    "checkpoint",
    "resumed_from",
    "transform",
    "genotype",
    "search_history",
)
"""What a run may record beside its metrics and tags (docs/records.md): the hardware target's
kernel per layer (``kernels_decode``: a language model's decode step's; ``kernels_train``: the sparse training kernels'), post-training's reconstruction error per layer, the checkpoint a pruned model
came from, the checkpoint a resumed run continued from, a transformation's description, DASS's
searched genotype and its search's per-epoch history."""


class Results:
    """The record of one run, mirrored to ``results.json`` in the run directory; the only way a
    record is written (its state is private; every change is saved at once).

    ``resume``: the ``results.json`` of an unfinished run to continue (same run uid, MLflow run
    and history); otherwise a new record."""

    def __init__(
        self,
        output_dir: str | Path,
        cfg: DictConfig,
        write: bool = True,
        contract_tags: dict[str, str] | None = None,
        resume: bool = False,
    ) -> None:
        self.path = Path(output_dir) / "results.json"
        self._write = write  # False on DDP ranks other than zero
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            self._data = json.loads(self.path.read_text())
            self._data.update(status="running", resumed=self._data.get("resumed", 0) + 1)
            for key in ("error", "traceback", "finished", "missing", "resumed_from"):
                self._data.pop(key, None)
        else:
            uid = uuid.uuid4().hex  # identifies this run on upload, so it is never duplicated
            self._data = {
                "run_uid": uid,
                "status": "running",
                "started": time.time(),
                "metrics": {},
                "history": [],
                "tags": {**run_tags(cfg), **(contract_tags or {}), "sparsebench.run_uid": uid},
                "config": OmegaConf.to_container(cfg, resolve=True),
                "mlflow": {},
            }
        # Who is running it: lets `sparsebench upload` tell a killed run from a live one.
        self._data["process"] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": psutil.Process().create_time(),
        }
        self._save()

    # -- reading -----------------------------------------------------------------------------
    @property
    def metrics(self) -> Mapping[str, float]:
        return MappingProxyType(self._data["metrics"])

    @property
    def tags(self) -> Mapping[str, str]:
        return MappingProxyType(self._data["tags"])

    @property
    def status(self) -> str:
        return self._data["status"]

    @property
    def error(self) -> str | None:
        return self._data.get("error")

    @property
    def history(self) -> tuple[dict[str, float], ...]:
        return tuple(dict(row) for row in self._data["history"])

    @property
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._data["config"])

    @property
    def mlflow(self) -> Mapping[str, str]:
        """The MLflow run (``tracking_uri``, ``run_id``, ``model_id``) once one is open."""
        return MappingProxyType(self._data["mlflow"])

    def section(self, name: str) -> Any:
        return copy.deepcopy(self._data.get(name))

    def missing(self) -> list[str]:
        """Contract metrics not recorded (or not finite)."""
        task = self._data["tags"].get("task", "classification")
        return [
            k for k in contract_metrics(task) if not math.isfinite(self.metrics.get(k, math.nan))
        ]

    # -- writing -----------------------------------------------------------------------------
    def update(
        self, metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        self._data["metrics"].update({k: float(v) for k, v in (metrics or {}).items()})
        self._data["tags"].update({k: str(v) for k, v in (tags or {}).items()})
        self._save()

    def attach(self, name: str, value: Any) -> None:
        """Record one of :data:`SECTIONS` (JSON-serialisable)."""
        if name not in SECTIONS:
            raise KeyError(f"results.json has no section '{name}'; it has {', '.join(SECTIONS)}")
        self._data[name] = value
        self._save()

    def add_epoch(self, row: Mapping[str, float]) -> None:
        self._data["history"].append(dict(row))
        self._save()

    def set_history(self, rows: list[dict[str, float]]) -> None:
        """The history up to a resumed checkpoint (epochs after it are trained again)."""
        self._data["history"] = [dict(row) for row in rows]
        self._save()

    def set_mlflow(self, **fields: str) -> None:
        """Where the run's MLflow record is: ``tracking_uri`` and ``run_id``, then ``model_id``."""
        self._data["mlflow"].update(fields)
        self._save()

    def finish(self, error: BaseException | None = None) -> None:
        missing = self.missing() if error is None else []
        self._data["status"] = status_of(error, missing)
        self._data["finished"] = time.time()
        message = error_text(error, missing)
        if message:
            self._data["error"] = message
        if missing:
            self._data["missing"] = missing
        if error is not None and not isinstance(error, (RunInterrupted, RunDiverged)):
            self._data["traceback"] = "".join(traceback.format_exception(error))
        try:
            self._save()
        except OSError as exc:  # e.g. the disk is full: say so where a person will see it
            print(
                f"error: could not write {self.path} ({exc}); this run's final status "
                f"'{self.status}' ({message or 'no error'}) is not recorded there.",
                file=sys.stderr,
            )
            raise

    def raise_unless_ok(self) -> None:
        """After an error-free run: raise :class:`ContractIncomplete` if it is not ``ok``, so
        that the exit code (and a search trial's state) agrees with the record."""
        if self.status == "failed" and self._data.get("missing"):
            raise ContractIncomplete(self._data["error"])

    def _save(self) -> None:
        if self._write:
            write_atomic(self.path, json.dumps(self._data, indent=2, sort_keys=True, default=str))

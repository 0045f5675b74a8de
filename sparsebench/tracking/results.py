"""results.json: the results contract of one run, written as soon as anything is known.

The file is rewritten after every stage (set-up, each epoch, test, metrics), so a failure
mid-run keeps what was already computed, with ``status: failed`` and the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import traceback
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparsebench.tracking.identity import benchmark_key, run_hash

# The results contract (ARCHITECTURE.md): every run writes these metrics and tags.
CONTRACT_METRICS = (
    "test/acc", "test/loss", "val/acc", "params/total", "params/nonzero", "sparsity/target",
    "sparsity/actual", "flops/dense", "flops/sparse", "flops/train", "latency/p50_ms",
    "latency/p90_ms", "latency/dense_p50_ms", "speedup/measured", "speedup/theoretical",
    "size/dense_bytes", "size/sparse_bytes", "time/train_s",
)  # fmt: skip
CONTRACT_TAGS = (
    "run_hash", "benchmark_key", "model", "dataset", "method", "pattern", "hardware", "seed", "git_sha",
    "version/torch", "version/sparsebench", "hw/cpu", "hw/threads",
)  # fmt: skip

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
    method = cfg.get("method")
    return str(method.get("name", "dense")) if method is not None else "dense"


def pattern_name(cfg: DictConfig) -> str:
    """``dense``, ``unstructured``, ``2:4``, ``block1x4`` or ``channel``: results of different
    patterns are never comparable one-for-one (METHODS.md, fair comparison)."""
    method = cfg.get("method")
    if method is None or method.get("_target_") is None:
        return "dense"
    pattern = method.get("pattern") or {}
    kind = pattern.get("kind", "unstructured")
    if kind == "nm":
        return f"{pattern.get('n')}:{pattern.get('m')}"
    if kind == "block":
        return "block" + "x".join(str(b) for b in pattern.get("block") or [])
    return str(kind)


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """The contract's tags that follow from the config alone."""
    tags = {
        "run_hash": run_hash(cfg),
        "benchmark_key": benchmark_key(cfg),
        "model": str(cfg.model.model_name),
        "dataset": str(cfg.dataset.name),
        "method": method_name(cfg),
        "pattern": pattern_name(cfg),
        "hardware": str(cfg.hardware.name),
        "seed": str(cfg.seed),
        "git_sha": git_sha(),
        **package_versions(),
    }
    method = cfg.get("method")
    if method is not None and method.get("family"):  # Sparse-IFT: pair with the dense baseline
        tags["method/family"] = str(method.family)
        tags["baseline_benchmark_key"] = tags["benchmark_key"]
    tags.update({str(k): str(v) for k, v in (cfg.get("tags") or {}).items()})
    return tags


class Results:
    """The results of one run, mirrored to ``results.json`` in the run directory."""

    def __init__(self, output_dir: str | Path, cfg: DictConfig, write: bool = True) -> None:
        self.path = Path(output_dir) / "results.json"
        self.write = write  # False on DDP ranks other than zero
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        uid = uuid.uuid4().hex  # identifies this run on upload, so it is never duplicated
        self.data: dict[str, Any] = {
            "run_uid": uid,
            "status": "running",
            "started": time.time(),
            "metrics": {},
            "history": [],
            "tags": run_tags(cfg),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "mlflow": {},
        }
        self.tags["sparsebench.run_uid"] = uid
        self.save()

    @property
    def metrics(self) -> dict[str, float]:
        return self.data["metrics"]

    @property
    def tags(self) -> dict[str, str]:
        return self.data["tags"]

    def update(
        self, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        self.metrics.update({k: float(v) for k, v in (metrics or {}).items()})
        self.tags.update({k: str(v) for k, v in (tags or {}).items()})
        self.save()

    def add_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.data["history"].append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
        self.save()

    def finish(self, error: BaseException | None = None) -> None:
        # A search trial stopped early by its pruner (optuna.TrialPruned) is not a failure.
        pruned = error is not None and type(error).__name__ == "TrialPruned"
        self.data["status"] = "pruned" if pruned else "failed" if error else "ok"
        self.data["finished"] = time.time()
        if error is not None:
            self.data["error"] = f"{type(error).__name__}: {error}"
            self.data["traceback"] = "".join(traceback.format_exception(error))
        self.save()

    def save(self) -> None:
        if not self.write:
            return
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a file

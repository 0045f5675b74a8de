"""Continuing a run from its folder: which records can be resumed, and from what.

A run folder holds ``config.yaml`` (the resolved config, written when the run started),
``results.json`` and ``checkpoints/last.ckpt`` (written atomically after every training
epoch). ``python -m sparsebench resume=RUN_DIR`` continues an unfinished run there with its
own config, in the same folder and the same MLflow run. A Hydra job that is started again in
a folder holding an interrupted run of the same configuration (a SLURM job requeued after
preemption, through submitit or Lightning) continues it the same way without being asked.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import psutil

from sparsebench.errors import ConfigError

CHECKPOINT = Path("checkpoints") / "last.ckpt"


def read_results(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}).") from None


def process_alive(data: dict[str, Any]) -> bool:
    """Whether the process that wrote ``data`` still runs (only knowable on its own host)."""
    process = data.get("process") or {}
    if process.get("host") != socket.gethostname():
        return False
    try:
        found = psutil.Process(int(process["pid"]))
        return abs(found.create_time() - float(process["started"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def resume_point(run_dir: Path, explicit: bool, run_hash: str | None = None) -> Path | None:
    """The checkpoint to continue ``run_dir``'s run from, or None to start a new run there.

    ``explicit`` (``resume=RUN_DIR``): anything that cannot be resumed is a ConfigError.
    Otherwise (a job started in a folder that already holds a record) only an interrupted or
    abandoned run with the same ``run_hash`` and a checkpoint is continued."""
    data = read_results(run_dir)
    where = f"run folder {run_dir}"
    if data is None:
        if explicit:
            raise ConfigError(f"{where} holds no results.json; give the folder of a run.")
        return None
    status = data.get("status")
    if not explicit and (
        status not in ("running", "interrupted") or data.get("tags", {}).get("run_hash") != run_hash
    ):
        return None  # a finished run, or another configuration: a new record replaces it
    if status == "running" and process_alive(data):
        raise ConfigError(f"{where} is still running (process {data['process']['pid']}).")
    if status == "ok":
        raise ConfigError(f"{where} already finished ok; there is nothing to resume.")
    if status == "diverged":
        raise ConfigError(
            f"{where} diverged ({data.get('error', '')}); resuming would diverge "
            "again: start a new run with other settings."
        )
    if status == "pruned":
        raise ConfigError(f"{where} is a search trial stopped by its pruner; it is not resumed.")
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        if explicit:
            raise ConfigError(
                f"{where} has no {CHECKPOINT} (checkpointing was off, or it was "
                "killed in its first epoch); start it again."
            )
        return None
    if explicit and not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{where} has no config.yaml to resume with.")
    return checkpoint


def resumed_by_rank_zero(run_dir: Path) -> Path | None:
    """Under DDP the other ranks start after rank zero has opened the record: they resume
    from the checkpoint it chose (``resumed_from`` in its results.json), or start fresh."""
    data = read_results(run_dir) or {}
    found = data.get("resumed_from")
    return Path(found) if found else None

"""Run identity: ``run_hash`` and ``benchmark_key``.

Like open_lth's run directories, the hash covers only options whose value differs from the
schema default, so adding a new option with its default keeps every old hash valid. Options
that cannot change results (``metadata={"hash": False}`` in the schemas) are left out, and so
is the seed: replicates over seeds share a ``run_hash``. The defaults are the schema's each
group node was composed with (a model family's, or the one sparsebench.config.targets made from a
method's, transformation's or hardware target's class).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

HASHED_GROUPS = ("model", "dataset", "method", "transform", "hardware", "trainer")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level with dotted keys (``trainer.optimizer.lr``)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _schema_defaults(schema: type) -> tuple[dict[str, Any], set[str]]:
    """Flattened default values of a schema, and the keys excluded from hashing."""
    defaults = flatten(OmegaConf.to_container(OmegaConf.structured(schema), resolve=False))
    excluded: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if f.metadata.get("hash") is False:
                excluded.add(prefix + f.name)
            if dataclasses.is_dataclass(
                f.default_factory if f.default_factory is not dataclasses.MISSING else None
            ):
                walk(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]

    walk(schema, "")
    return defaults, excluded


def hashed_options(cfg: DictConfig) -> dict[str, Any]:
    """The options that define a run: non-default values of the hashed groups, flattened."""
    options: dict[str, Any] = {}
    for group in HASHED_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        values = flatten(OmegaConf.to_container(node, resolve=True))
        schema = OmegaConf.get_type(node)
        defaults, excluded = (
            _schema_defaults(schema) if dataclasses.is_dataclass(schema) else ({}, set())
        )
        if group in ("method", "transform"):
            excluded.add("seed")  # the run's seed, as for every group
        for key, value in values.items():
            if key in excluded or (key in defaults and defaults[key] == value):
                continue
            options[f"{group}.{key}"] = value
    return options


def run_hash(cfg: DictConfig) -> str:
    """A 12-hex-digit hash of :func:`hashed_options`, stable across processes and machines."""
    blob = json.dumps(hashed_options(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def benchmark_key(cfg: DictConfig) -> str:
    """What makes runs comparable: dataset, model family, hardware and training budget."""
    trainer = cfg.trainer
    budget = f"epochs={trainer.max_epochs},batch={cfg.dataset.batch_size}"
    if trainer.get("limit_train_batches") is not None:
        budget += f",limit={trainer.limit_train_batches}"
    return f"{cfg.dataset.name}|{cfg.model.model_name}|{cfg.hardware.name}|{budget}"

"""Building blocks of the training runner: objects from config, and the final measurements."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import psutil
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsebench.config import ConfigError
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.hardware.base import HardwareTarget
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.metrics.params import actual_sparsity, count_params
from sparsebench.metrics.size import model_bytes
from sparsebench.module import ClassificationModule
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.prunable import prunable_layers
from sparsebench.tracking.results import Results


class ResultsCallback(Callback):
    """Mirrors per-epoch metrics into results.json and counts training samples seen."""

    def __init__(self, results: Results, started: float | None = None) -> None:
        self.results = results
        self.samples_seen = 0
        # Start-up cost as a user feels it: process start to the first training step; a run
        # started inside a longer-lived process (a search trial) counts from ``started``.
        self.started = started if started is not None else psutil.Process().create_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.samples_seen == 0 and trainer.current_epoch == 0:
            self.results.update({"time/startup_s": time.time() - self.started})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples_seen += len(batch[1]) * trainer.world_size

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/"))
        }
        self.results.add_epoch(trainer.current_epoch, metrics)


def build_datamodule(cfg: DictConfig) -> SparseBenchDataModule:
    return instantiate(cfg.dataset, _convert_="all")


def build_hardware(cfg: DictConfig) -> HardwareTarget:
    return instantiate(cfg.hardware, _convert_="all")


def build_module(cfg: DictConfig, model: nn.Module) -> ClassificationModule:
    return ClassificationModule(
        model,
        optimizer=instantiate(_without_none(cfg.trainer.optimizer)),
        scheduler=cfg.trainer.scheduler,
        warmup_epochs=cfg.trainer.warmup_epochs,
    )


def _without_none(node: DictConfig) -> dict:
    # The optimizer schema is the union of several optimizers' options; unset ones are None.
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def build_method(cfg: DictConfig) -> SparsityMethod | None:
    """The configured sparsity method, or None for dense training (no method, or ``dense``)."""
    node = cfg.get("method")
    if node is None or node.get("_target_") is None:
        return None
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword" in str(cause):
            target = get_class(node._target_)
            allowed = [p for p in inspect.signature(target).parameters if p != "kwargs"]
            allowed += [p for p in inspect.signature(SparsityMethod).parameters if p not in allowed]
            raise ConfigError(
                f"method '{node.get('name')}' {cause}; it takes: {', '.join(allowed)}."
            ) from None
        raise


TRAINER_KEYS = (
    "max_epochs", "accelerator", "devices", "strategy", "num_nodes", "precision", "gradient_clip_val",
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "deterministic",
    "enable_progress_bar", "log_every_n_steps", "enable_checkpointing",
)  # fmt: skip


def build_trainer(
    cfg: DictConfig, output_dir: Path, logger: Any, callbacks: list[Callback], **overrides: Any
) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` (``overrides`` win, e.g. ``max_epochs``);
    checkpoints go to ``output_dir/checkpoints``."""
    options = {k: cfg.trainer[k] for k in TRAINER_KEYS if cfg.trainer.get(k) is not None}
    options.update(overrides)
    callbacks = [
        *callbacks,
        *(instantiate(node, _convert_="all") for node in cfg.trainer.get("callbacks") or []),
    ]
    if options.get("enable_checkpointing", True):
        callbacks = [
            *callbacks,
            ModelCheckpoint(dirpath=output_dir / "checkpoints", save_last=True),
        ]
    return L.Trainer(
        default_root_dir=str(output_dir),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **options,
    )


def fit(
    module: ClassificationModule,
    datamodule: SparseBenchDataModule,
    method: SparsityMethod | None,
    make_trainer: Callable[..., L.Trainer],
) -> L.Trainer:
    """Train; a method that trains in several runs (Sparse Model Soups) drives them itself.

    ``make_trainer(**overrides)`` builds a Trainer with the run's logger and callbacks.
    Returns the trainer to test with.
    """
    if method is not None:
        return method.fit(module, datamodule, make_trainer)
    trainer = make_trainer()
    trainer.fit(module, datamodule=datamodule)
    return trainer


def model_metrics(
    cfg: DictConfig,
    model: nn.Module,
    example: torch.Tensor,
    samples_seen: int,
    method: SparsityMethod | None = None,
    hardware: HardwareTarget | None = None,
) -> dict[str, float]:
    """Parameters, sparsity, FLOPs and weight storage of the trained model.

    Sparsity and sparse FLOPs are over the method's layers (default selection when dense);
    ``flops/train`` follows ../METHODS.md: 3 forward FLOPs per training sample for dense
    training, the method's own accounting otherwise. Storage is in the hardware target's format.
    """
    layers = pruned_layers(model, method)
    flops = flops_per_sample(model, example, layers)
    if method is not None and method.reference_flops is not None:
        flops["flops/dense"] = (
            method.reference_flops
        )  # Sparse-IFT: the dense original (iso-FLOP reference)
    deployed = method.deployed_model(model) if method is not None else None
    if deployed is not None:  # structured: count the physically smaller network
        flops["flops/sparse"] = flops_per_sample(deployed, example)["flops/dense"]
    train = (
        method.train_flops(flops["flops/dense"], flops["flops/sparse"], samples_seen)
        if method is not None
        else 3 * flops["flops/dense"] * samples_seen
    )
    size = (
        hardware.size(model, layers)
        if hardware is not None
        else model_bytes(model, layers, "dense")
    )
    return {
        **count_params(model),
        "sparsity/target": method.target_sparsity if method is not None else 0.0,
        "sparsity/actual": actual_sparsity(model, layers),
        **flops,
        "flops/train": train,
        "speedup/theoretical": flops["flops/dense"] / flops["flops/sparse"],
        **size,
    }


def measure(results: Results, cfg: DictConfig, model: nn.Module, example: torch.Tensor,
            samples_seen: int, method: SparsityMethod | None, hardware: HardwareTarget,
            benchmark: bool) -> None:  # fmt: skip
    """The contract's model metrics into ``results`` and, if ``benchmark`` (rank zero), the
    hardware target's latencies and its per-layer kernel choice."""
    results.update(model_metrics(cfg, model, example, samples_seen, method, hardware))
    if hardware.enabled and benchmark:
        results.update(hardware.benchmark(model, example, pruned_layers(model, method)))
        results.data["kernels"] = hardware.kernels  # per-layer kernel chosen by the target


def pruned_layers(model: nn.Module, method: SparsityMethod | None) -> dict[str, nn.Module]:
    """The method's layers, or the default prunable selection for dense training."""
    if method is not None and method.masks is not None:
        return method.masks.layers
    return prunable_layers(model)

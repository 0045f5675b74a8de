"""The training layer: objects from config, the fit (sparsebench.training.strategies, with the one
sparsity callback of sparsebench.training.callback), and the final measurements."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsebench.config.schemas import device_count
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.errors import ConfigError, RunDiverged, first_line
from sparsebench.hardware.base import HardwareTarget
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.metrics.params import actual_sparsity, count_params
from sparsebench.metrics.size import model_bytes
from sparsebench.models import build_model
from sparsebench.record.results import Results
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.prunable import prunable_layers
from sparsebench.training.callback import SparsityCallback
from sparsebench.training.checkpoints import (  # noqa: F401  (the training layer's API)
    AtomicCheckpointIO,
    checkpoint_budget,
    checkpoint_path,
    load_checkpoint,
    load_weights,
    rng_states,
    set_rng_states,
)
from sparsebench.training.module import ClassificationModule
from sparsebench.training.progress import RunProgress  # noqa: F401
from sparsebench.training.strategies import STRATEGIES
from sparsebench.transforms.base import ModelTransform


def final_val(trainer: L.Trainer, results: Results) -> dict[str, float]:
    """The last validation's ``val/*``: from the trainer, or (a resumed run whose training had
    already ended) from the last epoch row of the record."""
    found = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not found and results.data["history"]:
        found = {k: v for k, v in results.data["history"][-1].items() if k.startswith("val/")}
    return found


def check_finite(metrics: dict[str, float]) -> None:
    """A non-finite test loss or accuracy means the trained model diverged."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise RunDiverged(
            f"the trained model gives {', '.join(f'{k}={v}' for k, v in bad.items())}"
        )


def build_datamodule(cfg: DictConfig, check: bool = False) -> SparseBenchDataModule:
    """The dataset's LightningDataModule; ``check``: read its files now, so that missing or
    unreadable data is one sentence before anything is trained or recorded."""
    datamodule = instantiate(cfg.dataset, _convert_="all")
    if check:
        try:
            datamodule.setup("fit")
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(first_line(exc)) from None
    return datamodule


def build_hardware(cfg: DictConfig) -> HardwareTarget:
    try:
        return instantiate(cfg.hardware, _convert_="all")
    except InstantiationException as exc:  # the target's own one-sentence check
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


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


def _build(node: DictConfig | None, group: str) -> Any:
    """Instantiate a ``method`` or ``transform`` node (keys and types were checked against its
    schema when Hydra composed it; ranges are the constructor's); None when absent or
    ``_target_: null``."""
    if node is None or node.get("_target_") is None:
        return None
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


def build_method(cfg: DictConfig) -> SparsityMethod | None:
    """The configured sparsity method, or None for dense training (no method, or ``dense``)."""
    return _build(cfg.get("method"), "method")


def build_transform(cfg: DictConfig, method: SparsityMethod | None) -> ModelTransform | None:
    """The configured model transformation, if any, checked against the method it is composed
    with (an iso-FLOP transformation fixes the sparsity the method trains at)."""
    transform = _build(cfg.get("transform"), "transform")
    if transform is None or method is None:
        return transform
    if transform.sparsity is not None and abs(method.target_sparsity - transform.sparsity) > 1e-9:
        raise ConfigError(
            f"transform '{transform.name}' is iso-FLOP at transform.sparsity={transform.sparsity}, "
            f"but method '{method.name}' trains at sparsity {method.target_sparsity:g}; set "
            "method.sparsity to the same value."
        )
    transform.layer_options = dict(method.layer_options)
    return transform


def build_run_model(cfg: DictConfig, datamodule: SparseBenchDataModule,
                    method: SparsityMethod | None, transform: ModelTransform | None) -> nn.Module:  # fmt: skip
    """The model the run trains: the configured one, transformed; the method's layer
    selection leaves out what the transformation keeps dense."""
    model = build_model(cfg.model)
    if transform is None:
        return model
    model = transform.apply(model, cfg.model, datamodule.example_input(1), datamodule)
    if method is not None:
        method.narrow(transform.include, transform.exclude)
    return model


def training_device(cfg: DictConfig) -> str:
    """Where the run trains: ``trainer.accelerator``, with ``auto`` resolved as Lightning
    resolves it (a CUDA GPU if one is visible, else the CPU); recorded as ``hw/train_device``."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def check_machine(cfg: DictConfig) -> None:
    """What the config asks of this machine, checked where the run starts (a saved config
    validates on any host): no more CUDA GPUs or CPU cores (DDP processes) than it has."""
    count = device_count(cfg.trainer.devices)
    if count is None:
        return
    device = training_device(cfg)
    have, what = (torch.cuda.device_count(), "CUDA GPUs") if device == "cuda" else (
        os.cpu_count() or 1, "CPU cores (DDP processes)")  # fmt: skip
    if count > have:
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} asks for more {what} than this machine has "
            f"({have})" + (" (no CUDA GPU is visible; use trainer.accelerator=cpu)." if have == 0 else ".")
        )


def pattern_tag(method: SparsityMethod | None, transform: ModelTransform | None) -> str:
    """The run's ``pattern`` tag: the transformation's structure (``monarch``), the method's
    pattern label, or ``dense``."""
    if transform is not None and transform.pattern_tag is not None:
        return transform.pattern_tag
    return method.pattern_tag if method is not None else "dense"


TRAINER_KEYS = (
    "max_epochs", "accelerator", "devices", "strategy", "num_nodes", "precision", "gradient_clip_val",
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "deterministic",
    "enable_progress_bar", "log_every_n_steps", "enable_checkpointing",
)  # fmt: skip


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks: list[Callback],
                  extra_callbacks: list[Callback] | None = None, **overrides: Any) -> L.Trainer:  # fmt: skip
    """A Lightning Trainer from ``cfg.trainer`` (``overrides`` win, e.g. ``max_epochs``);
    ``checkpoints/last.ckpt`` is written atomically at the end of every training epoch, after
    :class:`RunProgress` recorded the epoch (so a resumed run's history is complete). MLflow
    is written by the run's record, not by a Lightning logger."""
    options = {k: cfg.trainer[k] for k in TRAINER_KEYS if cfg.trainer.get(k) is not None}
    options.update(overrides)
    callbacks = [
        *callbacks,
        *(extra_callbacks or []),
        *(instantiate(node, _convert_="all") for node in cfg.trainer.get("callbacks") or []),
    ]
    if options.get("enable_checkpointing", True):
        callbacks = [
            *callbacks,
            # One file, checkpoints/last.ckpt, replaced after every epoch (top-1 of "latest").
            ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", save_top_k=1,
                            enable_version_counter=False, save_on_train_epoch_end=True),
        ]  # fmt: skip
    return L.Trainer(
        default_root_dir=str(output_dir),
        logger=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **options,
    )


def fit(
    module: ClassificationModule,
    datamodule: SparseBenchDataModule,
    method: SparsityMethod | None,
    make_trainer: Callable[..., L.Trainer],
    ckpt_path: Path | None = None,
) -> L.Trainer:
    """Train with the method's fit strategy (one fit unless IMP's rounds or soups' phases).

    ``make_trainer(**overrides)`` builds a Trainer with the run's callbacks (the method's
    :class:`SparsityCallback` among them); ``ckpt_path`` resumes from a checkpoint (loaded with
    ``weights_only=True``). Returns the trainer to test with.
    """
    strategy = STRATEGIES[method.fit_strategy if method is not None else "single"]
    trainer = strategy(method, module, datamodule, make_trainer, ckpt_path)
    if method is not None:
        method.ensure_finalized()  # a resumed fit that had already ended skips on_train_end
    return trainer


def sparsity_callbacks(method: SparsityMethod | None) -> list[Callback]:
    """The Lightning side of a method: its one callback (none for dense training)."""
    return [] if method is None else [SparsityCallback(method)]


def model_metrics(
    cfg: DictConfig,
    model: nn.Module,
    example: torch.Tensor,
    samples_seen: int,
    method: SparsityMethod | None = None,
    hardware: HardwareTarget | None = None,
    transform: ModelTransform | None = None,
    deployed: nn.Module | None = None,
) -> dict[str, float]:
    """Parameters, sparsity, FLOPs and weight storage of the trained model (``deployed``: the
    method's physically smaller network where the caller built it already).

    Sparsity and sparse FLOPs are over the method's layers (default selection when dense);
    ``flops/train`` follows docs/methods.md: 3 forward FLOPs per training sample for dense
    training, the method's own accounting otherwise. Storage is in the hardware target's format.
    """
    layers = pruned_layers(model, method)
    flops = flops_per_sample(model, example, layers)
    # Training FLOPs use the trained network's own dense FLOPs: RigL's dense gradient (f_D)
    # is computed on the network that is trained, e.g. Sparse-IFT's widened one.
    trained_dense = flops["flops/dense"]
    if transform is not None and transform.reference_flops is not None:
        # Sparse-IFT and Monarch: flops/dense is the dense original (the iso-FLOP reference).
        flops["flops/dense"] = transform.reference_flops
    if deployed is None and method is not None:
        deployed = method.deployed_model(model)
    if deployed is not None:  # structured: count the physically smaller network
        flops["flops/sparse"] = flops_per_sample(deployed, example)["flops/dense"]
        flops["params/deployed"] = sum(p.numel() for p in deployed.parameters())
    train = (
        method.train_flops(trained_dense, flops["flops/sparse"], samples_seen)
        if method is not None
        else 3 * trained_dense * samples_seen
    )
    size = (
        hardware.size(model, layers, method.pattern if method is not None else None)
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
            benchmark: bool, transform: ModelTransform | None = None) -> None:  # fmt: skip
    """The contract's model metrics into ``results`` and, if ``benchmark`` (rank zero), the
    hardware target's latencies and its per-layer kernel choice."""
    # Structured methods: the physically smaller network, counted and timed (built once).
    deployed = method.deployed_model(model) if method is not None else None
    results.update(model_metrics(cfg, model, example, samples_seen, method, hardware, transform,
                                 deployed))  # fmt: skip
    if hardware.enabled and benchmark:
        layers = pruned_layers(model, method)
        if deployed is not None:  # timed against the full network
            measured = hardware.benchmark(deployed, example, {}, None, dense=model)
            measured.kernels = dict.fromkeys(layers, "dense (channels removed)")
        else:
            pattern = method.pattern if method is not None else None
            measured = hardware.benchmark(model, example, layers, pattern)
        results.update(measured.metrics, measured.tags)  # tags: latency/noisy (and why)
        results.data["kernels"] = measured.kernels  # per-layer kernel the target ran


def pruned_layers(model: nn.Module, method: SparsityMethod | None) -> dict[str, nn.Module]:
    """The method's layers, or the default prunable selection for dense training."""
    if method is not None and method.masks is not None:
        return method.masks.layers
    return prunable_layers(model)

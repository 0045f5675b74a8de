"""A run's parts, each instantiated from its config node, and :class:`Run`, which builds them
once: the dataset's LightningDataModule, the hardware target, the sparsity method, the model
transformation, the network, the LightningModule and (:mod:`sparsebench.training.fit`) the
Trainer. lightning-hydra-template's ``train.py`` is the model: every part from ``cfg`` by its
``_target_``; the checks that need the machine (GPUs, cores) run here, where the run starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsebench.config.checks import validate
from sparsebench.config.schemas import device_count
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.errors import ConfigError, first_line
from sparsebench.hardware.base import HardwareTarget
from sparsebench.models import build_model
from sparsebench.record.results import check_user_tags
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.training.module import ClassificationModule
from sparsebench.transforms.base import ModelTransform


def _instantiate(node: Any) -> Any:
    """A config node's object; a constructor's own one-sentence check stays one sentence."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


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
    return _instantiate(cfg.hardware)


def build_method(cfg: DictConfig) -> SparsityMethod | None:
    """The configured sparsity method, or None for dense training (no method, or ``dense``,
    whose ``_target_`` is null)."""
    node = cfg.get("method")
    return None if node is None or node.get("_target_") is None else _instantiate(node)


def build_transform(cfg: DictConfig, method: SparsityMethod | None) -> ModelTransform | None:
    """The configured model transformation, if any, checked against the method it is composed
    with (an iso-FLOP transformation fixes the sparsity the method trains at)."""
    node = cfg.get("transform")
    transform = None if node is None or node.get("_target_") is None else _instantiate(node)
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


def build_module(cfg: DictConfig, model: nn.Module) -> ClassificationModule:
    # The optimizer schema is the union of several optimizers' options; unset ones are None.
    options = OmegaConf.to_container(cfg.trainer.optimizer, resolve=True)
    optimizer = instantiate({k: v for k, v in options.items() if v is not None})
    return ClassificationModule(model, optimizer=optimizer, scheduler=cfg.trainer.scheduler,
                                warmup_epochs=cfg.trainer.warmup_epochs)  # fmt: skip


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
    if training_device(cfg) == "cuda":
        have, what = torch.cuda.device_count(), "CUDA GPUs"
    else:
        have, what = os.cpu_count() or 1, "CPU cores (DDP processes)"
    if count > have:
        hint = " (no CUDA GPU is visible; use trainer.accelerator=cpu)." if have == 0 else "."
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} asks for more {what} than "
                          f"this machine has ({have}){hint}")  # fmt: skip


@dataclass
class Run:
    """One run's parts, built once from its config and checked before anything is trained or
    recorded: bad input is one :class:`ConfigError` sentence from :meth:`build`."""

    cfg: DictConfig
    output_dir: Path
    method: SparsityMethod | None
    transform: ModelTransform | None
    hardware: HardwareTarget
    datamodule: SparseBenchDataModule | None = None  # built by :meth:`build_data`

    @classmethod
    def build(cls, cfg: DictConfig) -> Run:
        """The config's checks (keys and ranges, the machine, user tags) and its method,
        transformation and hardware target; the dataset is read by :meth:`build_data`, after
        the runner seeds the run."""
        validate(cfg)
        check_machine(cfg)
        check_user_tags(cfg)
        method = build_method(cfg)
        transform = build_transform(cfg, method)
        hardware = build_hardware(cfg)
        return cls(cfg, Path(cfg.paths.output_dir), method, transform, hardware)

    def build_data(self) -> SparseBenchDataModule:
        self.datamodule = build_datamodule(self.cfg, check=True)
        method = self.method
        self.hardware.check(method.pattern if method else None, method.name if method else "dense")
        return self.datamodule

    def seed(self) -> None:
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)

    @property
    def pattern(self) -> str:
        """The run's ``pattern`` tag: the transformation's structure (``monarch``), the method's
        pattern label, or ``dense``."""
        if self.transform is not None and self.transform.pattern_tag is not None:
            return self.transform.pattern_tag
        return self.method.pattern_tag if self.method is not None else "dense"

    def machine_tags(self) -> dict[str, str]:
        """The hardware fingerprint and where training runs (contract tags)."""
        return {**self.hardware.fingerprint(), "hw/train_device": training_device(self.cfg)}

    def model(self) -> nn.Module:
        assert self.datamodule is not None, "build_data() first"
        return build_run_model(self.cfg, self.datamodule, self.method, self.transform)

    def module(self, model: nn.Module) -> ClassificationModule:
        return build_module(self.cfg, model)

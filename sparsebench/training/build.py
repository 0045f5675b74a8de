""":class:`Run`: one run's parts (:mod:`sparsebench.training.parts`: the dataset's
LightningDataModule, the hardware target, the sparsity method, the model transformation, the
network, the LightningModule; :mod:`sparsebench.training.fit` adds the Trainer) built once from
its config, after its checks; the checks that need the machine (GPUs, cores) run here, where the
run starts, so a saved config validates on any host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig
from torch import nn

from sparsebench.config.checks import validate
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.data.text import TextDataModule
from sparsebench.hardware.base import HardwareTarget
from sparsebench.models.language import check_fits
from sparsebench.record.results import check_user_tags
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.training.machine import check_machine, training_device
from sparsebench.training.module import ClassificationModule
from sparsebench.training.parts import (
    build_datamodule,
    build_hardware,
    build_method,
    build_module,
    build_run_model,
    build_transform,
)
from sparsebench.transforms.base import ModelTransform


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
        if isinstance(self.datamodule, TextDataModule):  # the model reads its windows
            check_fits(self.cfg.model, self.datamodule.seqlen, len(self.datamodule.tokenizer))
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

""":class:`Run`: one run's parts (:mod:`sparsebench.training.parts`: the dataset's
LightningDataModule, the hardware target, the sparsity method, the model transformation, the
network, the LightningModule; :mod:`sparsebench.training.fit` adds the Trainer) built once from
its config, after its checks; the checks that need the machine (GPUs, cores) run here, where the
run starts, so a saved config validates on any host.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from sparsebench.config.checks import validate
from sparsebench.config.schemas import device_count
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.data.text import TextDataModule
from sparsebench.errors import ConfigError
from sparsebench.hardware.base import HardwareTarget
from sparsebench.models.language import check_fits
from sparsebench.record.results import check_user_tags
from sparsebench.sparsity.methods.base import SparsityMethod
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

log = logging.getLogger(__name__)


def training_device(cfg: DictConfig) -> str:
    """Where the run trains: ``trainer.accelerator``, with ``auto`` resolved as Lightning
    resolves it (a CUDA GPU if one is visible, else the CPU); recorded as ``hw/train_device``."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, through oneDNN)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(cfg: DictConfig) -> None:
    """bfloat16 (``bf16-mixed`` autocast, ``bf16-true``) where the training device computes it:
    a CUDA GPU that has it is required (compute capability 8 or later); a CPU without native
    bfloat16 runs it emulated, slower than fp32, which is said once."""
    precision = str(cfg.trainer.precision)
    if not precision.startswith("bf16"):
        return
    if training_device(cfg) == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"trainer.precision={precision} needs a GPU that computes bfloat16 (compute "
                f"capability 8.0 or later), and {torch.cuda.get_device_name()} does not; use "
                "trainer.precision=16-mixed or 32-true."
            )
    elif not cpu_has_bf16():
        log.warning(
            "trainer.precision=%s: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so "
            "autocast emulates it and training is slower than with 32-true.",
            precision,
        )


def check_machine(cfg: DictConfig) -> None:
    """What the config asks of this machine, checked where the run starts (a saved config
    validates on any host): no more CUDA GPUs or CPU cores (DDP processes) than it has, and
    a precision its device computes (:func:`check_precision`)."""
    check_precision(cfg)
    count = device_count(cfg.trainer.devices)
    if count is None:
        return
    if training_device(cfg) == "cuda":
        have, what = torch.cuda.device_count(), "CUDA GPUs"
    else:
        have, what = os.cpu_count() or 1, "CPU cores (DDP processes)"
    if count > have:
        hint = " (no CUDA GPU is visible; use trainer.accelerator=cpu)." if have == 0 else "."
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices} asks for more {what} than "
            f"this machine has ({have}){hint}"
        )


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

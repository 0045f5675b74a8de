"""What a run asks of the machine it starts on, checked there (a saved config validates on
any host): where it trains, how many devices, and a precision the device computes."""

from __future__ import annotations

import logging
import os

import torch
from omegaconf import DictConfig

from sparsebench.config.schemas import device_count
from sparsebench.errors import ConfigError

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

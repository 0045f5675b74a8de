"""The hardware-target interface: which sparsity patterns it runs, how to convert, how to time."""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod

import psutil
import torch
from torch import nn


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class HardwareTarget(ABC):
    """A place to deploy a (sparse) model and measure its latency."""

    name: str = "base"
    estimated: bool = False

    def __init__(
        self,
        name: str,
        threads: int | None = None,
        batch_size: int = 1,
        enabled: bool = True,
        **_: object,
    ) -> None:
        self.name = name
        self.threads = threads or psutil.cpu_count(logical=False) or 1
        self.batch_size = batch_size
        self.enabled = enabled

    def supports(self, pattern: str) -> bool:
        """Whether this target runs ``pattern`` (``dense``, ``unstructured``, ``nm``, ...)."""
        return pattern == "dense"

    def convert(self, model: nn.Module) -> nn.Module:
        """The model as it runs on this target (dense targets run it unchanged)."""
        return model

    @abstractmethod
    def benchmark(self, model: nn.Module, example: torch.Tensor) -> dict[str, float]:
        """Latency metrics of ``model`` on a batch like ``example`` (results-contract names)."""

    def fingerprint(self) -> dict[str, str]:
        """Tags that identify the machine a latency was measured on."""
        tags = {
            "hw/cpu": cpu_model(),
            "hw/threads": str(self.threads),
            "hw/torch": torch.__version__,
        }
        if torch.cuda.is_available():
            tags["hw/gpu"] = torch.cuda.get_device_name()
        return tags

"""Hardware targets: where latency is measured. One class per yaml in conf/hardware/."""

from sparsebench.hardware.base import HardwareTarget
from sparsebench.hardware.cpu import CPUTarget

__all__ = ["CPUTarget", "HardwareTarget"]

"""Hardware targets: where latency is measured (or estimated). One class per yaml in conf/hardware/."""

from sparsebench.hardware.base import HardwareTarget, Measurement
from sparsebench.hardware.cpu import CPUSparseTarget, CPUTarget
from sparsebench.hardware.cuda import CUDA2to4Target, CUDATarget
from sparsebench.hardware.roofline import RooflineTarget

__all__ = [
    "CPUSparseTarget",
    "CPUTarget",
    "CUDA2to4Target",
    "CUDATarget",
    "HardwareTarget",
    "Measurement",
    "RooflineTarget",
]

"""Dense eager PyTorch on the CPU, timed with torch.utils.benchmark."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils import benchmark

from sparsebench.hardware.base import HardwareTarget


class CPUTarget(HardwareTarget):
    """Eager PyTorch on the CPU with an explicit thread count, under ``inference_mode``.

    Latency is per forward pass of a batch of ``batch_size``: after ``warmup`` calls,
    ``torch.utils.benchmark.Timer`` times repeats of ~10 ms for at least ``min_run_time``
    seconds (and at least 10 repeats); p50/p90 are over the repeats.
    """

    def __init__(self, min_run_time: float = 0.5, warmup: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.min_run_time = min_run_time
        self.warmup = warmup

    def time_forward(self, model: nn.Module, example: torch.Tensor) -> tuple[float, float]:
        """(p50, p90) seconds of one forward of ``example`` through ``model``."""
        model.eval()

        @torch.inference_mode()
        def forward() -> None:
            model(example)

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for _ in range(self.warmup):
                forward()
            timer = benchmark.Timer(
                stmt="forward()", globals={"forward": forward}, num_threads=self.threads
            )
            # Calls per repeat so that one repeat takes ~10 ms, then enough repeats to fill
            # min_run_time (at least 10), so p50 and p90 are percentiles over real repeats.
            single = timer.timeit(number=1).median
            number = max(1, int(0.01 / max(single, 1e-9)))
            repeats = max(10, int(self.min_run_time / max(single * number, 1e-9)))
            times = np.array([timer.timeit(number=number).median for _ in range(repeats)])
        finally:
            torch.set_num_threads(previous)
        return float(np.percentile(times, 50)), float(np.percentile(times, 90))

    def benchmark(self, model: nn.Module, example: torch.Tensor) -> dict[str, float]:
        example = example[:1].expand(self.batch_size, *example.shape[1:]).contiguous()
        p50, p90 = self.time_forward(model, example)
        # This target runs dense kernels, so the dense reference is the same measurement.
        return {
            "latency/p50_ms": p50 * 1e3,
            "latency/p90_ms": p90 * 1e3,
            "latency/dense_p50_ms": p50 * 1e3,
            "speedup/measured": 1.0,
            "throughput/samples_per_s": self.batch_size / p50,
        }

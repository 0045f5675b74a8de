"""Estimated targets: a roofline model of accelerators this project cannot run on.

Per Conv/Linear layer, time = max(FLOPs / (peak * acceleration), weight bytes / bandwidth),
where the acceleration is what the target's sparse kernels give that layer's pattern (e.g. 2x
for 2:4 on Ampere/Hopper sparse tensor cores, 1 for unstructured); the rest of the network's
FLOPs run at peak. Results carry ``latency/estimated=true`` and are never compared with
measured latencies (their benchmark_key differs by hardware name as well).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.hardware.base import HardwareTarget, Measurement
from sparsebench.metrics.flops import module_flops
from sparsebench.metrics.size import DTYPE_BYTES, layer_bytes, model_bytes
from sparsebench.sparsity.patterns import NM, Pattern, matches, pattern_label


class RooflineTarget(HardwareTarget):
    estimated = True

    def __init__(
        self,
        peak_tflops: float | None = None,
        bandwidth_gbs: float | None = None,
        accelerations: dict[str, float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not peak_tflops or not bandwidth_gbs or peak_tflops <= 0 or bandwidth_gbs <= 0:
            raise ConfigError(
                f"hardware '{self.name}' needs peak_tflops > 0 and bandwidth_gbs > 0."
            )
        self.peak = peak_tflops * 1e12
        self.bandwidth = bandwidth_gbs * 1e9
        self.accelerations = dict(accelerations or {})
        self.accelerates = tuple(k for k, v in self.accelerations.items() if v > 1)

    def acceleration(self, pattern: Pattern | None) -> float:
        """The compute speed-up this target's kernels give layers pruned in ``pattern``."""
        return max([v for k, v in self.accelerations.items() if matches(pattern, (k,))] or [1.0])

    def layer_format(self, pattern: Pattern | None) -> str:
        """Accelerated N:M layers are stored compressed (values + indices); others as configured."""
        if isinstance(pattern, NM) and self.acceleration(pattern) > 1:
            return "nm"
        return self.storage_format

    def size(self, model, layers, pattern=None):
        return model_bytes(model, layers, self.layer_format(pattern), self.dtype)

    def estimate(
        self,
        model: nn.Module,
        example: torch.Tensor,
        layers: dict[str, nn.Module],
        pattern: Pattern | None,
        sparse: bool,
    ) -> float:
        total, per_layer = module_flops(model, example)
        b = DTYPE_BYTES[self.dtype]
        seconds, layer_flops = 0.0, 0
        for name, module in model.named_modules():
            if name not in per_layer:
                continue
            flops = per_layer[name]
            layer_flops += flops
            pruned = sparse and name in layers
            speedup = self.acceleration(pattern) if pruned else 1.0
            compute = flops / speedup  # unaccelerated patterns run their zeros at dense speed
            fmt = self.layer_format(pattern) if pruned else "dense"
            memory = layer_bytes(module.weight, fmt, b) / self.bandwidth
            seconds += max(compute / self.peak, memory)
        return seconds + (total - layer_flops) / self.peak

    def benchmark(self, model, example, layers=None, pattern=None, dense=None) -> Measurement:
        x = example[:1].expand(self.batch_size, *example.shape[1:])
        sparse = self.estimate(model, x, layers or {}, pattern, sparse=True)
        reference = model if dense is None else dense  # a physically smaller model's original
        dense = self.estimate(reference, x, {}, None, sparse=False)
        kernel = pattern_label(pattern) if self.acceleration(pattern) > 1 else "dense"
        return Measurement(
            {
                "latency/p50_ms": sparse * 1e3,
                "latency/p90_ms": sparse * 1e3,
                "latency/dense_p50_ms": dense * 1e3,
                "speedup/measured": dense / sparse,  # an estimate too: latency/estimated=true
                "throughput/samples_per_s": self.batch_size / sparse,
            },
            {name: f"{kernel} (estimated)" for name in layers or {}},
        )

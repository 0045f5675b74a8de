"""The hardware-target interface: which sparsity patterns it runs, how to convert, how to time.

Finding masks (methods) is separate from deploying them: a target takes the trained model with
its zeros, converts what it can to its sparse kernels, checks the converted model computes the
same outputs, and times it next to the same target's dense kernels.
"""

from __future__ import annotations

import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.metrics.size import DTYPE_BYTES, FORMATS, model_bytes
from sparsebench.sparsity.patterns import Pattern, matches, pattern_label


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


@dataclass
class Measurement:
    """What a target measured: the contract's latency metrics, the kernel each pruned layer
    ran with (``dense``, ``csr``, ``bsr4x4``, ``direct``, ``direct4x1``, ``2:4``, or
    ``dense (why)``), and tags about the measurement (``latency/noisy``)."""

    metrics: dict[str, float]
    kernels: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def per_token(prefill: Measurement, decode: Measurement, tokens: int) -> Measurement:
    """A language model's latencies per token from a target's two measurements: its window of
    ``tokens`` (the prefill) over its tokens, and one decode step with the KV cache of the
    window before it, each beside the same target's dense kernels; the decode step's kernels;
    noisy when either timing was."""
    p, d = prefill.metrics, decode.metrics
    metrics = {
        "throughput/tokens_per_s": p["throughput/samples_per_s"] * tokens,
        "latency/prefill_token_ms": p["latency/p50_ms"] / tokens,
        "latency/dense_prefill_token_ms": p["latency/dense_p50_ms"] / tokens,
        "latency/decode_token_ms": d["latency/p50_ms"],
        "latency/decode_token_p90_ms": d["latency/p90_ms"],
        "latency/dense_decode_token_ms": d["latency/dense_p50_ms"],
        "speedup/decode_measured": d["speedup/measured"],
        "throughput/decode_tokens_per_s": d["throughput/samples_per_s"],
    }
    noise = [
        f"{label}: {m.tags['latency/noise']}"
        for label, m in (("prefill", prefill), ("decode step", decode))
        if "latency/noise" in m.tags
    ]
    tags = {"latency/noisy": "true", "latency/noise": "; ".join(noise)} if noise else {}
    return Measurement(metrics, decode.kernels, tags)


class HardwareTarget(ABC):
    """A place to deploy a (sparse) model and measure its latency."""

    #: Patterns this target runs with sparse kernels: labels (``2:4``) or kinds (``nm``).
    accelerates: tuple[str, ...] = ()
    #: Whether it runs any other pattern with its dense kernels (a dense target does).
    runs_dense: bool = True
    estimated: bool = False

    def __init__(
        self,
        name: str,
        threads: int | None = None,
        batch_size: int = 1,
        enabled: bool = True,
        dense_fallback: bool = False,
        dtype: str = "fp32",
        storage_format: str = "dense",
        min_run_time: float = 0.5,
        max_run_time: float = 5.0,
        warmup: int = 5,
    ) -> None:
        """``min_run_time`` and ``max_run_time`` (seconds: timing goes on past the first until
        the median is known to +-5%, never past the second) and ``warmup`` (calls) time
        measured targets; estimated ones take and ignore them, so that one override
        (``debug=fast``) fits every target."""
        if batch_size < 1:
            raise ConfigError(f"hardware.batch_size must be >= 1, got {batch_size}.")
        if threads is not None and threads < 1:
            raise ConfigError(f"hardware.threads must be >= 1, got {threads}.")
        if min_run_time <= 0:
            raise ConfigError(f"hardware.min_run_time must be > 0, got {min_run_time}.")
        if max_run_time < min_run_time:
            raise ConfigError(
                f"hardware.max_run_time must be >= hardware.min_run_time ({min_run_time}), got {max_run_time}."
            )
        if dtype not in DTYPE_BYTES:
            raise ConfigError(
                f"hardware.dtype must be one of {', '.join(DTYPE_BYTES)}, got '{dtype}'."
            )
        if storage_format not in FORMATS:
            raise ConfigError(
                f"hardware.storage_format must be one of {', '.join(FORMATS)}, got '{storage_format}'."
            )
        self.name = name
        self.threads = threads or psutil.cpu_count(logical=False) or 1
        self.batch_size = batch_size
        self.enabled = enabled
        self.dense_fallback = dense_fallback
        self.dtype = dtype
        self.storage_format = storage_format
        self.min_run_time, self.max_run_time, self.warmup = min_run_time, max_run_time, warmup

    def supports(self, pattern: Pattern | None) -> bool:
        """Whether this target runs ``pattern`` (None: a dense model)."""
        return self.runs_dense or pattern is None or matches(pattern, self.accelerates)

    def check(self, pattern: Pattern | None, method_name: str) -> None:
        """Fail before training if the method's pattern cannot run here (unless dense fallback)."""
        if self.supports(pattern) or self.dense_fallback:
            return
        raise ConfigError(
            f"hardware '{self.name}' runs only {', '.join(self.accelerates)} sparsity, but method "
            f"'{method_name}' produces {pattern_label(pattern)}; choose another target or set "
            "hardware.dense_fallback=true to time it with dense kernels."
        )

    def convert(
        self, model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
    ) -> tuple[nn.Module, dict[str, str]]:
        """The model as it runs on this target, and each layer's kernel (dense targets run it
        unchanged)."""
        return model, {}

    @abstractmethod
    def benchmark(
        self,
        model: nn.Module,
        example: torch.Tensor,
        layers: dict[str, nn.Module] | None = None,
        pattern: Pattern | None = None,
        dense: nn.Module | None = None,
    ) -> Measurement:
        """Latency of ``model`` on a batch like ``example`` (results-contract names), with
        ``layers`` pruned in ``pattern``; ``dense``: the dense reference when ``model`` is
        another network (the physically smaller one of a structured method), else ``model``
        itself with dense kernels. A target keeps no state between calls: everything a
        measurement depends on is an argument."""

    def size(
        self, model: nn.Module, layers: dict[str, nn.Module], pattern: Pattern | None = None
    ) -> dict[str, float]:
        """``size/dense_bytes`` and ``size/sparse_bytes`` in this target's storage format."""
        return model_bytes(model, layers, self.storage_format, self.dtype)

    def fingerprint(self) -> dict[str, str]:
        """Tags that identify the machine a latency was measured on."""
        tags = {
            "hw/cpu": cpu_model(),
            "hw/threads": str(self.threads),
            "hw/torch": torch.__version__,
            "latency/estimated": str(self.estimated).lower(),
        }
        if torch.cuda.is_available():
            tags["hw/gpu"] = torch.cuda.get_device_name()
        return tags

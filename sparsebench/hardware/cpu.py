"""CPU targets: dense eager PyTorch, and torch.sparse CSR/BSR kernels for Linear and 1x1 convs."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from sparsebench.config import ConfigError
from sparsebench.hardware.base import HardwareTarget, Measurement
from sparsebench.sparsity.patterns import as_matrix


def time_forward(fn, threads: int, warmup: int, min_run_time: float) -> tuple[float, float]:
    """(p50, p90) seconds of ``fn()``: torch.utils.benchmark repeats of ~10 ms each.

    After ``warmup`` calls, one call sizes the repeat (calls per ~10 ms); at least 10 repeats,
    enough to fill ``min_run_time``. Threads are set for the timing and restored after.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            fn()
        # Imported here: torch.utils.benchmark loads torch's C++-extension tooling, which warns
        # about CUDA on import; a run that fails its config checks never needs it.
        from torch.utils import benchmark

        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        single = timer.timeit(number=1).median
        number = max(1, int(0.01 / max(single, 1e-9)))
        repeats = max(10, int(min_run_time / max(single * number, 1e-9)))
        times = np.array([timer.timeit(number=number).median for _ in range(repeats)])
    finally:
        torch.set_num_threads(previous)
    return float(np.percentile(times, 50)), float(np.percentile(times, 90))


def batch_like(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    return example[:1].expand(batch_size, *example.shape[1:]).contiguous()


class CPUTarget(HardwareTarget):
    """Eager PyTorch on the CPU with an explicit thread count, under ``inference_mode``.

    Latency is per forward pass of a batch of ``batch_size``; p50/p90 are over timed repeats
    (:func:`time_forward`). It runs every pattern with dense kernels (measured speed-up 1).
    """

    def time_model(self, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
        model.eval()

        @torch.inference_mode()
        def forward() -> None:
            model(x)

        return time_forward(forward, self.threads, self.warmup, self.min_run_time)

    def latency_metrics(self, p50: float, p90: float, dense_p50: float) -> dict[str, float]:
        return {
            "latency/p50_ms": p50 * 1e3,
            "latency/p90_ms": p90 * 1e3,
            "latency/dense_p50_ms": dense_p50 * 1e3,
            "speedup/measured": dense_p50 / p50,
            "throughput/samples_per_s": self.batch_size / p50,
        }

    def benchmark(self, model, example, layers=None, pattern=None) -> Measurement:
        p50, p90 = self.time_model(model, batch_like(example, self.batch_size))
        # Dense kernels: the dense reference is the measurement itself.
        return Measurement(
            self.latency_metrics(p50, p90, p50), {name: "dense" for name in layers or {}}
        )


class SparseLinear(nn.Module):
    """y = x W^T + b with W a torch.sparse CSR or BSR matrix (MKL kernels on the CPU).

    Also stands in for a 1x1 convolution (stride applied by slicing, channels as features).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, conv_stride: int | None = None
    ) -> None:
        super().__init__()
        self.weight = int32_indices(weight)  # sparse, not a Parameter: inference only
        self.bias = None if bias is None else bias.detach()[:, None]  # a column: addmm adds it
        self.conv_stride = conv_stride

    def product(self, columns: torch.Tensor) -> torch.Tensor:
        """W @ columns (+ the bias): one output column per input column."""
        # torch.sparse.mm / addmm(sparse, dense) is the MKL path; F.linear with a sparse weight is
        # slower. addmm adds the bias in the same call instead of a second pass over the output.
        if self.bias is None:
            return torch.sparse.mm(self.weight, columns)
        return torch.addmm(self.bias, self.weight, columns)

    def matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        return self.product(x2d.t()).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_stride is None:
            return self.matmul(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        if self.conv_stride > 1:
            x = x[:, :, :: self.conv_stride, :: self.conv_stride]
        n, c, h, w = x.shape
        if n == 1:  # W x (C, H*W) in the NCHW layout itself: no permute (Elsen et al. 2020)
            return self.product(x.reshape(c, h * w)).reshape(1, -1, h, w)
        y = self.matmul(x.permute(0, 2, 3, 1).reshape(-1, c))
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def int32_indices(weight: torch.Tensor) -> torch.Tensor:
    """The CSR or BSR ``weight`` with 32-bit indices: MKL's sparse routines take 32-bit indices,
    so with torch's default 64-bit ones every call converts them first (measured with a
    4096x4096 weight at 90%, 2 threads: batch 1 0.87 -> 0.60 ms, batch 64 4.95 -> 4.66 ms)."""
    make = {torch.sparse_csr: torch.sparse_csr_tensor,
            torch.sparse_bsr: torch.sparse_bsr_tensor}.get(weight.layout)  # fmt: skip
    if make is None:
        return weight
    return make(weight.crow_indices().to(torch.int32), weight.col_indices().to(torch.int32),
                weight.values(), weight.shape)  # fmt: skip


def is_matmul_layer(module: nn.Module) -> bool:
    """Linear layers and 1x1 convolutions (no padding, groups, dilation): sparse-matmul shaped."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), 0) and module.dilation == (1, 1))  # fmt: skip


def sparse_candidates(
    module: nn.Module, kernels: list[str], block_sizes: list[int]
) -> dict[str, nn.Module]:
    weight = as_matrix(module.weight.detach())  # 1x1 convs: out x in
    stride = module.stride[0] if isinstance(module, nn.Conv2d) else None
    out = {}
    if "csr" in kernels:
        out["csr"] = SparseLinear(weight.to_sparse_csr(), module.bias, stride)
    if "bsr" in kernels:
        for b in block_sizes:  # MKL's BSR needs square blocks that tile the matrix
            if weight.shape[0] % b == 0 and weight.shape[1] % b == 0:
                out[f"bsr{b}x{b}"] = SparseLinear(weight.to_sparse_bsr((b, b)), module.bias, stride)
    return out


class CPUSparseTarget(CPUTarget):
    """torch.sparse kernels for prunable Linear layers and 1x1 convs, the rest dense.

    Each eligible layer (sparsity >= ``min_sparsity``) is timed on its real input with the
    dense kernel and each sparse candidate (CSR; BSR with square blocks), and keeps whichever
    is fastest; the choice per layer is reported. The converted model's outputs are checked
    against the dense model before any timing.
    """

    accelerates = ("unstructured", "nm", "block", "channel")

    def __init__(self, kernels: list[str] | None = None, block_sizes: list[int] | None = None,
                 min_sparsity: float | None = None, storage_format: str = "csr", **kwargs) -> None:  # fmt: skip
        super().__init__(storage_format=storage_format, **kwargs)
        self.kernel_options = list(kernels or ["csr", "bsr"])
        unknown = set(self.kernel_options) - {"csr", "bsr"}
        if unknown:
            raise ConfigError(f"hardware.kernels may hold csr and bsr, got {sorted(unknown)}.")
        self.block_sizes = list(block_sizes or [4, 16])
        if any(int(b) < 1 for b in self.block_sizes):
            raise ConfigError(f"hardware.block_sizes must all be >= 1, got {self.block_sizes}.")
        self.min_sparsity = 0.3 if min_sparsity is None else min_sparsity

    def layer_inputs(
        self, model: nn.Module, names: list[str], x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        inputs: dict[str, torch.Tensor] = {}
        hooks = [model.get_submodule(n).register_forward_hook(
            lambda m, args, out, n=n: inputs.__setitem__(n, args[0].detach())) for n in names]  # fmt: skip
        with torch.inference_mode():
            model(x)
        for hook in hooks:
            hook.remove()
        return inputs

    def convert(self, model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
                ) -> tuple[nn.Module, dict[str, str]]:  # fmt: skip
        converted = copy.deepcopy(model).eval()
        eligible = [n for n, m in layers.items() if is_matmul_layer(m)
                    and 1 - float(m.weight.count_nonzero()) / m.weight.numel() >= self.min_sparsity]  # fmt: skip
        inputs = self.layer_inputs(converted, eligible, example)
        kernels: dict[str, str] = {}
        for name in eligible:
            module = converted.get_submodule(name)
            options = {
                "dense": module,
                **sparse_candidates(module, self.kernel_options, self.block_sizes),
            }
            timings = {}
            for kernel, candidate in options.items():
                fn = torch.inference_mode()(lambda c=candidate, i=inputs[name]: c(i))
                timings[kernel] = time_forward(fn, self.threads, 1, self.min_run_time / 10)[0]
            best = min(timings, key=timings.get)
            kernels[name] = best
            if best != "dense":
                parent_name, _, child = name.rpartition(".")
                setattr(
                    converted.get_submodule(parent_name) if parent_name else converted,
                    child,
                    options[best],
                )
        return converted, kernels

    def benchmark(self, model, example, layers=None, pattern=None) -> Measurement:
        x = batch_like(example, self.batch_size)
        dense_p50, _ = self.time_model(model, x)
        converted, kernels = self.convert(model, layers or {}, x)
        with torch.inference_mode():
            expected, got = model(x), converted(x)
        if not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
            error = float((expected - got).abs().max())
            raise RuntimeError(
                f"hardware '{self.name}': sparse kernels changed the outputs (max error {error:.3g})."
            )
        p50, p90 = self.time_model(converted, x)
        metrics = self.latency_metrics(p50, p90, dense_p50)
        metrics["kernels/sparse_layers"] = sum(k != "dense" for k in kernels.values())
        return Measurement(metrics, kernels)

"""CPU targets: dense eager PyTorch, and sparse kernels (torch.sparse CSR/BSR; the direct kernel)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.hardware.base import HardwareTarget, Measurement
from sparsebench.hardware.deploy import fold_batchnorm
from sparsebench.hardware.direct import DirectSparse, KernelUnavailable, refusal, sparse_rows_op
from sparsebench.hardware.timing import Noise, Timing, time_interleaved
from sparsebench.sparsity.patterns import as_matrix
from sparsebench.sparsity.prunable import set_module

log = logging.getLogger(__name__)


def batch_like(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    return example[:1].expand(batch_size, *example.shape[1:]).contiguous()


class CPUTarget(HardwareTarget):
    """Eager PyTorch on the CPU with an explicit thread count, under ``inference_mode``, the
    model as inference runtimes deploy it (BatchNorm folded into the conv before it:
    :mod:`.deploy`).

    Latency is per forward pass of a batch of ``batch_size``: the median (and p90) of timed
    blocks, repeated until the median's 95% interval is within +-5% or ``max_run_time`` ends,
    with the interval, the machine's load and a noise verdict recorded (:mod:`.timing`). It
    runs every pattern with dense kernels (measured speed-up 1).
    """

    def deploy(self, model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, dict[str, float]]:
        """The model to time (BatchNorm folded), checked against ``model`` on ``x``."""
        deployed, folded = fold_batchnorm(model, x)
        check_outputs(self.name, "folding BatchNorm", model, deployed, x)
        return deployed, {"kernels/bn_folded": folded}

    def time_models(
        self, models: dict[str, nn.Module], x: torch.Tensor
    ) -> tuple[dict[str, Timing], Noise]:
        """The models' forward passes on ``x``, timed interleaved (:func:`time_interleaved`)."""
        fns = {}
        for name, model in models.items():
            model.eval()
            fns[name] = torch.inference_mode()(lambda m=model: m(x))
        return time_interleaved(
            fns, self.threads, self.warmup, self.min_run_time, self.max_run_time
        )

    def latency(self, timings: dict[str, Timing], noise: Noise) -> Measurement:
        """The contract's latency metrics of ``timings["model"]`` against ``timings["dense"]``
        (the model itself where the target runs it dense), and the noise as metrics and tags."""
        model = timings["model"]
        dense = timings.get("dense", model)
        metrics = {
            "latency/p50_ms": model.p50 * 1e3,
            "latency/p90_ms": model.p90 * 1e3,
            "latency/p50_low_ms": model.low * 1e3,
            "latency/p50_high_ms": model.high * 1e3,
            "latency/dense_p50_ms": dense.p50 * 1e3,
            "latency/interval_rel": noise.rel_halfwidth,
            "speedup/measured": dense.p50 / model.p50,
            "throughput/samples_per_s": self.batch_size / model.p50,
            "host/load": noise.competing,
            "host/load_avg": noise.load_avg,
        }
        tags = {"latency/noisy": str(noise.noisy).lower()}
        if noise.noisy:
            tags["latency/noise"] = "; ".join(noise.reasons)
            log.warning(
                "hardware '%s': latency is noisy: %s (latency/noisy=true).",
                self.name,
                tags["latency/noise"],
            )
        return Measurement(metrics, tags=tags)

    def benchmark(self, model, example, layers=None, pattern=None, dense=None) -> Measurement:
        # Dense kernels: the dense reference is the measurement itself (or ``dense``).
        x = batch_like(example, self.batch_size)
        deployed, counts = self.deploy(model, x)
        models = {"model": deployed}
        if dense is not None:
            models["dense"] = self.deploy(dense, x)[0]
        measured = self.latency(*self.time_models(models, x))
        measured.metrics.update(counts)
        measured.kernels = {name: "dense" for name in layers or {}}
        return measured


def check_outputs(
    target: str,
    what: str,
    model: nn.Module,
    converted: nn.Module,
    x: torch.Tensor,
    tolerance: float = 1e-4,
) -> None:
    """Raise if ``converted`` computes other outputs than ``model`` on ``x`` (before timing),
    beyond ``tolerance`` (relative and absolute; 1e-2 for fp16 kernels)."""
    with torch.inference_mode():
        expected, got = model.eval()(x).float(), converted(x).float()
    if not torch.allclose(expected, got, rtol=tolerance, atol=tolerance):
        error = float((expected - got).abs().max())
        raise RuntimeError(
            f"hardware '{target}': {what} changed the outputs (max error {error:.3g})."
        )


def layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of each named layer on one forward pass of ``x`` (its real shape)."""
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, out) -> None:  # None: a hook's return value replaces the output
            inputs.setdefault(name, args[0].detach())

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


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
    make = {
        torch.sparse_csr: torch.sparse_csr_tensor,
        torch.sparse_bsr: torch.sparse_bsr_tensor,
    }.get(weight.layout)
    if make is None:
        return weight
    return make(
        weight.crow_indices().to(torch.int32),
        weight.col_indices().to(torch.int32),
        weight.values(),
        weight.shape,
    )


def is_matmul_layer(module: nn.Module) -> bool:
    """Linear layers and 1x1 convolutions (no padding, groups, dilation): sparse-matmul shaped."""
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), 0)
        and module.dilation == (1, 1)
    )


def sparse_candidates(
    module: nn.Module, kernels: list[str], block_sizes: list[int]
) -> dict[str, nn.Module]:
    """The sparse versions of ``module`` among ``kernels``: MKL's CSR and square-block BSR
    (Linear and 1x1 convolutions), and the direct kernel with 1 and 4 output channels per
    group (Linear and any zero-padded Conv2d, grouped and depthwise ones included)."""
    out: dict[str, nn.Module] = {}
    if is_matmul_layer(module):
        weight = as_matrix(module.weight.detach())  # 1x1 convs: out x in
        stride = module.stride[0] if isinstance(module, nn.Conv2d) else None
        if "csr" in kernels:
            out["csr"] = SparseLinear(weight.to_sparse_csr(), module.bias, stride)
        if "bsr" in kernels:
            for b in block_sizes:  # MKL's BSR needs square blocks that tile the matrix
                if weight.shape[0] % b == 0 and weight.shape[1] % b == 0:
                    out[f"bsr{b}x{b}"] = SparseLinear(
                        weight.to_sparse_bsr((b, b)), module.bias, stride
                    )
    if "direct" in kernels:
        for rows, label in ((1, "direct"), (4, "direct4x1")):
            if refusal(module, rows) is None:
                out[label] = DirectSparse(module, rows=rows)
    return out


KERNELS = ("csr", "bsr", "direct")


class CPUSparseTarget(CPUTarget):
    """Sparse kernels for pruned Linear layers and convolutions, the rest dense.

    Each pruned layer (sparsity >= ``min_sparsity``) is timed on its real input with the dense
    kernel and each sparse candidate: torch.sparse's MKL CSR and square-block BSR (Linear, 1x1
    convolutions) and sparsebench's direct kernel (:mod:`.direct`: Linear and zero-padded
    convolutions, grouped ones included; 1 or 4 output channels per group). It keeps whichever is fastest;
    the choice per layer is reported, with the reason where a layer stays dense. The converted
    model's outputs are checked against the dense model before any timing, and the two are
    timed interleaved.
    """

    accelerates = ("unstructured", "nm", "block", "channel")

    def __init__(
        self,
        kernels: list[str] | None = None,
        block_sizes: list[int] | None = None,
        min_sparsity: float | None = None,
        storage_format: str = "csr",
        **kwargs,
    ) -> None:
        super().__init__(storage_format=storage_format, **kwargs)
        self.kernel_options = list(KERNELS if kernels is None else kernels)
        unknown = set(self.kernel_options) - set(KERNELS)
        if unknown or not self.kernel_options:
            raise ConfigError(
                f"hardware.kernels may hold {', '.join(KERNELS)} (at least one), got {sorted(unknown) or '[]'}."
            )
        if "direct" in self.kernel_options:
            try:
                sparse_rows_op()  # built here, before training, so a missing compiler fails first
            except KernelUnavailable as exc:
                raise ConfigError(
                    f"hardware.kernels includes direct, but {exc}; or drop it: hardware.kernels=[csr,bsr]."
                ) from None
        self.block_sizes = list(block_sizes or [4, 16])
        if any(int(b) < 1 for b in self.block_sizes):
            raise ConfigError(f"hardware.block_sizes must all be >= 1, got {self.block_sizes}.")
        self.min_sparsity = 0.3 if min_sparsity is None else min_sparsity

    def convert(
        self, model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor
    ) -> tuple[nn.Module, dict[str, str]]:
        converted = copy.deepcopy(model).eval()
        kernels: dict[str, str] = {}
        options: dict[str, dict[str, nn.Module]] = {}
        for name in layers:
            module = converted.get_submodule(name)
            sparsity = 1 - float(module.weight.count_nonzero()) / module.weight.numel()
            if sparsity < self.min_sparsity:
                kernels[name] = (
                    f"dense (sparsity {sparsity:.2f} < hardware.min_sparsity {self.min_sparsity})"
                )
                continue
            candidates = sparse_candidates(module, self.kernel_options, self.block_sizes)
            if not candidates:
                reason = refusal(module) if "direct" in self.kernel_options else None
                kernels[name] = (
                    f"dense ({reason or 'no kernel among hardware.kernels runs this layer'})"
                )
                continue
            options[name] = {"dense": module, **candidates}
        inputs = layer_inputs(converted, list(options), example)
        for name, candidates in options.items():
            fns = {k: lambda c=c, i=inputs[name]: c(i) for k, c in candidates.items()}
            with torch.inference_mode():
                timings, _ = time_interleaved(
                    fns, self.threads, 1, self.min_run_time / 10, self.min_run_time / 5
                )
            best = min(timings, key=lambda k: timings[k].p50)
            kernels[name] = best
            if best != "dense":
                set_module(converted, name, candidates[best])
        return converted, kernels

    def benchmark(self, model, example, layers=None, pattern=None, dense=None) -> Measurement:
        x = batch_like(example, self.batch_size)
        deployed, counts = self.deploy(model, x)
        converted, kernels = self.convert(deployed, layers or {}, x)
        check_outputs(self.name, "sparse kernels", model, converted, x)
        reference = deployed if dense is None else self.deploy(dense, x)[0]
        measured = self.latency(*self.time_models({"dense": reference, "model": converted}, x))
        measured.metrics.update(counts)
        measured.metrics["kernels/sparse_layers"] = sum(
            not k.startswith("dense") for k in kernels.values()
        )
        measured.kernels = kernels
        return measured

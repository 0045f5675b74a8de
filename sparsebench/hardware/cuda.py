"""CUDA targets: dense kernels, and 2:4 semi-structured sparse kernels (cuSPARSELt/CUTLASS)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.hardware.base import Measurement
from sparsebench.hardware.cpu import CPUTarget, batch_like, check_outputs
from sparsebench.sparsity.patterns import is_nm

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def require_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"hardware '{name}' needs a CUDA GPU, and none is visible (torch.cuda.is_available() is False)."
        )


class CUDATarget(CPUTarget):
    """Dense kernels on the GPU at ``dtype``; torch.utils.benchmark synchronises CUDA around
    every timed block, so the latencies are device time, not launch time."""

    def check(self, pattern, method_name: str) -> None:
        super().check(pattern, method_name)  # the pattern first: it is the user's choice
        require_cuda(self.name)

    def prepare(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model).to(device="cuda", dtype=DTYPES[self.dtype]).eval()

    def batch(self, example: torch.Tensor) -> torch.Tensor:
        x = batch_like(example, self.batch_size).to(device="cuda")
        # Token ids stay integers; images and signals take the target's dtype.
        return x.to(DTYPES[self.dtype]) if x.is_floating_point() else x

    def benchmark(self, model, example, layers=None, pattern=None, dense=None) -> Measurement:
        models = {"model": self.prepare(model)}
        if dense is not None:
            models["dense"] = self.prepare(dense)
        measured = self.latency(*self.time_models(models, self.batch(example)))
        measured.kernels = {name: "dense" for name in layers or {}}
        return measured


class CUDA2to4Target(CUDATarget):
    """2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) for prunable
    Linear layers at fp16/bf16; the dense reference is the same model with dense fp16 kernels.
    Only 2:4 masks are accepted (NVIDIA's sparse tensor cores run nothing else)."""

    accelerates = ("2:4",)
    runs_dense = False

    def __init__(self, dtype: str = "fp16", storage_format: str = "nm", **kwargs) -> None:
        if dtype not in ("fp16", "bf16"):
            raise ConfigError(f"hardware 'cuda_2to4' runs fp16 or bf16, got dtype '{dtype}'.")
        super().__init__(dtype=dtype, storage_format=storage_format, **kwargs)

    def convert(self, model, layers, example):
        from torch.sparse import to_sparse_semi_structured

        converted = self.prepare(model)
        kernels: dict[str, str] = {}
        for name in layers:
            target = converted.get_submodule(name)
            if not (isinstance(target, nn.Linear) and is_nm(target.weight != 0, 2, 4)):
                kernels[name] = "dense"
                continue
            try:
                sparse = to_sparse_semi_structured(target.weight.detach())
            except RuntimeError as exc:  # shape the kernels do not take (e.g. rows % 32 != 0)
                kernels[name] = f"dense ({str(exc).splitlines()[0]})"
                continue
            target.weight = nn.Parameter(sparse, requires_grad=False)
            kernels[name] = "2:4"
        return converted, kernels

    def benchmark(self, model, example, layers=None, pattern=None, dense=None) -> Measurement:
        # 2:4 only: no structured method reaches this target (its pattern check refuses them).
        x = self.batch(example)
        dense = self.prepare(model)
        converted, kernels = self.convert(model, layers or {}, x)
        check_outputs(self.name, "2:4 kernels", dense, converted, x, tolerance=1e-2)
        measured = self.latency(*self.time_models({"dense": dense, "model": converted}, x))
        measured.metrics["kernels/sparse_layers"] = sum(k == "2:4" for k in kernels.values())
        measured.kernels = kernels
        return measured

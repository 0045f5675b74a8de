"""N:M sparsity: one-shot (ASP) and SR-STE."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsebench.config import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.methods.magnitude import MagnitudePruning
from sparsebench.sparsity.patterns import NM


class NMOneShot(MagnitudePruning):
    """NVIDIA ASP's recipe (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021):
    train (or take) a dense model, keep the N largest |w| of every M along the input
    dimension once, and fine-tune with the mask fixed.
    """

    def __init__(
        self, name: str = "nm", n: int = 2, m: int = 4, prune_at: float = 0.5, **kwargs
    ) -> None:
        kwargs.pop("pattern", None)
        super().__init__(name=name, prune_at=prune_at, distribution="uniform",
                         pattern={"kind": "nm", "n": n, "m": m}, **kwargs)  # fmt: skip
        self.n, self.m = n, m


class _SRSTEMask(torch.autograd.Function):
    """Forward W*E; backward g + lambda * (1 - E) * W (the sparse-refined straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * (~mask) * weight, None, None


class NMForward(nn.Module):
    """A parametrization: the forward sees the N:M-masked weight, recomputed every call."""

    def __init__(self, pattern: NM, decay: float) -> None:
        super().__init__()
        self.pattern, self.decay = pattern, decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.pattern.mask(weight.detach().abs())
        return _SRSTEMask.apply(weight, mask, self.decay)


class SRSTE(SparsityMethod):
    """Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch",
    ICLR 2021: the N:M mask E of the dense weights is recomputed every forward, the forward uses
    W*E, and the gradient reaching the dense W is g + lambda_w * (1 - E) * W (lambda_w = 2e-4).
    At the end the weights are hard-pruned to their final N:M mask.
    """

    sparse_from_start = True

    def __init__(
        self, name: str = "sr_ste", n: int = 2, m: int = 4, decay: float = 2e-4, **kwargs
    ) -> None:
        kwargs.pop("pattern", None)
        super().__init__(
            name=name, distribution="uniform", pattern={"kind": "nm", "n": n, "m": m}, **kwargs
        )
        if decay < 0:
            raise ConfigError(f"method.decay must be >= 0, got {decay}.")
        self.n, self.m, self.decay = n, m, decay

    def init_masks(self) -> None:
        for _, module in self.masks:
            parametrize.register_parametrization(
                module, "weight", NMForward(self.pattern, self.decay)
            )

    # During training the dense weights live on: no hard masking until the end.
    def on_train_start(self, trainer, pl_module) -> None:
        self.optimizer = trainer.optimizers[0] if trainer.optimizers else None

    def on_after_backward(self, trainer, pl_module) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pass

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Forward and input gradient with W*E; the weight gradient is dense (it feeds the STE).
        return samples * (2 * sparse_flops + dense_flops)

    def finalize(self) -> None:
        for name, module in self.masks:
            if parametrize.is_parametrized(module, "weight"):
                dense = module.parametrizations.weight.original.detach()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                self.masks.set(name, self.pattern.mask(dense.abs()))

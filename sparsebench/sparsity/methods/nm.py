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

    patterns = (NM,)

    def __init__(self, name: str = "nm", pattern: str = "2:4", prune_at: float = 0.5,
                 distribution: str = "uniform", **kwargs) -> None:  # fmt: skip
        # N:M fixes every layer's density: the distribution has nothing to spread.
        super().__init__(name=name, pattern=pattern, prune_at=prune_at, distribution=distribution,
                         **kwargs)  # fmt: skip


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
    patterns = (NM,)

    def __init__(self, name: str = "sr_ste", pattern: str = "2:4", decay: float = 2e-4,
                 distribution: str = "uniform", **kwargs) -> None:  # fmt: skip
        super().__init__(name=name, pattern=pattern, distribution=distribution, **kwargs)
        if decay < 0:
            raise ConfigError(f"method.decay must be >= 0, got {decay}.")
        self.decay = decay

    def init_masks(self) -> None:
        for _, module in self.masks:
            parametrize.register_parametrization(
                module, "weight", NMForward(self.pattern, self.decay)
            )

    @property
    def hard_masks(self) -> bool:
        return self.finalized  # the dense weights train until the end (straight-through)

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Forward and input gradient with W*E; the weight gradient is dense (it feeds the STE).
        return samples * (2 * sparse_flops + dense_flops)

    def finalize(self) -> None:
        for name, module in self.masks:
            if parametrize.is_parametrized(module, "weight"):
                dense = module.parametrizations.weight.original.detach()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                self.masks.set(name, self.pattern.mask(dense.abs()))

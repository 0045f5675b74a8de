"""N:M sparsity: one-shot (ASP), SR-STE and BDWP."""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.methods.magnitude import MagnitudePruning
from sparsebench.sparsity.patterns import NM


class NMOneShot(MagnitudePruning):
    """NVIDIA ASP's recipe (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021):
    train (or take) a dense model, keep the N largest |w| of every M along the input
    dimension once, and fine-tune with the mask fixed.
    """

    patterns = (NM,)

    def __init__(
        self,
        name: str = "nm",
        pattern: str = "2:4",
        prune_at: float = 0.5,
        distribution: str = "uniform",
        **kwargs,
    ) -> None:
        # N:M fixes every layer's density: the distribution has nothing to spread.
        super().__init__(
            name=name, pattern=pattern, prune_at=prune_at, distribution=distribution, **kwargs
        )


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

    def __init__(
        self,
        name: str = "sr_ste",
        pattern: str = "2:4",
        decay: float = 2e-4,
        distribution: str = "uniform",
        **kwargs,
    ) -> None:
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


class _BDWPFunction(torch.autograd.Function):
    """y = x (W*E)^T + b (or the convolution); backward: dx with W*E_t, dW dense.

    ``E`` is N:M along W's input dimension (the forward matmul's reduction), ``E_t`` N:M along
    its output dimension: the input-gradient matmul dx = dy (W*E_t) reduces over outputs, so
    both matmuls of the layer run N:M on sparse tensor cores. The weight gradient dy^T x stays
    dense (it is activations times errors) and gets SR-STE's refinement term."""

    @staticmethod
    def forward(ctx, x, weight, bias, forward_mask, backward_mask, decay, conv):
        w_forward = weight * forward_mask
        ctx.save_for_backward(x, weight, w_forward, weight * backward_mask, forward_mask)
        ctx.decay, ctx.conv, ctx.has_bias = decay, conv, bias is not None
        if conv is None:
            return F.linear(x, w_forward, bias)
        return F.conv2d(x, w_forward, bias, *conv)

    @staticmethod
    def backward(ctx, grad):
        x, weight, _, w_backward, forward_mask = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (
                grad.matmul(w_backward)
                if ctx.conv is None
                else torch.nn.grad.conv2d_input(x.shape, w_backward, grad, *ctx.conv)
            )
        if ctx.needs_input_grad[1]:
            if ctx.conv is None:
                grad_w = grad.reshape(-1, grad.shape[-1]).t().matmul(x.reshape(-1, x.shape[-1]))
            else:
                grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad, *ctx.conv)
            grad_w = grad_w + ctx.decay * (~forward_mask) * weight
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(
                dim=[d for d in range(grad.dim()) if d != (1 if ctx.conv else grad.dim() - 1)]
            )
        return grad_x, grad_w, grad_b, None, None, None, None


def transposed_nm_mask(pattern: NM, weight: torch.Tensor) -> torch.Tensor:
    """N:M along the output dimension of ``weight`` (its input dimension once transposed: the
    reduction of the input-gradient matmul), for a Linear (out x in) or a conv (out x in x k x k)."""
    return pattern.mask(weight.detach().abs().transpose(0, 1)).transpose(0, 1)


class _BDWPForward:
    """The forward of a Linear or Conv2d trained with BDWP (set as the module's ``forward``)."""

    def __init__(self, pattern: NM, decay: float) -> None:
        self.pattern, self.decay = pattern, decay

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        forward_mask = self.pattern.mask(weight.detach().abs())
        backward_mask = transposed_nm_mask(self.pattern, weight)
        conv = None
        if isinstance(module, nn.Conv2d):
            conv = (module.stride, module.padding, module.dilation, module.groups)
        return _BDWPFunction.apply(
            x, weight, module.bias, forward_mask, backward_mask, self.decay, conv
        )


class BDWP(SRSTE):
    """Bidirectional weight pruning (Fang et al., "Efficient N:M Sparse DNN Training Using
    Algorithm, Architecture, and Dataflow Co-Design", IEEE TCAD 2023): every step, the forward
    pass uses W with an N:M mask along its input dimension and the input-gradient pass uses W
    with an independent N:M mask along its output dimension (W^T's input dimension), so both
    matmuls of each layer are N:M; the weight gradient is computed dense and updates the dense
    weights with SR-STE's sparse-refined term (``decay``, as in :class:`SRSTE`; the paper's
    weight-update stage is dense). At the end the weights are hard-pruned to the forward mask.
    Layers need their input and output dimensions divisible by M.
    """

    def __init__(self, name: str = "bdwp", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def attach(self, model: nn.Module, example: torch.Tensor | None = None):
        masks = super().attach(model, example)
        for name, module in masks.layers.items():
            if module.weight.shape[0] % self.pattern.m or (
                isinstance(module, nn.Conv2d) and module.groups != 1
            ):
                raise ConfigError(
                    f"BDWP prunes W^T {self.pattern.label} too: every pruned layer needs its output "
                    f"dimension divisible by {self.pattern.m} and groups=1; layer '{name}' has "
                    f"{module.weight.shape[0]} outputs (exclude it with method.exclude)."
                )
        return masks

    def init_masks(self) -> None:
        forward = _BDWPForward(self.pattern, self.decay)
        for _, module in self.masks:
            module.forward = types.MethodType(forward, module)  # the module keeps its state dict

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Forward (W*E) and input gradient (W*E_t, the same density) sparse; weight gradient dense.
        return samples * (2 * sparse_flops + dense_flops)

    def finalize(self) -> None:
        for name, module in self.masks:
            if "forward" in module.__dict__:
                del module.forward  # back to the class's forward
            self.masks.set(name, self.pattern.mask(module.weight.detach().abs()))

"""The operations of DASS's search space (Mousavi et al. 2022): DARTS's none, skip, pooling and
convolutions, and the sparse operations that learn which weights they keep (per-weight scores,
top-k with a straight-through gradient). The cells and networks are :mod:`sparsebench.models.dass`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.sparsity.patterns import topk_mask

# name -> (kind, kernel, sparsity); "sparse" kinds learn which weights they keep.
OPS: dict[str, tuple[str, int, float]] = {
    "none": ("none", 0, 0.0),
    "skip_connect": ("skip", 0, 0.0),
    "max_pool_3x3": ("max_pool", 3, 0.0),
    "avg_pool_3x3": ("avg_pool", 3, 0.0),
    "conv_3x3": ("conv", 3, 0.0),
    "sparse_conv_3x3_s50": ("conv", 3, 0.5),
    "sparse_conv_3x3_s90": ("conv", 3, 0.9),
    "sparse_conv_5x5_s90": ("conv", 5, 0.9),
}
HEADS: dict[str, float] = {"linear": 0.0, "sparse_linear_s50": 0.5, "sparse_linear_s90": 0.9}


class TopK(torch.autograd.Function):
    """Binary mask of the top ``density`` fraction of |scores|; gradients pass straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, density: float) -> torch.Tensor:
        k = max(1, round(density * scores.numel()))
        return topk_mask(scores.abs(), k).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ScoredMixin:
    """A weight layer that keeps ``1 - sparsity`` of its weights by learnable scores."""

    def init_scores(self, sparsity: float) -> None:
        self.sparsity = sparsity
        if sparsity > 0:
            self.scores = nn.Parameter(self.weight.detach().abs().clone())

    def masked_weight(self) -> torch.Tensor:
        if self.sparsity == 0:
            return self.weight
        return self.weight * TopK.apply(self.scores, 1.0 - self.sparsity)


class SparseConv2d(ScoredMixin, nn.Conv2d):
    def __init__(self, *args, sparsity: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_scores(sparsity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)


class SparseLinear(ScoredMixin, nn.Linear):
    def __init__(self, *args, sparsity: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init_scores(sparsity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class FactorizedReduce(nn.Module):
    """Halve the resolution keeping C channels (two offset 1x1 convs, DARTS)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels // 2, 1, stride=2, bias=False)
        self.b = nn.Conv2d(channels, channels - channels // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.bn(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], dim=1))


def make_op(name: str, channels: int, stride: int, sparse: bool) -> nn.Module:
    """One operation; ``sparse=False`` builds plain Conv2d layers (the derived network, whose
    sparse layers are masked by the DASS method instead)."""
    kind, kernel, sparsity = OPS[name]
    if kind == "none":
        return Zero(stride)
    if kind == "skip":
        return nn.Identity() if stride == 1 else FactorizedReduce(channels)
    if kind in ("max_pool", "avg_pool"):
        pool = nn.MaxPool2d if kind == "max_pool" else nn.AvgPool2d
        options = {} if kind == "max_pool" else {"count_include_pad": False}
        return pool(kernel, stride=stride, padding=kernel // 2, **options)
    conv = (
        SparseConv2d(channels, channels, kernel, stride, kernel // 2, bias=False, sparsity=sparsity)
        if sparse
        else nn.Conv2d(channels, channels, kernel, stride, kernel // 2, bias=False)
    )
    return nn.Sequential(nn.ReLU(), conv, nn.BatchNorm2d(channels))


def op_cost(name: str, channels: int) -> float:
    """Relative forward cost of an operation: its MACs per output pixel times its density."""
    kind, kernel, sparsity = OPS[name]
    if kind == "conv":
        return channels * channels * kernel * kernel * (1 - sparsity)
    if kind in ("max_pool", "avg_pool"):
        return channels * kernel * kernel
    return 0.0


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

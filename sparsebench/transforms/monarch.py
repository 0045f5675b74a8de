"""Monarch matrices (Dao et al., "Monarch: Expressive Structured Matrices for Efficient and
Accurate Training", ICML 2022): y = P2 R P1 L x with L and R block-diagonal (b blocks) and P1,
P2 reshape-transpose permutations. A square n x n layer keeps 2 n^2 / b parameters and FLOPs
(b = 4: 50%). For an in -> out layer the middle width is 2 in out / (in + out) (rounded to a
multiple of b), which keeps the same 2/b ratio up to that rounding (relative error at most
b / (2 * middle width): 0.3% for ViT-Ti's 192 <-> 768 MLP at b = 4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.metrics.flops import module_flops
from sparsebench.sparsity.prunable import prunable_layers, set_module
from sparsebench.transforms.base import ModelTransform


class MonarchLinear(nn.Module):
    """A drop-in replacement of ``nn.Linear(in_features, out_features)`` with b blocks."""

    def __init__(
        self, in_features: int, out_features: int, nblocks: int = 4, bias: bool = True
    ) -> None:
        super().__init__()
        if in_features % nblocks or out_features % nblocks:
            raise ConfigError(
                f"Monarch with {nblocks} blocks needs both widths divisible by {nblocks}, got {in_features}->{out_features}."
            )
        b = nblocks
        mid = max(b, round(2 * in_features * out_features / (in_features + out_features) / b) * b)
        self.in_features, self.out_features, self.nblocks, self.mid = (
            in_features,
            out_features,
            b,
            mid,
        )
        self.blocks1 = nn.Parameter(torch.empty(b, mid // b, in_features // b))  # L
        self.blocks2 = nn.Parameter(torch.empty(b, out_features // b, mid // b))  # R
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each block like an nn.Linear of its own fan-in (kaiming-uniform), so activations keep
        # the scale a dense layer of the same fan-in would give.
        for blocks in (self.blocks1, self.blocks2):
            bound = 1 / math.sqrt(blocks.shape[-1])
            nn.init.uniform_(blocks, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(
                self.bias, -1 / math.sqrt(self.in_features), 1 / math.sqrt(self.in_features)
            )

    @classmethod
    def from_linear(cls, layer: nn.Linear, nblocks: int) -> MonarchLinear:
        return cls(layer.in_features, layer.out_features, nblocks, layer.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.nblocks
        lead = x.shape[:-1]
        h = x.reshape(-1, b, self.in_features // b)
        h = torch.einsum("nbi,boi->nbo", h, self.blocks1)  # L
        h = h.transpose(1, 2).reshape(-1, b, self.mid // b)  # P1
        h = torch.einsum("nbi,boi->nbo", h, self.blocks2)  # R
        h = h.transpose(1, 2).reshape(*lead, self.out_features)  # P2
        return h if self.bias is None else h + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, nblocks={self.nblocks}, mid={self.mid}"


class Monarch(ModelTransform):
    """Replace the prunable Linear layers (stem and head dense by default; of a causal
    language model the MLP blocks' unless ``include`` says otherwise) by
    :class:`MonarchLinear` with ``nblocks`` blocks (Dao et al., ICML 2022); the result trains
    dense with no masks (``+method=monarch``): the saving is structural, so ``flops/sparse``
    is the Monarch network's FLOPs, ``flops/dense`` the original's, and ``sparsity/*`` count
    zeros and stay 0. The run's ``pattern`` tag is ``monarch``.
    """

    pattern_tag = "monarch"

    def __init__(
        self,
        name: str = "monarch",
        nblocks: int = 4,
        dense_stem: bool = True,
        dense_head: bool = True,
        include=(),
        exclude=(),
    ) -> None:
        super().__init__(name)
        if nblocks < 2:
            raise ConfigError(f"transform.nblocks must be >= 2, got {nblocks}.")
        self.nblocks = nblocks
        self.own_layers = {
            "dense_stem": dense_stem,
            "dense_head": dense_head,
            "include": tuple(include),
            "exclude": tuple(exclude),
        }

    def apply(
        self, model: nn.Module, model_cfg, example: torch.Tensor, datamodule=None
    ) -> nn.Module:
        total, _ = module_flops(model, example)
        self.reference_flops = total / example.shape[0]
        options = dict(self.own_layers)
        if not options["include"] and callable(getattr(model, "mlp_layers", None)):
            options["include"] = model.mlp_layers()  # a language model: its MLP blocks
        linears = {
            n: m for n, m in prunable_layers(model, **options).items() if isinstance(m, nn.Linear)
        }
        if not linears:
            raise ConfigError(
                "transform 'monarch' found no Linear layer to replace outside the stem and head."
            )
        for name, layer in linears.items():
            monarch = MonarchLinear.from_linear(layer, self.nblocks)
            set_module(model, name, monarch)
            self.description.append(
                f"{name}: Linear {layer.in_features}->{layer.out_features} -> Monarch "
                f"{self.nblocks} blocks (middle {monarch.mid})"
            )
        return model

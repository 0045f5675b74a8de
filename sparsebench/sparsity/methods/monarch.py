"""Monarch: Linear layers replaced by Monarch matrices, trained dense (structured, no masks)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from sparsebench.config import ConfigError
from sparsebench.metrics.flops import module_flops
from sparsebench.models.transforms.monarch import MonarchLinear
from sparsebench.models.transforms.sparse_ift import set_module
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.prunable import prunable_layers


class Monarch(SparsityMethod):
    """Replace the prunable Linear layers (stem and head dense by default) by
    :class:`MonarchLinear` with ``nblocks`` blocks (Dao et al., ICML 2022) and train the result
    with no masks: the saving is structural, so ``flops/sparse`` is the Monarch network's FLOPs
    and ``flops/dense`` the original's. ``sparsity/*`` count zeros and stay 0.
    """

    def __init__(self, name: str = "monarch", nblocks: int = 4, dense_stem: bool = True, dense_head: bool = True,
                 include=(), exclude=(), seed: int = 0) -> None:  # fmt: skip
        super().__init__(name=name, sparsity=0.0, dense_stem=dense_stem, dense_head=dense_head,
                         include=include, exclude=exclude, seed=seed)  # fmt: skip
        if nblocks < 2:
            raise ConfigError(f"method.nblocks must be >= 2, got {nblocks}.")
        self.nblocks = nblocks
        self.description = []

    def transform_model(self, model: nn.Module, model_cfg, example: torch.Tensor) -> nn.Module:
        total, _ = module_flops(model, example)
        self.reference_flops = total / example.shape[0]
        linears = {
            n: m
            for n, m in prunable_layers(model, **self.layer_options).items()
            if isinstance(m, nn.Linear)
        }
        if not linears:
            raise ConfigError(
                "method 'monarch' found no Linear layer to replace outside the stem and head."
            )
        for name, layer in linears.items():
            monarch = MonarchLinear.from_linear(layer, self.nblocks)
            set_module(model, name, monarch)
            self.description.append(f"{name}: Linear {layer.in_features}->{layer.out_features} -> Monarch "
                                    f"{self.nblocks} blocks (middle {monarch.mid})")  # fmt: skip
        return model

    @property
    def target_sparsity(self) -> float:
        return 0.0

    @property
    def pattern_tag(self) -> str:
        return "monarch"  # structured by construction: no masks, so no mask pattern

    # No masks: every sparsity hook is off.
    setup = Callback.setup
    on_train_start = Callback.on_train_start
    on_train_batch_start = Callback.on_train_batch_start
    on_after_backward = Callback.on_after_backward
    on_train_batch_end = Callback.on_train_batch_end
    on_train_end = Callback.on_train_end

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        return 3 * sparse_flops * samples

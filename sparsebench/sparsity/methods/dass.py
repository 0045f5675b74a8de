"""The masks of a network DASS derived: each sparse operation at its own sparsity."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.masks import MaskSet
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.patterns import topk_mask


class SearchedMasks(SparsityMethod):
    """The mask policy of ``+method=dass`` (Mousavi et al., "DASS: Differentiable Architecture
    Search for Sparse neural networks", 2022): the layers of the sparse operations in the
    derived network (sparsebench.transforms.dass), each masked once at its operation's sparsity,
    keeping the weights the search scored highest (``searched_scores``; without them, as when a
    genotype is given, the largest fresh weights: random). Masks stay fixed while the derived
    network retrains from scratch.
    """

    sparse_from_start = True

    def __init__(self, name: str = "dass", seed: int = 0) -> None:
        super().__init__(name=name, sparsity=0.0, dense_stem=False, dense_head=False, seed=seed)
        self.layer_sparsity: dict[str, float] = {}

    def attach(self, model: nn.Module, example: torch.Tensor | None = None) -> MaskSet:
        layer_sparsity = getattr(model, "layer_sparsity", None)
        if layer_sparsity is None:
            raise ConfigError("method 'dass' trains the network DASS derived (transform=dass).")
        self.layer_sparsity = layer_sparsity()
        if not self.layer_sparsity:  # no sparse operation chosen: train it dense
            self.layer_sparsity = {"classifier": 0.0}
        self.masks = MaskSet({name: model.get_submodule(name) for name in self.layer_sparsity})
        return self.masks

    @property
    def target_sparsity(self) -> float:
        if not self.masks:
            return 0.0
        total = sum(m.weight.numel() for _, m in self.masks)
        return sum(self.layer_sparsity[n] * m.weight.numel() for n, m in self.masks) / total

    def densities(self, scores=None, sparsity=None) -> dict[str, float]:
        return {name: 1.0 - s for name, s in self.layer_sparsity.items()}

    def init_masks(self) -> None:
        for name, module in self.masks:
            density = 1.0 - self.layer_sparsity[name]
            score = getattr(module, "searched_scores", None)
            if score is None or score.shape != module.weight.shape:
                score = module.weight.detach().abs()
            self.masks.set(name, topk_mask(score.abs(), max(1, round(density * score.numel()))))

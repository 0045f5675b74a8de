"""Static sparse training from a random mask (and the dense baseline as a method)."""

from __future__ import annotations

import torch

from sparsebench.sparsity.methods.base import SparsityMethod


class RandomPruning(SparsityMethod):
    """Random pruning at initialisation, mask fixed for all of training.

    Liu et al., "The Unreasonable Effectiveness of Random Pruning: Return of the Most Naive
    Baseline for Sparse Training", ICLR 2022: random masks with ER/ERK layer ratios can match
    dense training, more so as networks grow wider and deeper.
    """

    sparse_from_start = True

    def __init__(self, name: str = "random", distribution: str = "erk", **kwargs) -> None:
        super().__init__(name=name, distribution=distribution, **kwargs)

    def init_masks(self) -> None:
        gen = self.generator(0)
        scores = {name: torch.rand(m.weight.shape, generator=gen) for name, m in self.masks}
        self.prune_by(scores)


class FixedMasks(SparsityMethod):
    """Fine-tuning after pruning: the pruned masks, never changed (weights and gradients
    masked by the base class)."""

    sparse_from_start = True

    def __init__(self, pruned: SparsityMethod) -> None:
        super().__init__(name=pruned.name, pattern=pruned.pattern.label)
        self.masks = pruned.masks

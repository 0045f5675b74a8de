"""Magnitude pruning: one-shot after dense training, then fine-tuning with the mask fixed."""

from __future__ import annotations

from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.schedules import Schedule


class MagnitudePruning(SparsityMethod):
    """Train dense until ``prune_at`` of training, prune the smallest |w| once, fine-tune.

    Han et al., "Learning both Weights and Connections for Efficient Neural Networks",
    NeurIPS 2015; the global variant is ShrinkBench's baseline (Blalock et al., MLSys 2020).
    """

    def __init__(
        self, name: str = "magnitude", distribution: str = "global", prune_at: float = 0.5, **kwargs
    ) -> None:
        super().__init__(name=name, distribution=distribution, **kwargs)
        self.prune_at = prune_at
        self.schedule = Schedule(start=prune_at, start_option="prune_at")  # one update, at prune_at

    def update_due(self, step: int) -> bool:
        return step == self.schedule.start_step

    def update(self, step: int) -> None:
        self.prune_by(self.magnitudes())

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        return 3 * samples * (self.prune_at * dense_flops + (1 - self.prune_at) * sparse_flops)

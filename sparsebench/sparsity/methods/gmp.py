"""Gradual magnitude pruning on the cubic schedule."""

from __future__ import annotations

from sparsebench.sparsity.methods.base import SparsityMethod, check_fraction
from sparsebench.sparsity.schedules import Schedule, cubic_sparsity


class GradualMagnitudePruning(SparsityMethod):
    """Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression", 2017: every ``update_interval`` steps from ``start`` to ``end`` (fractions of
    training) the smallest |w| are pruned to s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3.
    """

    def __init__(
        self,
        name: str = "gmp",
        start: float = 0.1,
        end: float = 0.75,
        update_interval: int = 100,
        initial_sparsity: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        check_fraction("initial_sparsity", initial_sparsity)
        # The interval shrinks in runs too short for it (at least four updates).
        self.schedule = Schedule(start=start, end=end, interval=update_interval, shrink=True)
        self.start, self.end, self.update_interval = start, end, update_interval
        self.initial_sparsity = initial_sparsity

    def sparsity_at(self, step: int) -> float:
        return self.schedule.cubic(step, self.sparsity, self.initial_sparsity)

    def update_due(self, step: int) -> bool:
        return self.schedule.due(step) or step == max(1, self.schedule.end_step)

    def update(self, step: int) -> None:
        self.prune_by(self.magnitudes(), sparsity=self.sparsity_at(step))

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # FLOPs fall linearly with each layer's sparsity: average the cubic ramp over training.
        grid = 1000
        start, end = int(self.start * grid), int(self.end * grid)
        ramp = [
            cubic_sparsity(t, self.sparsity, start, end, 1, self.initial_sparsity)
            for t in range(grid)
        ]
        mean_fraction = sum(ramp) / grid / self.sparsity if self.sparsity else 0.0
        return 3 * samples * (dense_flops - (dense_flops - sparse_flops) * mean_fraction)

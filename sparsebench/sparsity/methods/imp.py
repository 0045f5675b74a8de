"""Iterative magnitude pruning with rewinding (lottery tickets)."""

from __future__ import annotations

import math
from typing import Any

import torch

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod, check_fraction
from sparsebench.sparsity.schedules import imp_density


class IterativeMagnitudePruning(SparsityMethod):
    """Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, with rewinding to step k
    (Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020).

    The training budget is split into L + 1 equal rounds of steps, L the levels needed to reach
    ``sparsity`` at ``rate`` (20%) of the remaining weights per level (density 0.8^level, the
    last level clipped to the target). Round 0 trains dense; before each later round the
    smallest weights are pruned (global magnitude by default) and the whole model is rewound to
    its state at step ``rewind_step`` (0: the original lottery ticket). Each round is a fit of
    its own with a fresh optimizer and learning-rate schedule (open_lth trains every level so):
    the ``rounds`` fit strategy of sparsebench.training.strategies drives them. This class is
    the mask policy: the densities per level, and the state a resumed run needs.
    """

    fit_strategy = "rounds"

    def __init__(
        self,
        name: str = "imp",
        sparsity: float = 0.8,
        rate: float = 0.2,
        rewind_step: int = 0,
        distribution: str = "global",
        **kwargs,
    ) -> None:
        super().__init__(name=name, sparsity=sparsity, distribution=distribution, **kwargs)
        check_fraction("rate", rate)
        if rate == 0:
            raise ConfigError("method.rate must be > 0.")
        if rewind_step < 0:
            raise ConfigError(f"method.rewind_step must be >= 0, got {rewind_step}.")
        self.rate, self.rewind_step = rate, rewind_step
        self.levels = (
            max(1, math.ceil(math.log(1 - sparsity) / math.log(1 - rate))) if sparsity > 0 else 0
        )
        self.snapshot: dict[str, torch.Tensor] | None = None  # the model at rewind_step
        self.level = 0

    def density_at(self, level: int) -> float:
        return max(1.0 - self.sparsity, imp_density(level, self.rate))

    def round_length(self, total_steps: int) -> int:
        """Steps per round when the whole budget is ``total_steps``."""
        length = max(1, total_steps // (self.levels + 1))
        if self.rewind_step >= length:
            raise ConfigError(
                f"method.rewind_step={self.rewind_step} is past the dense round ({length} steps)."
            )
        return length

    def next_level(self, level: int) -> None:
        """Prune to the density of ``level`` (masks only; the strategy rewinds the weights)."""
        self.prune_by(self.magnitudes(), sparsity=1.0 - self.density_at(level))
        self.level = level

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "snapshot": self.snapshot}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = int(state.get("level", 0))
        self.snapshot = state.get("snapshot")

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Round r trains at density d_r; FLOPs fall linearly with sparsity.
        fractions = [(1 - self.density_at(r)) / self.sparsity for r in range(self.levels + 1)]
        mean = sum(fractions) / len(fractions)
        return 3 * samples * (dense_flops - (dense_flops - sparse_flops) * mean)

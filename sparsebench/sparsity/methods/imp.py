"""Iterative magnitude pruning with rewinding (lottery tickets)."""

from __future__ import annotations

import copy
import math

import torch

from sparsebench.config import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod, _check_fraction
from sparsebench.sparsity.schedules import imp_density


class IterativeMagnitudePruning(SparsityMethod):
    """Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, with rewinding to step k
    (Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020).

    The training budget (``trainer.max_epochs``) is split into L + 1 equal rounds, L the levels
    needed to reach ``sparsity`` at ``rate`` (20%) of the remaining weights per level (density
    0.8^level, the last level clipped to the target). Round 0 trains dense; at the start of
    each later round the smallest weights are pruned (global magnitude by default), the whole
    model is rewound to its state at step ``rewind_step`` (0: the original lottery ticket),
    the optimizer state is cleared, and the learning-rate schedule restarts.
    """

    def __init__(self, name: str = "imp", sparsity: float = 0.8, rate: float = 0.2, rewind_step: int = 0,
                 distribution: str = "global", **kwargs) -> None:  # fmt: skip
        super().__init__(name=name, sparsity=sparsity, distribution=distribution, **kwargs)
        _check_fraction("rate", rate)
        if rate == 0:
            raise ConfigError("method.rate must be > 0.")
        if rewind_step < 0:
            raise ConfigError(f"method.rewind_step must be >= 0, got {rewind_step}.")
        self.rate, self.rewind_step = rate, rewind_step
        self.levels = (
            max(1, math.ceil(math.log(1 - sparsity) / math.log(1 - rate))) if sparsity > 0 else 0
        )
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.level = 0

    def density_at(self, level: int) -> float:
        return max(1.0 - self.sparsity, imp_density(level, self.rate))

    def round_length(self) -> int:
        return max(1, self.total_steps // (self.levels + 1))

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        pl_module.lr_cycles = self.levels + 1  # before configure_optimizers
        if self.rewind_step >= self.round_length():
            raise ConfigError(
                f"method.rewind_step={self.rewind_step} is past the dense round ({self.round_length()} steps)."
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.rewind_step and self.snapshot is None:
            self.snapshot = copy.deepcopy(pl_module.model.state_dict())
        level = min(self.levels, step // self.round_length())
        if level > self.level:
            self.next_level(level, pl_module, trainer.optimizers[0])

    def next_level(self, level: int, pl_module, optimizer: torch.optim.Optimizer) -> None:
        self.prune_by(self.magnitudes(), sparsity=1.0 - self.density_at(level))
        masks = {name: self.masks.mask(name).clone() for name, _ in self.masks}
        assert self.snapshot is not None, "IMP rewinds to a snapshot taken at rewind_step"
        rewind = {k: v for k, v in self.snapshot.items() if not k.endswith("weight_mask")}
        pl_module.model.load_state_dict(rewind, strict=False)
        for name, mask in masks.items():
            self.masks.set(name, mask)
        optimizer.state.clear()  # open_lth trains every level with a fresh optimizer
        self.level = level

    def state_dict(self) -> dict:
        return {"level": self.level, "snapshot": self.snapshot}

    def load_state_dict(self, state_dict: dict) -> None:
        self.level = int(state_dict.get("level", 0))
        self.snapshot = state_dict.get("snapshot")

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Round r trains at density d_r; FLOPs fall linearly with sparsity.
        fractions = [(1 - self.density_at(r)) / self.sparsity for r in range(self.levels + 1)]
        mean = sum(fractions) / len(fractions)
        return 3 * samples * (dense_flops - (dense_flops - sparse_flops) * mean)

"""Sparse Model Soups: prune, retrain several copies, average them, repeat."""

from __future__ import annotations

from collections.abc import Sequence

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod

VARY = ("seed", "weight_decay")
SOUPS = ("uniform", "greedy")


class SparseModelSoups(SparsityMethod):
    """Zimmer et al., "Sparse Model Soups: A Recipe for Improved Pruning via Model Averaging",
    ICLR 2024.

    Phase 0 trains dense. Each of ``phases`` later phases prunes once by global magnitude (per
    phase 1 - (1 - s)^(1/phases) of the remaining weights), retrains ``copies`` copies from the
    pruned model that differ in one hyperparameter (``vary``: the seed, i.e. batch order, or the
    weight decay from ``weight_decays``), averages them (``soup``: uniform, or greedy by
    validation accuracy), recalibrates BatchNorm, and starts the next phase from the soup. The
    copies share the mask, so the soup keeps the sparsity. Each phase and copy trains for
    ``trainer.max_epochs // (phases + 1)`` epochs: the run costs about ``copies`` times a
    single-model run, and ``flops/train`` says so.
    """

    fit_strategy = "soups"  # sparsebench.training.strategies: phases, copies, averaging
    resumable = (
        "method 'soups' trains several fits and averages them, and cannot continue a "
        "killed run mid-way; start it again."
    )

    def __init__(
        self,
        name: str = "soups",
        sparsity: float = 0.9,
        phases: int = 3,
        copies: int = 3,
        vary: str = "seed",
        weight_decays: Sequence[float] = (1e-4, 5e-4, 1e-3),
        soup: str = "uniform",
        recalibrate_batches: int = 100,
        distribution: str = "global",
        **kwargs,
    ) -> None:
        super().__init__(name=name, sparsity=sparsity, distribution=distribution, **kwargs)
        if phases < 1 or copies < 1:
            raise ConfigError(
                f"method.phases and method.copies must be >= 1, got {phases} and {copies}."
            )
        if vary not in VARY:
            raise ConfigError(f"method.vary must be one of {', '.join(VARY)}, got '{vary}'.")
        if soup not in SOUPS:
            raise ConfigError(f"method.soup must be one of {', '.join(SOUPS)}, got '{soup}'.")
        if vary == "weight_decay" and len(weight_decays) < copies:
            raise ConfigError(
                f"method.weight_decays needs {copies} values (one per copy), got {list(weight_decays)}."
            )
        if recalibrate_batches < 1:
            raise ConfigError(
                f"method.recalibrate_batches must be >= 1, got {recalibrate_batches}."
            )
        self.phases, self.copies, self.vary, self.soup = phases, copies, vary, soup
        self.weight_decays = list(weight_decays)
        self.recalibrate_batches = recalibrate_batches
        self.samples_per_phase_copy = 0

    def density_after(self, phase: int) -> float:
        return (1.0 - self.sparsity) ** (phase / self.phases)

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # samples counts every copy; the phases run at densities d_1..d_P after a dense phase 0.
        per_phase = samples / (1 + self.phases * self.copies)
        sparse_share = sum(
            (1 - self.density_after(p)) / self.sparsity for p in range(1, self.phases + 1)
        )
        total = 3 * per_phase * dense_flops  # phase 0
        total += (
            3
            * per_phase
            * self.copies
            * (self.phases * dense_flops - (dense_flops - sparse_flops) * sparse_share)
        )
        return total

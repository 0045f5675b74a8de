"""Sparse Model Soups: prune, retrain several copies, average them, repeat."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn

from sparsebench.config import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod

VARY = ("seed", "weight_decay")
SOUPS = ("uniform", "greedy")


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform average of floating-point entries; other entries (masks, counters) from the first."""
    out = {}
    for key, value in states[0].items():
        if torch.is_floating_point(value):
            out[key] = torch.stack([s[key] for s in states]).mean(dim=0)
        else:
            out[key] = value.clone()
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, batches: int) -> None:
    """Recompute BatchNorm running statistics of an averaged model on training batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


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

    resumable = (
        "method 'soups' trains several fits and averages them, and cannot continue a "
        "killed run mid-way; start it again."
    )

    def __init__(self, name: str = "soups", sparsity: float = 0.9, phases: int = 3, copies: int = 3,
                 vary: str = "seed", weight_decays: Sequence[float] = (1e-4, 5e-4, 1e-3), soup: str = "uniform",
                 recalibrate_batches: int = 100, distribution: str = "global", **kwargs) -> None:  # fmt: skip
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

    def fit(self, module: L.LightningModule, datamodule: L.LightningDataModule,
            make_trainer: Callable[..., L.Trainer], ckpt_path=None) -> L.Trainer:  # fmt: skip
        if ckpt_path is not None:
            raise ConfigError(self.resumable)
        probe = make_trainer()
        epochs = max(1, probe.max_epochs // (self.phases + 1))
        trainer = make_trainer(max_epochs=epochs)
        trainer.fit(module, datamodule=datamodule)  # phase 0: dense
        base_optimizer, base_seed = module.optimizer_factory, torch.initial_seed()
        for phase in range(1, self.phases + 1):
            self.prune_by(self.magnitudes(), sparsity=1.0 - self.density_after(phase))
            start = copy.deepcopy(module.state_dict())
            ingredients = []
            for i in range(self.copies):
                module.load_state_dict(start)
                if self.vary == "seed":
                    L.seed_everything(base_seed + 1000 * phase + i, workers=True, verbose=False)
                else:
                    module.optimizer_factory = functools.partial(
                        base_optimizer, weight_decay=self.weight_decays[i]
                    )
                trainer = make_trainer(max_epochs=epochs)
                trainer.fit(module, datamodule=datamodule)
                accuracy = float(trainer.callback_metrics.get("val/acc", math.nan))
                ingredients.append((accuracy, copy.deepcopy(module.state_dict())))
            module.optimizer_factory = base_optimizer
            module.load_state_dict(self.make_soup(ingredients, module, trainer, datamodule))
            recalibrate_batchnorm(
                module.model, datamodule.train_dataloader(), self.recalibrate_batches
            )
            self.masks.apply()
        return trainer

    def make_soup(
        self, ingredients, module, trainer: L.Trainer, datamodule
    ) -> dict[str, torch.Tensor]:
        if self.soup == "uniform" or len(ingredients) == 1:
            return average_states([state for _, state in ingredients])
        # Greedy (Wortsman et al. 2022): add copies by validation accuracy while it does not drop.
        ranked = sorted(
            ingredients, key=lambda item: -item[0] if not math.isnan(item[0]) else math.inf
        )
        chosen, best = [ranked[0][1]], ranked[0][0]
        for _accuracy, state in ranked[1:]:
            module.load_state_dict(average_states([*chosen, state]))
            recalibrate_batchnorm(
                module.model, datamodule.train_dataloader(), self.recalibrate_batches
            )
            (result,) = trainer.validate(module, datamodule=datamodule, verbose=False)
            if result.get("val/acc", -1) >= best:
                chosen.append(state)
                best = result["val/acc"]
        return average_states(chosen)

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

"""The sparsity-method interface: a Lightning Callback with a few narrow hooks.

A method owns a :class:`MaskSet` over the model's prunable layers and decides, through
:meth:`SparsityMethod.init_masks` and :meth:`SparsityMethod.update`, which weights are kept; the
base class applies the masks after every optimizer step and masks gradients before it. The
LightningModule knows nothing about sparsity.

Subclasses set ``schedule`` hooks by overriding:
- ``init_masks()``: at fit start (default: dense, all ones);
- ``update_due(step)`` / ``update(step)``: mask changes on chosen steps (before the forward);
- ``after_backward(step)``: gradient-time work (RigL's growth) before gradients are masked;
- ``finalize()``: at the end of training (hard-prune soft methods).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from sparsebench.config import ConfigError
from sparsebench.sparsity.distributions import DISTRIBUTIONS, layer_densities
from sparsebench.sparsity.masks import MaskSet
from sparsebench.sparsity.patterns import Pattern, make_pattern, pattern_label
from sparsebench.sparsity.prunable import prunable_layers

UNSTRUCTURED: Mapping[str, Any] = MappingProxyType(
    {"kind": "unstructured", "n": None, "m": None, "block": None}
)


def _check_fraction(
    name: str, value: float, low: float = 0.0, high: float = 1.0, high_open: bool = True
) -> None:
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"method.{name} must be in [{low}, {high}{bracket}, got {value}.")


class SparsityMethod(Callback):
    """Base class: which layers, what pattern, how the total sparsity is spread."""

    #: Methods whose masks exist from the first step train sparse from scratch (3*f_s per step).
    sparse_from_start: bool = False
    #: True, or the sentence saying why a killed run of this method cannot continue mid-way.
    resumable: bool | str = True

    def __init__(
        self,
        name: str,
        sparsity: float = 0.9,
        distribution: str = "uniform",
        erk_power: float = 1.0,
        pattern: Mapping[str, Any] = UNSTRUCTURED,
        dense_stem: bool = True,
        dense_head: bool = True,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_fraction("sparsity", sparsity)
        if distribution not in DISTRIBUTIONS:
            raise ConfigError(
                f"method.distribution must be one of {', '.join(DISTRIBUTIONS)}, got '{distribution}'."
            )
        if erk_power <= 0:
            raise ConfigError(f"method.erk_power must be > 0, got {erk_power}.")
        self.name = name
        self.sparsity = sparsity
        self.distribution = distribution
        self.erk_power = erk_power
        self.pattern: Pattern = make_pattern(**pattern)
        self.layer_options = {"dense_stem": dense_stem, "dense_head": dense_head,
                              "include": tuple(include), "exclude": tuple(exclude)}  # fmt: skip
        self.seed = seed
        self.masks: MaskSet | None = None
        self.total_steps = 1
        self.optimizer: torch.optim.Optimizer | None = None
        self._finalized = False

    # -- set-up -------------------------------------------------------------------------------
    @property
    def target_sparsity(self) -> float:
        """The sparsity this method reaches over its layers by the end of training."""
        fixed = self.pattern.fixed_density()
        return 1.0 - fixed if fixed is not None else self.sparsity

    def attach(self, model: nn.Module) -> MaskSet:
        """Select the prunable layers, check the pattern fits them, attach all-ones masks."""
        layers = prunable_layers(model, **self.layer_options)
        if not layers:
            raise ConfigError(
                "no prunable layers were selected; check method.include and method.exclude."
            )
        for name, module in layers.items():
            self.pattern.check(name, module.weight.shape)
        self.masks = MaskSet(layers)
        return self.masks

    def densities(
        self, scores: dict[str, torch.Tensor] | None = None, sparsity: float | None = None
    ) -> dict[str, float]:
        """Per-layer densities for ``sparsity`` (default: the target) under the distribution."""
        assert self.masks is not None
        fixed = self.pattern.fixed_density()
        if fixed is not None:
            return {name: fixed for name, _ in self.masks}
        shapes = {name: m.weight.shape for name, m in self.masks}
        target = self.sparsity if sparsity is None else sparsity
        if self.distribution == "global" and scores is not None:
            # One threshold over the pattern's units: score each unit, then spread.
            return layer_densities(shapes, target, "global", scores=scores)
        return layer_densities(shapes, target, self.distribution, self.erk_power)

    def prune_by(self, scores: dict[str, torch.Tensor], sparsity: float | None = None) -> None:
        """Set every mask to the top-scoring weights at the distribution's densities."""
        assert self.masks is not None
        densities = self.densities(scores, sparsity)
        for name, _ in self.masks:
            self.masks.set(name, self.pattern.mask(scores[name], densities[name]))

    def magnitudes(self) -> dict[str, torch.Tensor]:
        assert self.masks is not None
        return {name: m.weight.detach().abs() for name, m in self.masks}

    def generator(self, step: int) -> torch.Generator:
        """A generator seeded by (seed, step): identical on every DDP rank."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    # -- hooks for subclasses -----------------------------------------------------------------
    def init_masks(self) -> None:
        """Masks at the start of training; the default trains dense until the first update."""

    def update_due(self, step: int) -> bool:
        return False

    def update(self, step: int) -> None:
        """Change masks before the forward pass of ``step``."""

    def after_backward(self, step: int) -> None:
        """Gradient-time work on ``step`` before gradients are masked."""

    def finalize(self) -> None:
        """End of training (soft methods hard-prune here)."""

    def fit(self, module: L.LightningModule, datamodule: L.LightningDataModule,
            make_trainer: Callable[..., L.Trainer], ckpt_path: Any = None) -> L.Trainer:  # fmt: skip
        """Train with this method; the default is one Lightning fit (resumed from ``ckpt_path``:
        masks are model buffers, step-driven schedules follow the restored global step, and
        state of a method's own is in its ``state_dict``)."""
        trainer = make_trainer()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        return trainer

    def ensure_finalized(self) -> None:
        """Finalize if training ended without ``on_train_end`` (a resumed run whose checkpoint
        was written after the last epoch: Lightning skips the finished loop)."""
        if not self._finalized and self.masks is not None:
            self.finalize()
            self.masks.apply()
            self._finalized = True

    @property
    def pattern_tag(self) -> str:
        """The ``pattern`` tag of this method's runs (one derivation, from the built method)."""
        return pattern_label(self.pattern)

    def prepare(self, datamodule: L.LightningDataModule, cfg: Any) -> None:
        """Work before the model is built (DASS searches its architecture here)."""

    def extra_results(self) -> dict[str, Any]:
        """Method-specific entries for results.json (e.g. DASS's genotype)."""
        return {}

    def extra_metrics(self) -> dict[str, float]:
        """Method-specific metrics beside the contract (e.g. ``time/search_s``)."""
        return {}

    def transform_model(self, model: nn.Module, model_cfg: Any, example: torch.Tensor) -> nn.Module:
        """The model this method trains (Sparse-IFT transforms it; the default keeps it)."""
        return model

    #: Forward FLOPs per sample of the dense original when the model was transformed.
    reference_flops: float | None = None
    description: list[str] = []

    def deployed_model(self, model: nn.Module) -> nn.Module | None:
        """A physically smaller network (structured methods), else None."""
        return None

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        """Training FLOPs of the run (Sparse-IFT's accounting); dense-then-prune counts dense."""
        per_sample = 3 * sparse_flops if self.sparse_from_start else 3 * dense_flops
        return per_sample * samples

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.masks is not None:
            return
        self.total_steps = max(1, int(trainer.estimated_stepping_batches))
        self.attach(pl_module.model)
        self.init_masks()  # a resumed run's checkpoint then overwrites masks and weights

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        assert self.masks is not None
        self.masks.apply()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.update_due(step):
            self.update(step)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after_backward(trainer.global_step)
        assert self.masks is not None
        self.masks.mask_grads()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert self.masks is not None
        self.masks.apply()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.finalize()
        assert self.masks is not None
        self.masks.apply()
        self._finalized = True

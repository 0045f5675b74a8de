"""Fit strategies: how a run's training is driven through one or several Lightning fits.

A method names its strategy (``SparsityMethod.fit_strategy``); the strategy owns the fits, the
Trainers and what happens between fits (rewinding weights, averaging copies), so neither the
method nor the LightningModule holds training-loop logic:

- ``single``: one fit (every method but two);
- ``rounds``: IMP's levels, each a fit of its own with a fresh optimizer and schedule, the
  weights rewound between them (Frankle & Carbin 2019; Frankle et al. 2020);
- ``soups``: Sparse Model Soups' phases of copies averaged into one model (Zimmer et al. 2024).

Each takes ``make_trainer(**overrides)`` (a Trainer with the run's callbacks, the
:class:`SparsityCallback` first) and ``ckpt_path`` to resume from, and returns the Trainer to
test with.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.methods.imp import IterativeMagnitudePruning
from sparsebench.sparsity.methods.soups import SparseModelSoups
from sparsebench.training.callback import SparsityCallback
from sparsebench.training.checkpoints import load_checkpoint

MakeTrainer = Callable[..., L.Trainer]


def single(
    method: SparsityMethod | None,
    module: L.LightningModule,
    datamodule: Any,
    make_trainer: MakeTrainer,
    ckpt_path: Path | None = None,
) -> L.Trainer:
    """One Lightning fit, resumed from ``ckpt_path`` if given (masks are model buffers,
    schedules follow the restored global step, a method's own state is in the callback's)."""
    trainer = make_trainer()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer


class _Snapshot(Callback):
    """Keeps the model's state at ``step`` of the first round (IMP rewinds to it)."""

    def __init__(self, method: IterativeMagnitudePruning) -> None:
        self.method = method

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.method.rewind_step and self.method.snapshot is None:
            self.method.snapshot = copy.deepcopy(pl_module.model.state_dict())


def _saved_method_state(ckpt_path: Path) -> dict[str, Any]:
    callbacks = load_checkpoint(ckpt_path).get("callbacks", {})
    return callbacks.get(SparsityCallback.__qualname__, {}).get("method", {})


def planned_steps(trainer: L.Trainer, datamodule: Any) -> int:
    """Optimizer steps of the whole budget (``max_epochs`` of ``limit_train_batches``), known
    before any fit starts (Lightning's own estimate needs a running fit)."""
    datamodule.setup("fit")
    batches = len(datamodule.train_dataloader())
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches) * trainer.max_epochs)


def prune_and_rewind(method: IterativeMagnitudePruning, model: nn.Module, level: int) -> None:
    """Prune to ``level``'s density by the trained magnitudes, then rewind every weight (and
    buffer) of ``model`` to the snapshot, keeping the new masks (so pruned weights stay zero)."""
    method.next_level(level)
    masks = {name: method.masks.mask(name).clone() for name, _ in method.masks}
    assert method.snapshot is not None, "IMP rewinds to a snapshot taken at rewind_step"
    rewind = {k: v for k, v in method.snapshot.items() if not k.endswith("weight_mask")}
    model.load_state_dict(rewind, strict=False)
    for name, mask in masks.items():
        method.masks.set(name, mask)


def rounds(
    method: IterativeMagnitudePruning,
    module: L.LightningModule,
    datamodule: Any,
    make_trainer: MakeTrainer,
    ckpt_path: Path | None = None,
) -> L.Trainer:
    """IMP: L + 1 rounds of equal steps; before round r the smallest weights are pruned to
    density d_r and the model rewound to its state at ``rewind_step``. A resumed run continues
    the round its checkpoint was written in."""
    length = method.round_length(planned_steps(make_trainer(), datamodule))
    first = int(_saved_method_state(ckpt_path).get("level", 0)) if ckpt_path else 0
    trainer = None
    for level in range(first, method.levels + 1):
        if level > first or (level > 0 and ckpt_path is None):
            prune_and_rewind(method, module.model, level)
        extra = [_Snapshot(method)] if level == 0 else []
        trainer = make_trainer(max_steps=length, extra_callbacks=extra)
        resume = ckpt_path if level == first else None
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    assert trainer is not None
    if "val/acc" not in trainer.callback_metrics:  # the last round ended mid-epoch
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return trainer


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


def soups(
    method: SparseModelSoups,
    module: L.LightningModule,
    datamodule: Any,
    make_trainer: MakeTrainer,
    ckpt_path: Path | None = None,
) -> L.Trainer:
    """Phase 0 dense; each later phase prunes, trains ``copies`` copies that differ in the seed
    or the weight decay, averages them (uniform or greedy) and recalibrates BatchNorm."""
    if ckpt_path is not None:
        raise ConfigError(str(method.resumable))
    epochs = max(1, make_trainer().max_epochs // (method.phases + 1))
    trainer = make_trainer(max_epochs=epochs)
    trainer.fit(module, datamodule=datamodule)  # phase 0: dense
    base_optimizer, base_seed = module.optimizer_factory, torch.initial_seed()
    for phase in range(1, method.phases + 1):
        method.prune_by(method.magnitudes(), sparsity=1.0 - method.density_after(phase))
        start = copy.deepcopy(module.state_dict())
        ingredients = []
        for i in range(method.copies):
            module.load_state_dict(start)
            if method.vary == "seed":
                L.seed_everything(base_seed + 1000 * phase + i, workers=True, verbose=False)
            else:
                module.optimizer_factory = functools.partial(
                    base_optimizer, weight_decay=method.weight_decays[i]
                )
            trainer = make_trainer(max_epochs=epochs)
            trainer.fit(module, datamodule=datamodule)
            accuracy = float(trainer.callback_metrics.get("val/acc", math.nan))
            ingredients.append((accuracy, copy.deepcopy(module.state_dict())))
        module.optimizer_factory = base_optimizer
        module.load_state_dict(_soup(method, ingredients, module, trainer, datamodule))
        recalibrate_batchnorm(
            module.model, datamodule.train_dataloader(), method.recalibrate_batches
        )
        method.apply()
    return trainer


def _soup(
    method: SparseModelSoups, ingredients, module, trainer: L.Trainer, datamodule
) -> dict[str, torch.Tensor]:
    if method.soup == "uniform" or len(ingredients) == 1:
        return average_states([state for _, state in ingredients])
    # Greedy (Wortsman et al. 2022): add copies by validation accuracy while it does not drop.
    ranked = sorted(ingredients, key=lambda item: -item[0] if not math.isnan(item[0]) else math.inf)
    chosen, best = [ranked[0][1]], ranked[0][0]
    for _accuracy, state in ranked[1:]:
        module.load_state_dict(average_states([*chosen, state]))
        recalibrate_batchnorm(
            module.model, datamodule.train_dataloader(), method.recalibrate_batches
        )
        (result,) = trainer.validate(module, datamodule=datamodule, verbose=False)
        if result.get("val/acc", -1) >= best:
            chosen.append(state)
            best = result["val/acc"]
    return average_states(chosen)


STRATEGIES: dict[str, Callable[..., L.Trainer]] = {
    "single": single,
    "rounds": rounds,
    "soups": soups,
}

"""The one sparsity class that touches Lightning: it calls a method's hooks at the right steps."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from sparsebench.sparsity.methods.base import SparsityMethod


class SparsityCallback(Callback):
    """Drives a :class:`SparsityMethod` (a mask policy) through a fit.

    - ``setup``: the schedule learns the run's length; masks are attached and initialised
      (once: a later fit of the same run, IMP's rounds or soups' phases, keeps them; a resumed
      run's checkpoint then overwrites masks, which are model buffers, and weights);
    - each step: ``update`` before the forward when due; after backward the method's
      gradient-time work, then masked gradients are zeroed; after the optimizer step
      ``after_step``, then masked weights are zeroed (while the method's masks are hard);
    - end of training: ``finalize`` once, masks applied;
    - checkpoints carry the method's own state (``SparsityMethod.state_dict``).
    """

    def __init__(self, method: SparsityMethod) -> None:
        self.method = method

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        method = self.method
        if method.masks is None:
            method.bind(int(trainer.estimated_stepping_batches))
            datamodule = trainer.datamodule
            example = datamodule.example_input(1) if hasattr(datamodule, "example_input") else None
            method.attach(pl_module.model, example)
            method.init_masks()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.method.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        if self.method.hard_masks:
            self.method.apply()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.method.update_due(step):
            self.method.update(step)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss) -> None:
        self.method.observe_loss(trainer.global_step, loss.detach())

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.method.after_backward(trainer.global_step)
        if self.method.hard_masks:
            self.method.mask_grads()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.method.after_step(trainer.global_step)  # already past the step just taken
        if self.method.hard_masks:
            self.method.apply()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self.method.fit_strategy == "single":
            self.method.ensure_finalized()

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.method.load_state_dict(state_dict.get("method", {}))

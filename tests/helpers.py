"""Callbacks the tests inject through ``trainer.callbacks`` (also into DDP child processes)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from sparsebench.sparsity.masks import MASK


def _masks(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {
        name: getattr(m, MASK).clone()
        for name, m in pl_module.model.named_modules()
        if hasattr(m, MASK)
    }


class DumpMasks(L.Callback):
    """Saves each rank's final masks and how many mask entries changed during training."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = _masks(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        final = _masks(pl_module)
        changed = sum(int((final[n] != self.initial[n]).sum()) for n in final)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"masks": final, "updates": changed}, self.dirpath / f"rank{trainer.global_rank}.pt"
        )

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


class Pause(L.Callback):
    """Holds a run at one point so that a test can disturb the real process there.

    At ``hook`` (``train_batch_end`` of batch ``batch`` in ``epoch``, ``train_epoch_start`` of
    ``epoch``, or ``test_end``) it writes its pid to ``marker``, then waits until the file
    ``go`` exists (at most ``wait_s`` seconds) or the test kills it. ``fsize``: instead of
    waiting, limit the size of every file the process writes from then on (RLIMIT_FSIZE, as a
    full disk would; SIGXFSZ ignored so that writes fail with EFBIG instead of killing it).
    """

    def __init__(self, marker: str, hook: str = "train_batch_end", epoch: int = 1, batch: int = 1,
                 go: str | None = None, wait_s: float = 120.0, fsize: int | None = None) -> None:  # fmt: skip
        self.marker, self.hook, self.epoch, self.batch = Path(marker), hook, epoch, batch
        self.go, self.wait_s, self.fsize = go and Path(go), wait_s, fsize
        self.done = False

    def _here(self, hook: str, trainer, batch_idx: int | None = None) -> None:
        if self.done or hook != self.hook:
            return
        if hook != "test_end" and trainer.current_epoch != self.epoch:
            return
        if batch_idx is not None and batch_idx != self.batch:
            return
        self.done = True
        import os
        import time

        if self.fsize is not None:
            import resource
            import signal

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))
        self.marker.write_text(str(os.getpid()))
        if self.fsize is not None:
            return
        deadline = time.time() + self.wait_s
        while time.time() < deadline and not (self.go and self.go.exists()):
            time.sleep(0.05)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._here("train_batch_end", trainer, batch_idx)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._here("train_epoch_start", trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        self._here("test_end", trainer)

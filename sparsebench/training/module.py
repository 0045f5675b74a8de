"""The LightningModule: a classifier with its optimizer and schedule. It knows nothing of sparsity."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of ``model``; logs ``{train,val,test}/{loss,acc}`` per epoch.

    ``optimizer`` is a partial ``torch.optim`` class (from the config's ``_partial_`` node),
    given the parameters here, so adding an optimizer needs only a yaml.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: str = "cosine",
        warmup_epochs: int = 0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler = scheduler
        self.warmup_epochs, self.warmup_steps = warmup_epochs, warmup_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        train = stage == "train"
        # Epoch-level only: under DDP the averages are synced across ranks once per epoch.
        opts = {"on_step": False, "on_epoch": True, "batch_size": len(y), "sync_dist": True}
        self.log(f"{stage}/loss", loss, prog_bar=train, **opts)
        self.log(f"{stage}/acc", acc, prog_bar=True, **opts)
        return loss

    def samples_in(self, batch) -> int:
        """The training samples a batch holds (``train/samples`` counts them)."""
        return len(batch[0])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = self.warmup_steps or int(
            total * self.warmup_epochs / max(1, self.trainer.max_epochs)
        )

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            if self.scheduler == "step":  # x0.1 at 50% and 75% of training
                return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class LanguageModelingModule(ClassificationModule):
    """Next-token training of a causal LM; logs ``{train,val,test}/loss`` (mean token NLL) and
    ``{val,test}/ppl``, the exponential of the split's mean token NLL as the pruning papers
    compute it (every window of ``seqlen`` tokens predicts its tokens 2..seqlen)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sums: dict[str, torch.Tensor] = {}

    def _step(self, batch, stage: str) -> torch.Tensor:
        (ids,) = batch
        logits = self.model(ids)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(),
            ids[:, 1:].reshape(-1),
            reduction="sum",
        )
        tokens = ids[:, 1:].numel()
        loss = nll / tokens
        if stage == "train":
            opts = {"on_step": False, "on_epoch": True, "batch_size": tokens, "sync_dist": True}
            self.log("train/loss", loss, prog_bar=True, **opts)
        else:  # summed here, reduced over ranks once at the epoch's end
            total = torch.stack(
                [
                    nll.detach().double(),
                    torch.tensor(float(tokens), dtype=torch.float64, device=nll.device),
                ]
            )
            self._sums[stage] = self._sums.get(stage, torch.zeros_like(total)) + total
        return loss

    def samples_in(self, batch) -> int:
        """A language model's samples are tokens (FLOPs are counted per token)."""
        return batch[0].numel()

    def _log_split(self, stage: str) -> None:
        total = self._sums.pop(stage, None)
        if total is None:
            return
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        mean = float(total[0] / total[1])
        self.log(f"{stage}/loss", mean, sync_dist=False)
        self.log(f"{stage}/ppl", math.exp(min(mean, 700.0)), prog_bar=True, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_split("val")

    def on_test_epoch_end(self) -> None:
        self._log_split("test")

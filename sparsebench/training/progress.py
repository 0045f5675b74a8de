"""The run's progress through Lightning, into its record."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import psutil
from lightning.pytorch.callbacks import Callback

from sparsebench.errors import RunDiverged
from sparsebench.record.recorder import RunRecorder
from sparsebench.training.checkpoints import rng_states, set_rng_states


class RunProgress(Callback):
    """The run's progress through Lightning, into its record (:class:`RunRecorder`).

    - Each epoch's row at ``on_train_epoch_end``, after validation and after Lightning has
      reduced the epoch's train metrics, so a row holds its own epoch's train and val metrics
      (every epoch, the last included); rows are numbered across fits (soups, IMP rounds).
    - Training samples seen and seconds spent training, over every fit.
    - The divergence guard: a non-finite training loss, or one above ``max_loss``, ends the run
      as ``diverged`` at that step (agreed across DDP ranks).
    - Signals: SIGTERM/SIGINT received during training end the run after the current batch.
    - Checkpoints carry its state (counters, history, RNG states), so a resumed run keeps
      counting and draws the same batches as an uninterrupted run of the same seed.
    """

    def __init__(
        self, record: RunRecorder, started: float | None = None, max_loss: float | None = None
    ) -> None:
        self.record = record
        self.samples_seen = 0
        self.train_seconds = 0.0
        self.max_loss = max_loss
        self._since: float | None = None
        self._step_start = 0.0
        self.step_seconds: list[float] = []  # this process's training steps, batch to batch end
        self._validated = False  # this epoch validated, its row not yet written
        # Start-up cost as a user feels it: process start to the first training step; a run
        # started inside a longer-lived process (a search trial) counts from ``started``.
        self.started = started if started is not None else psutil.Process().create_time()

    def _clock(self) -> float:
        return self.train_seconds + (time.perf_counter() - self._since if self._since else 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self.record.in_training = True
        self._since = time.perf_counter()

    def _stop_clock(self) -> None:
        self.record.in_training = False
        self.train_seconds, self._since = self._clock(), None

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_clock()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop_clock()
        if self._validated:  # stopped after this epoch's validation (a pruned trial): keep it
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
            self.record.add_epoch({"epoch": len(self.record.results.history), **metrics})
            self._validated = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._validated = False

    def on_validation_end(self, trainer, pl_module) -> None:
        self._validated = trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "time/startup_s" not in self.record.results.metrics:
            self.record.results.update({"time/startup_s": time.time() - self.started})
        self._step_start = time.perf_counter()

    @property
    def step_ms(self) -> dict[str, float]:
        """``time/step_ms``: the median training step of this process (none before a step)."""
        if not self.step_seconds:
            return {}
        return {"time/step_ms": float(statistics.median(self.step_seconds)) * 1e3}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_seconds.append(time.perf_counter() - self._step_start)
        self.samples_seen += pl_module.samples_in(batch) * trainer.world_size
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            value = float(loss.detach())
            bad = not math.isfinite(value) or (self.max_loss is not None and value > self.max_loss)
            if trainer.strategy.reduce_boolean_decision(bad, all=False):
                limit = "" if self.max_loss is None else f" and at most {self.max_loss:g}"
                raise RunDiverged(
                    f"the training loss is {value:.4g} at step {trainer.global_step}, epoch "
                    f"{trainer.current_epoch} (trainer.max_loss: finite{limit}); lower "
                    "trainer.optimizer.lr or clip gradients"
                )
        self.record.check_signal()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._validated = False
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/"))
        }
        self.record.add_epoch({"epoch": len(self.record.results.history), **metrics})

    def state_dict(self) -> dict[str, Any]:
        return {
            "samples_seen": self.samples_seen,
            "train_seconds": self._clock(),
            "history": list(self.record.results.history),
            "rng": rng_states(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples_seen = int(state_dict["samples_seen"])
        self.train_seconds = float(state_dict["train_seconds"])
        self.record.results.set_history(state_dict["history"])  # epochs after it run again
        set_rng_states(state_dict["rng"])

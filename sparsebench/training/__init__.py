"""The training layer: objects from config, the fit (sparsebench.training.strategies, with the one
sparsity callback of sparsebench.training.callback), and the final measurements."""

from __future__ import annotations

import math
import pickle
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import psutil
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsebench.config import ConfigError, first_line
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.hardware.base import HardwareTarget
from sparsebench.metrics.flops import flops_per_sample
from sparsebench.metrics.params import actual_sparsity, count_params
from sparsebench.metrics.size import model_bytes
from sparsebench.models import build_model
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.prunable import prunable_layers
from sparsebench.tracking.recorder import RunRecorder
from sparsebench.tracking.results import Results, RunDiverged, write_atomic
from sparsebench.training.callback import SparsityCallback
from sparsebench.training.module import ClassificationModule
from sparsebench.training.strategies import STRATEGIES
from sparsebench.transforms.base import ModelTransform


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

    def __init__(self, record: RunRecorder, started: float | None = None,
                 max_loss: float | None = None) -> None:  # fmt: skip
        self.record = record
        self.samples_seen = 0
        self.train_seconds = 0.0
        self.max_loss = max_loss
        self._since: float | None = None
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
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if k.startswith("val/")}  # fmt: skip
            self.record.add_epoch({"epoch": len(self.record.results.data["history"]), **metrics})
            self._validated = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._validated = False

    def on_validation_end(self, trainer, pl_module) -> None:
        self._validated = trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "time/startup_s" not in self.record.results.metrics:
            self.record.results.update({"time/startup_s": time.time() - self.started})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.samples_seen += len(batch[1]) * trainer.world_size
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
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("train/", "val/"))}  # fmt: skip
        self.record.add_epoch({"epoch": len(self.record.results.data["history"]), **metrics})

    def state_dict(self) -> dict[str, Any]:
        return {"samples_seen": self.samples_seen, "train_seconds": self._clock(),
                "history": list(self.record.results.data["history"]), "rng": rng_states()}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples_seen = int(state_dict["samples_seen"])
        self.train_seconds = float(state_dict["train_seconds"])
        self.record.results.set_history(state_dict["history"])  # epochs after it run again
        set_rng_states(state_dict["rng"])


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python RNG states, in types ``torch.load`` accepts with
    ``weights_only=True`` (resume never unpickles code)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, _ = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [int(version), list(state)],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state = states["python"]
    random.setstate((version, tuple(state), None))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, then renamed over the old
    one: a full disk or a kill mid-write leaves the last good checkpoint in place (Lightning's
    own writer truncates the target first). Loading is unchanged."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomic(path, lambda f: torch.save(checkpoint, f))
        except Exception as exc:  # torch's zip writer reports a full disk as a RuntimeError
            raise OSError(f"could not write checkpoint {path} ({type(exc).__name__}: "
                          f"{str(exc).strip()[:200]}); the previous one is kept") from exc  # fmt: skip


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickled with ``torch.load(weights_only=True)``: tensors,
    containers and plain values only. Run folders and checkpoints are shared between people, so
    one that would need arbitrary code to load (a crafted or foreign pickle) is refused, as is a
    truncated or non-PyTorch file, in one sentence."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ConfigError(
            f"checkpoint {path} holds an object{what} that only running its code could rebuild; "
            "sparsebench loads checkpoints with weights_only=True and refuses it."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({first_line(exc, 200)}); it is truncated or not a PyTorch "
            "checkpoint."
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict.")
    return state


def final_val(trainer: L.Trainer, results: Results) -> dict[str, float]:
    """The last validation's ``val/*``: from the trainer, or (a resumed run whose training had
    already ended) from the last epoch row of the record."""
    found = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not found and results.data["history"]:
        found = {k: v for k, v in results.data["history"][-1].items() if k.startswith("val/")}
    return found


def check_finite(metrics: dict[str, float]) -> None:
    """A non-finite test loss or accuracy means the trained model diverged."""
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        raise RunDiverged(
            f"the trained model gives {', '.join(f'{k}={v}' for k, v in bad.items())}"
        )


def build_datamodule(cfg: DictConfig, check: bool = False) -> SparseBenchDataModule:
    """The dataset's LightningDataModule; ``check``: read its files now, so that missing or
    unreadable data is one sentence before anything is trained or recorded."""
    datamodule = instantiate(cfg.dataset, _convert_="all")
    if check:
        try:
            datamodule.setup("fit")
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(first_line(exc)) from None
    return datamodule


def build_hardware(cfg: DictConfig) -> HardwareTarget:
    try:
        return instantiate(cfg.hardware, _convert_="all")
    except InstantiationException as exc:  # the target's own one-sentence check
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


def build_module(cfg: DictConfig, model: nn.Module) -> ClassificationModule:
    return ClassificationModule(
        model,
        optimizer=instantiate(_without_none(cfg.trainer.optimizer)),
        scheduler=cfg.trainer.scheduler,
        warmup_epochs=cfg.trainer.warmup_epochs,
    )


def _without_none(node: DictConfig) -> dict:
    # The optimizer schema is the union of several optimizers' options; unset ones are None.
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}


def _build(node: DictConfig | None, group: str) -> Any:
    """Instantiate a ``method`` or ``transform`` node (keys and types were checked against its
    schema when Hydra composed it; ranges are the constructor's); None when absent or
    ``_target_: null``."""
    if node is None or node.get("_target_") is None:
        return None
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


def build_method(cfg: DictConfig) -> SparsityMethod | None:
    """The configured sparsity method, or None for dense training (no method, or ``dense``)."""
    return _build(cfg.get("method"), "method")


def build_transform(cfg: DictConfig, method: SparsityMethod | None) -> ModelTransform | None:
    """The configured model transformation, if any, checked against the method it is composed
    with (an iso-FLOP transformation fixes the sparsity the method trains at)."""
    transform = _build(cfg.get("transform"), "transform")
    if transform is None or method is None:
        return transform
    if transform.sparsity is not None and abs(method.target_sparsity - transform.sparsity) > 1e-9:
        raise ConfigError(
            f"transform '{transform.name}' is iso-FLOP at transform.sparsity={transform.sparsity}, "
            f"but method '{method.name}' trains at sparsity {method.target_sparsity:g}; set "
            "method.sparsity to the same value."
        )
    transform.layer_options = dict(method.layer_options)
    return transform


def build_run_model(cfg: DictConfig, datamodule: SparseBenchDataModule,
                    method: SparsityMethod | None, transform: ModelTransform | None) -> nn.Module:  # fmt: skip
    """The model the run trains: the configured one, transformed; the method's layer
    selection leaves out what the transformation keeps dense."""
    model = build_model(cfg.model)
    if transform is None:
        return model
    model = transform.apply(model, cfg.model, datamodule.example_input(1), datamodule)
    if method is not None:
        method.narrow(transform.include, transform.exclude)
    return model


def pattern_tag(method: SparsityMethod | None, transform: ModelTransform | None) -> str:
    """The run's ``pattern`` tag: the transformation's structure (``monarch``), the method's
    pattern label, or ``dense``."""
    if transform is not None and transform.pattern_tag is not None:
        return transform.pattern_tag
    return method.pattern_tag if method is not None else "dense"


TRAINER_KEYS = (
    "max_epochs", "accelerator", "devices", "strategy", "num_nodes", "precision", "gradient_clip_val",
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "deterministic",
    "enable_progress_bar", "log_every_n_steps", "enable_checkpointing",
)  # fmt: skip


def build_trainer(cfg: DictConfig, output_dir: Path, callbacks: list[Callback],
                  extra_callbacks: list[Callback] | None = None, **overrides: Any) -> L.Trainer:  # fmt: skip
    """A Lightning Trainer from ``cfg.trainer`` (``overrides`` win, e.g. ``max_epochs``);
    ``checkpoints/last.ckpt`` is written atomically at the end of every training epoch, after
    :class:`RunProgress` recorded the epoch (so a resumed run's history is complete). MLflow
    is written by the run's record, not by a Lightning logger."""
    options = {k: cfg.trainer[k] for k in TRAINER_KEYS if cfg.trainer.get(k) is not None}
    options.update(overrides)
    callbacks = [
        *callbacks,
        *(extra_callbacks or []),
        *(instantiate(node, _convert_="all") for node in cfg.trainer.get("callbacks") or []),
    ]
    if options.get("enable_checkpointing", True):
        callbacks = [
            *callbacks,
            # One file, checkpoints/last.ckpt, replaced after every epoch (top-1 of "latest").
            ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="last", save_top_k=1,
                            enable_version_counter=False, save_on_train_epoch_end=True),
        ]  # fmt: skip
    return L.Trainer(
        default_root_dir=str(output_dir),
        logger=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **options,
    )


def fit(
    module: ClassificationModule,
    datamodule: SparseBenchDataModule,
    method: SparsityMethod | None,
    make_trainer: Callable[..., L.Trainer],
    ckpt_path: Path | None = None,
) -> L.Trainer:
    """Train with the method's fit strategy (one fit unless IMP's rounds or soups' phases).

    ``make_trainer(**overrides)`` builds a Trainer with the run's callbacks (the method's
    :class:`SparsityCallback` among them); ``ckpt_path`` resumes from a checkpoint (loaded with
    ``weights_only=True``). Returns the trainer to test with.
    """
    strategy = STRATEGIES[method.fit_strategy if method is not None else "single"]
    trainer = strategy(method, module, datamodule, make_trainer, ckpt_path)
    if method is not None:
        method.ensure_finalized()  # a resumed fit that had already ended skips on_train_end
    return trainer


def sparsity_callbacks(method: SparsityMethod | None) -> list[Callback]:
    """The Lightning side of a method: its one callback (none for dense training)."""
    return [] if method is None else [SparsityCallback(method)]


def model_metrics(
    cfg: DictConfig,
    model: nn.Module,
    example: torch.Tensor,
    samples_seen: int,
    method: SparsityMethod | None = None,
    hardware: HardwareTarget | None = None,
    transform: ModelTransform | None = None,
) -> dict[str, float]:
    """Parameters, sparsity, FLOPs and weight storage of the trained model.

    Sparsity and sparse FLOPs are over the method's layers (default selection when dense);
    ``flops/train`` follows ../METHODS.md: 3 forward FLOPs per training sample for dense
    training, the method's own accounting otherwise. Storage is in the hardware target's format.
    """
    layers = pruned_layers(model, method)
    flops = flops_per_sample(model, example, layers)
    # Training FLOPs use the trained network's own dense FLOPs: RigL's dense gradient (f_D)
    # is computed on the network that is trained, e.g. Sparse-IFT's widened one.
    trained_dense = flops["flops/dense"]
    if transform is not None and transform.reference_flops is not None:
        # Sparse-IFT and Monarch: flops/dense is the dense original (the iso-FLOP reference).
        flops["flops/dense"] = transform.reference_flops
    deployed = method.deployed_model(model) if method is not None else None
    if deployed is not None:  # structured: count the physically smaller network
        flops["flops/sparse"] = flops_per_sample(deployed, example)["flops/dense"]
    train = (
        method.train_flops(trained_dense, flops["flops/sparse"], samples_seen)
        if method is not None
        else 3 * trained_dense * samples_seen
    )
    size = (
        hardware.size(model, layers, method.pattern if method is not None else None)
        if hardware is not None
        else model_bytes(model, layers, "dense")
    )
    return {
        **count_params(model),
        "sparsity/target": method.target_sparsity if method is not None else 0.0,
        "sparsity/actual": actual_sparsity(model, layers),
        **flops,
        "flops/train": train,
        "speedup/theoretical": flops["flops/dense"] / flops["flops/sparse"],
        **size,
    }


def measure(results: Results, cfg: DictConfig, model: nn.Module, example: torch.Tensor,
            samples_seen: int, method: SparsityMethod | None, hardware: HardwareTarget,
            benchmark: bool, transform: ModelTransform | None = None) -> None:  # fmt: skip
    """The contract's model metrics into ``results`` and, if ``benchmark`` (rank zero), the
    hardware target's latencies and its per-layer kernel choice."""
    results.update(model_metrics(cfg, model, example, samples_seen, method, hardware, transform))
    if hardware.enabled and benchmark:
        pattern = method.pattern if method is not None else None
        measured = hardware.benchmark(model, example, pruned_layers(model, method), pattern)
        results.update(measured.metrics)
        results.data["kernels"] = measured.kernels  # per-layer kernel the target ran


def pruned_layers(model: nn.Module, method: SparsityMethod | None) -> dict[str, nn.Module]:
    """The method's layers, or the default prunable selection for dense training."""
    if method is not None and method.masks is not None:
        return method.masks.layers
    return prunable_layers(model)

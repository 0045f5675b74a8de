"""The fit: the Lightning Trainer, instantiated from ``cfg.trainer`` by its ``_target_`` (every
field the schema does not mark as sparsebench's own is a Trainer argument), and the method's fit
strategy (:mod:`sparsebench.training.strategies`) that drives one or several fits."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from sparsebench.config.schemas import trainer_arguments
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.training.callback import SparsityCallback
from sparsebench.training.checkpoints import AtomicCheckpointIO
from sparsebench.training.kernels import SparseKernels
from sparsebench.training.module import ClassificationModule
from sparsebench.training.strategies import STRATEGIES


def build_trainer(
    cfg: DictConfig,
    output_dir: Path,
    callbacks: list[Callback],
    extra_callbacks: list[Callback] | None = None,
    **overrides: Any,
) -> L.Trainer:
    """The Trainer ``cfg.trainer._target_`` names, with its arguments from ``cfg.trainer``
    (``overrides`` win, e.g. ``max_epochs``); ``checkpoints/last.ckpt`` is written atomically at
    the end of every training epoch, after :class:`RunProgress` recorded the epoch (so a
    resumed run's history is complete). MLflow is written by the run's record, not by a
    Lightning logger."""
    node = cfg.trainer
    arguments = {key: node[key] for key in trainer_arguments(node) if key != "callbacks"}
    arguments.update(overrides)
    callbacks = [
        *callbacks,
        *(extra_callbacks or []),
        *(instantiate(user, _convert_="all") for user in node.get("callbacks") or []),
    ]
    if arguments.get("enable_checkpointing", True):
        # One file, checkpoints/last.ckpt, replaced after every epoch (top-1 of "latest").
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / "checkpoints",
                filename="last",
                save_top_k=1,
                enable_version_counter=False,
                save_on_train_epoch_end=True,
            )
        )
    target = OmegaConf.create({"_target_": node._target_, **arguments})
    return instantiate(
        target,
        _convert_="all",
        default_root_dir=str(output_dir),
        logger=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def sparsity_callbacks(method: SparsityMethod | None, kernels: str = "off") -> list[Callback]:
    """The Lightning side of a method: its callback (none for dense training), and the sparse
    training kernels' (``trainer.sparse_kernels``: :mod:`sparsebench.training.kernels`)."""
    if method is None:
        return []
    return [SparsityCallback(method)] + (
        [SparseKernels(method, kernels)] if kernels != "off" else []
    )


def fit(
    module: ClassificationModule,
    datamodule: SparseBenchDataModule,
    method: SparsityMethod | None,
    cfg: DictConfig,
    output_dir: Path,
    callbacks: list[Callback],
    ckpt_path: Path | None = None,
) -> L.Trainer:
    """Train with the method's fit strategy (one fit unless IMP's rounds or soups' phases).

    Each fit's Trainer is :func:`build_trainer` of ``cfg`` with the run's ``callbacks`` (the
    method's :class:`SparsityCallback` among them); ``ckpt_path`` resumes from a checkpoint
    (loaded with ``weights_only=True``). Returns the trainer to test with.
    """
    make_trainer = functools.partial(build_trainer, cfg, output_dir, callbacks)
    strategy = STRATEGIES[method.fit_strategy if method is not None else "single"]
    trainer = strategy(method, module, datamodule, make_trainer, ckpt_path)
    if method is not None:
        method.ensure_finalized()  # a resumed fit that had already ended skips on_train_end
    return trainer

"""A run's parts, each instantiated from its config node by its ``_target_``
(lightning-hydra-template's ``train.py`` is the model): the dataset's LightningDataModule, the
hardware target, the sparsity method, the model transformation, the network and the
LightningModule. :class:`sparsebench.training.build.Run` builds them once for a run; the
benchmarks and tests build single parts."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsebench.config.schemas import task_of
from sparsebench.data.base import SparseBenchDataModule
from sparsebench.errors import ConfigError, first_line
from sparsebench.hardware.base import HardwareTarget
from sparsebench.models import build_model
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.training.module import ClassificationModule, LanguageModelingModule
from sparsebench.transforms.base import ModelTransform


def _instantiate(node: Any) -> Any:
    """A config node's object; a constructor's own one-sentence check stays one sentence."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


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
    return _instantiate(cfg.hardware)


def build_method(cfg: DictConfig) -> SparsityMethod | None:
    """The configured sparsity method, or None for dense training (no method, or ``dense``,
    whose ``_target_`` is null)."""
    node = cfg.get("method")
    return None if node is None or node.get("_target_") is None else _instantiate(node)


def build_transform(cfg: DictConfig, method: SparsityMethod | None) -> ModelTransform | None:
    """The configured model transformation, if any, checked against the method it is composed
    with (an iso-FLOP transformation fixes the sparsity the method trains at)."""
    node = cfg.get("transform")
    transform = None if node is None or node.get("_target_") is None else _instantiate(node)
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


def build_run_model(
    cfg: DictConfig,
    datamodule: SparseBenchDataModule,
    method: SparsityMethod | None,
    transform: ModelTransform | None,
) -> nn.Module:
    """The model the run trains: the configured one, transformed; the method's layer
    selection leaves out what the transformation keeps dense."""
    model = build_model(cfg.model)
    if transform is None:
        return model
    model = transform.apply(model, cfg.model, datamodule.example_input(1), datamodule)
    if method is not None:
        method.narrow(transform.include, transform.exclude)
    return model


def build_module(cfg: DictConfig, model: nn.Module) -> ClassificationModule:
    # The optimizer schema is the union of several optimizers' options; unset ones are None.
    options = OmegaConf.to_container(cfg.trainer.optimizer, resolve=True)
    optimizer = instantiate({k: v for k, v in options.items() if v is not None})
    lm = task_of(cfg) == "language_modeling"
    module = LanguageModelingModule if lm else ClassificationModule
    return module(
        model,
        optimizer=optimizer,
        scheduler=cfg.trainer.scheduler,
        warmup_epochs=cfg.trainer.warmup_epochs,
        warmup_steps=cfg.trainer.warmup_steps,
    )

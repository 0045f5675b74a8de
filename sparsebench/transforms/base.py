"""The model-transformation interface: the network a run trains, made from the configured one.

A transformation runs once, before training, and returns the model to train (Sparse-IFT's
iso-FLOP families, Monarch's structured matrices, DASS's searched and derived network). It is
composed with any sparsity method: it names the layers the method must leave dense
(:attr:`exclude`, :attr:`include`) and, for iso-FLOP transformations, the sparsity the method
must train at. The dense original's FLOPs are the run's ``flops/dense`` (the reference).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULT_LAYERS = {"dense_stem": True, "dense_head": True, "include": (), "exclude": ()}


class ModelTransform:
    """Base class; ``apply`` is the transformation."""

    #: True, or the sentence saying why a killed run cannot continue mid-way.
    resumable: bool | str = True

    def __init__(self, name: str) -> None:
        self.name = name
        #: Forward FLOPs per sample of the dense original (set by :meth:`apply`).
        self.reference_flops: float | None = None
        #: Lines describing what changed, printed and kept in results.json.
        self.description: list[str] = []
        #: Layer patterns the sparsity method must (include) or must not (exclude) prune.
        self.include: tuple[str, ...] = ()
        self.exclude: tuple[str, ...] = ()
        #: The sparsity method's layer selection (stem, head, include, exclude), given by the
        #: training layer before :meth:`apply` so that both see the same layers.
        self.layer_options: dict[str, Any] = dict(DEFAULT_LAYERS)

    #: The sparsity the method must train at (iso-FLOP transformations), else None.
    sparsity: float | None = None
    #: The run's ``pattern`` tag when the transformation itself is the structure (Monarch).
    pattern_tag: str | None = None

    def apply(
        self, model: nn.Module, model_cfg: Any, example: torch.Tensor, datamodule: Any = None
    ) -> nn.Module:
        raise NotImplementedError

    def extra_results(self) -> dict[str, Any]:
        """Entries for results.json, each also logged as NAME.json (DASS's genotype)."""
        return {}

    def extra_metrics(self) -> dict[str, float]:
        """Metrics beside the contract (``time/search_s``)."""
        return {}


def mlp_blocks(model: nn.Module) -> tuple[str, ...]:
    """Layer patterns of a transformer's MLP blocks: a causal language model's (its
    ``mlp_layers()``) or a timm vision transformer's (``blocks.*.mlp.*``); () for other models."""
    import timm  # here: importing timm takes seconds, schemas read the transforms at start-up

    if callable(getattr(model, "mlp_layers", None)):  # each layer, and what replaces it
        return tuple(p for name in model.mlp_layers() for p in (name, f"{name}.*"))
    if isinstance(model, timm.models.vision_transformer.VisionTransformer):
        return ("blocks.*.mlp.*",)
    return ()

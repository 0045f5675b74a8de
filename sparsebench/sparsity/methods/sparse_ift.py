"""Sparse-IFT: an iso-FLOP transformation of the model, trained with a sparse method underneath."""

from __future__ import annotations

import timm
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sparsebench.config import ConfigError
from sparsebench.metrics.flops import module_flops
from sparsebench.models.transforms.sparse_ift import FAMILIES, LOWRANK, transform_layers, widen
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.methods.dst import SET, RigL
from sparsebench.sparsity.methods.static import RandomPruning
from sparsebench.sparsity.prunable import prunable_layers

INNER = {"rigl": RigL, "set": SET, "static": RandomPruning}
# Served by the inner method: Lightning hooks, callback state, and what metrics and tests read.
DELEGATED = ("setup", "on_train_start", "on_train_batch_start", "on_after_backward", "on_train_batch_end",
             "on_train_end", "state_dict", "load_state_dict", "train_flops", "densities", "magnitudes",
             "distribution", "ensure_finalized")  # fmt: skip


def _width_arguments(model: nn.Module, model_cfg: dict, k: float) -> dict:
    """create_model arguments that scale every width by k, per model family."""
    name = model_cfg["model_name"]
    if name == "mlp":
        return {
            "hidden_dims": [
                max(1, round(h * k)) for h in model_cfg.get("hidden_dims") or (256, 256)
            ]
        }
    if name == "resnet20":
        return {"width": max(1, round((model_cfg.get("width") or 16) * k))}
    if isinstance(model, timm.models.resnet.ResNet):
        # timm's `channels` are the blocks' inner widths (conv1's outputs, also for bottlenecks).
        channels = [model.get_submodule(f"layer{i}")[0].conv1.out_channels for i in range(1, 5)]
        return {
            "channels": tuple(max(1, round(c * k)) for c in channels),
            "stem_width": max(1, round(64 * k)),
        }
    if isinstance(model, timm.models.vision_transformer.VisionTransformer):
        hidden = model.blocks[0].mlp.fc1.out_features / model.embed_dim
        return {"mlp_ratio": hidden * k}
    raise ConfigError(f"sparse_wide cannot widen model '{name}' (it knows resnet*, resnet20, mlp and vit_*); "
                      "use sparse_parallel, sparse_factorized or sparse_doped.")  # fmt: skip


class SparseIFT(SparsityMethod):
    """Saxena et al., "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing Training
    Efficiency", ICML 2024: transform the dense model with ``family`` at ``sparsity`` so that its
    sparse FLOPs equal the dense original's, then train it sparse with ``inner`` (RigL with the
    paper's settings: drop 0.3 cosine-decayed, dT = 100, until 75% of training; or SET, or
    static). The dense original's FLOPs are reported as ``flops/dense`` (the iso-FLOP reference).
    For vision transformers only the MLP blocks are transformed and sparse.
    """

    def __init__(self, name: str = "sparse_ift", family: str = "sparse_wide", sparsity: float = 0.75,
                 inner: str = "rigl", drop_fraction: float = 0.3, update_interval: int = 100, end: float = 0.75,
                 dense_stem: bool = True, dense_head: bool = True, include=(), exclude=(), seed: int = 0) -> None:  # fmt: skip
        Callback.__init__(self)
        if family not in FAMILIES:
            raise ConfigError(
                f"method.family must be one of {', '.join(FAMILIES)}, got '{family}'."
            )
        if inner not in INNER:
            raise ConfigError(f"method.inner must be one of {', '.join(INNER)}, got '{inner}'.")
        if not 0 < sparsity < 1:
            raise ConfigError(f"method.sparsity must be in (0, 1), got {sparsity}.")
        self.name, self.family, self.sparsity = name, family, sparsity
        options = {"sparsity": sparsity, "distribution": "uniform", "dense_stem": dense_stem,
                   "dense_head": dense_head, "include": tuple(include), "seed": seed,
                   "exclude": (*exclude, f"*.{LOWRANK}.*")}  # fmt: skip
        if inner != "static":
            options.update(drop_fraction=drop_fraction, update_interval=update_interval, end=end)
        self.inner: SparsityMethod = INNER[inner](**options)
        self.reference_flops: float | None = None
        self.description: list[str] = []

    # The inner method does the sparse training: delegate its state and hooks.
    @property
    def masks(self):
        return self.inner.masks

    @property
    def pattern(self):
        return self.inner.pattern

    @property
    def target_sparsity(self) -> float:
        return self.inner.target_sparsity

    def __getattribute__(self, item: str):
        if item in DELEGATED:
            return getattr(object.__getattribute__(self, "inner"), item)
        return object.__getattribute__(self, item)

    def layer_selection(self, model: nn.Module) -> dict[str, nn.Module]:
        options = dict(self.inner.layer_options)
        if (
            isinstance(model, timm.models.vision_transformer.VisionTransformer)
            and not options["include"]
        ):
            options["include"] = ("blocks.*.mlp.*",)
        self.inner.layer_options = options
        return prunable_layers(model, **options)

    def transform_model(
        self, model: nn.Module, model_cfg: DictConfig, example: torch.Tensor
    ) -> nn.Module:
        self.reference_flops, _ = module_flops(model, example)
        self.reference_flops /= example.shape[0]
        if self.family == "sparse_wide":
            config = OmegaConf.to_container(model_cfg, resolve=True)
            config.pop("_target_", None)
            base = {k: v for k, v in config.items() if v is not None}

            def build(k: float) -> nn.Module:
                return timm.create_model(**{**base, **_width_arguments(model, config, k)})

            def sparse_flops(candidate: nn.Module) -> float:
                total, per_layer = module_flops(
                    candidate, example.to(next(candidate.parameters()).device)
                )
                saved = sum(per_layer[n] for n in self.layer_selection(candidate)) * self.sparsity
                return (total - saved) / example.shape[0]

            self.layer_selection(model)
            wide, k = widen(build, sparse_flops, self.reference_flops)
            old, new = (
                prunable_layers(model, **self.inner.layer_options),
                prunable_layers(wide, **self.inner.layer_options),
            )
            self.description = [f"sparse_wide: widths x{k:.3f}"] + [
                f"{n}: {tuple(o.weight.shape[:2])} -> {tuple(new[n].weight.shape[:2])}"
                for n, o in old.items()
                if n in new
            ]
            return wide
        layers = self.layer_selection(model)
        vit = isinstance(model, timm.models.vision_transformer.VisionTransformer)
        activation = nn.GELU if vit else nn.ReLU
        self.description = transform_layers(
            model, layers, self.family, self.sparsity, activation, token_norm=vit
        )
        return model

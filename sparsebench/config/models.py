"""Schemas of the model families: the arguments every ``timm.create_model`` call takes, and each
family's own options (timm's networks, the MLP, resnet20, DASS's network), so a run's params hold
only the options of its model; and the schema of a method yaml without a method class
(``dense``, and presets whose transformation is the whole structure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from sparsebench.errors import require


@dataclass
class ModelConfig:
    """Arguments of ``timm.create_model`` that every model family takes (our small models
    register with timm too); each family's schema adds its own options, so a run's params hold
    only the options of its model. Options default to None: timm drops None keyword arguments.
    """

    _target_: str = "timm.create_model"
    model_name: str = MISSING
    pretrained: bool = False
    num_classes: int = MISSING
    in_chans: int = MISSING

    def __post_init__(self) -> None:
        require(self.num_classes >= 2, f"model.num_classes must be >= 2, got {self.num_classes}.")
        require(self.in_chans >= 1, f"model.in_chans must be >= 1, got {self.in_chans}.")
        drop_rate = getattr(self, "drop_rate", None)
        if drop_rate is not None:
            require(0 <= drop_rate < 1, f"model.drop_rate must be in [0, 1), got {drop_rate}.")


@dataclass
class TimmModelConfig(ModelConfig):
    """timm's own networks (resnet18, mobilenetv2_100, vit_tiny_patch16_224, ...). The common
    ``create_model`` arguments are typed here; any other a network takes passes through to timm
    (``+model.KEY=VALUE``), which refuses in one sentence what the network does not take."""

    img_size: Any = None  # vision transformers: int or [H, W]
    drop_rate: float | None = None
    drop_path_rate: float | None = None
    drop_block_rate: float | None = None
    global_pool: str | None = None  # avg, max, avgmax, catavgmax, '' (none)

    OPEN = True  # not a field: keys beyond these are timm keyword arguments


@dataclass
class MLPConfig(ModelConfig):
    """sparsebench.models.small.MLP."""

    in_features: int | None = None  # C*H*W or C*L of the dataset
    hidden_dims: list[int] | None = None
    drop_rate: float | None = None


@dataclass
class CifarResNetConfig(ModelConfig):
    """sparsebench.models.small.CifarResNet (resnet20)."""

    width: int | None = None  # base width


@dataclass
class DassNetworkConfig(ModelConfig):
    """A network of DASS's search space (sparsebench.models.dass)."""

    channels: int | None = None  # channels of the first cells
    cells: int | None = None
    nodes: int | None = None  # intermediate nodes per cell
    genotype: Any = None  # a searched genotype (mapping or JSON string)


MODEL_SCHEMAS: dict[str, type] = {
    "timm": TimmModelConfig,
    "mlp": MLPConfig,
    "resnet20": CifarResNetConfig,
    "dass_network": DassNetworkConfig,
}


@dataclass
class DenseMethodConfig:
    """No sparsity method (``+method=dense``), or a preset whose model transformation is the
    whole structure (``+method=monarch``)."""

    _target_: Any = None
    name: str = MISSING
    sparsity: float | None = None  # dense: 0

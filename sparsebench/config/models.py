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


@dataclass
class CausalLMConfig:
    """A small causal language model built from its transformers config, no download
    (sparsebench.models.language: ``tiny_llama``, ``tiny_gpt2``); sizes as options."""

    _target_: str = MISSING
    model_name: str = MISSING
    vocab_size: int = MISSING  # the dataset's tokenizer
    max_positions: int = MISSING  # at least the dataset's seqlen
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352

    def __post_init__(self) -> None:
        for key in ("vocab_size", "max_positions", "hidden_size", "num_layers", "num_heads"):
            require(getattr(self, key) >= 1, f"model.{key} must be >= 1, got {getattr(self, key)}.")
        require(
            self.hidden_size % self.num_heads == 0,
            f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_heads "
            f"({self.num_heads}).",
        )


@dataclass
class HFCausalLMConfig:
    """Any causal language model ``transformers.AutoModelForCausalLM`` loads: a folder written
    by ``save_pretrained`` or a hub id (online, or in the hub cache)."""

    _target_: str = "sparsebench.models.language.hf_causal_lm"
    model_name: str = "hf_causal_lm"
    name_or_path: str = MISSING
    dtype: str = "float32"

    def __post_init__(self) -> None:
        dtypes = ("float32", "bfloat16", "float16")
        require(
            self.dtype in dtypes,
            f"model.dtype must be one of {', '.join(dtypes)}, got '{self.dtype}'.",
        )


MODEL_SCHEMAS: dict[str, type] = {
    "timm": TimmModelConfig,
    "mlp": MLPConfig,
    "resnet20": CifarResNetConfig,
    "dass_network": DassNetworkConfig,
    "causal_lm": CausalLMConfig,
    "hf_causal_lm": HFCausalLMConfig,
}


@dataclass
class DenseMethodConfig:
    """No sparsity method (``+method=dense``), or a preset whose model transformation is the
    whole structure (``+method=monarch``)."""

    _target_: Any = None
    name: str = MISSING
    sparsity: float | None = None  # dense: 0

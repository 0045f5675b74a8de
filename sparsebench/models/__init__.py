"""Models: timm networks and our small ones (registered with timm), built from a model yaml."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from sparsebench.errors import ConfigError


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate ``cfg`` (``_target_: timm.create_model`` and its explicit arguments)."""
    import timm  # here, not at import: timm takes seconds, and models/dass.py needs none of it

    from sparsebench.models import small  # noqa: F401  (registers mlp, resnet20, dass_network)

    name = cfg.get("model_name")
    if cfg.get("_target_") == "timm.create_model" and not timm.is_model(name):
        raise ConfigError(
            f"timm has no model '{name}'; see timm.list_models() for the names it knows."
        )
    try:
        return instantiate(cfg)
    except Exception as exc:  # instantiate wraps the model's own error; keep its message
        cause = exc.__cause__ or exc
        raise ConfigError(f"model '{name}' could not be built from its config: {cause}") from exc


__all__ = ["build_model"]

"""Parameter counts and sparsity over prunable weights."""

from __future__ import annotations

from torch import nn

from sparsebench.sparsity.prunable import prunable_layers


def count_params(model: nn.Module) -> dict[str, int]:
    """``params/total`` (all parameters) and ``params/nonzero``."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return {"params/total": total, "params/nonzero": nonzero}


def layer_densities(
    model: nn.Module, layers: dict[str, nn.Module] | None = None
) -> dict[str, float]:
    """Fraction of nonzero weights of every prunable layer (default selection), by name."""
    layers = prunable_layers(model) if layers is None else layers
    return {name: float(m.weight.count_nonzero()) / m.weight.numel() for name, m in layers.items()}


def actual_sparsity(model: nn.Module, layers: dict[str, nn.Module] | None = None) -> float:
    """``sparsity/actual``: fraction of exact zeros over the prunable weights."""
    modules = (prunable_layers(model) if layers is None else layers).values()
    total = sum(m.weight.numel() for m in modules)
    nonzero = sum(int(m.weight.count_nonzero()) for m in modules)
    return 1.0 - nonzero / total if total else 0.0

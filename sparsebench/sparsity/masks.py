"""Masks on prunable weights: the one place that guarantees exact zeros.

Each pruned module gets a boolean buffer ``weight_mask`` (so masks are saved in every
checkpoint and restored on resume with the model). :class:`MaskSet` zeroes masked weights
(:meth:`apply`, after every optimizer step) and their gradients (:meth:`mask_grads`, before
it), so SGD with momentum and weight decay or AdamW never revive a pruned weight.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

MASK = "weight_mask"
# On a layer the sparse training kernels update (sparsebench.hardware.training): the (mask,
# weight) tensor versions at which its masked weights were last zeroed. The kernels' optimizer
# update writes the kept weights only, without moving the weight's version, so while both
# versions stand the masked weights are still zero and apply() skips the layer's pass.
ZEROED = "_sparsebench_zeroed"


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The weight Parameter the optimizer updates (the original under a parametrization)."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    return module.weight


class MaskError(ValueError):
    """A mask does not fit the layer it is meant for."""


class MaskSet:
    """Boolean masks attached to the ``weight`` of each named module."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        if not layers:
            raise MaskError(
                "no prunable layers were selected; check method.include/method.exclude."
            )
        for name, module in layers.items():
            if hasattr(module, MASK):
                raise MaskError(
                    f"layer '{name}' already has a mask attached; attach masks once per model."
                )
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise MaskError(f"layer '{name}' has no weight tensor to mask.")
            module.register_buffer(MASK, torch.ones_like(weight, dtype=torch.bool))
        self.layers = dict(layers)

    @classmethod
    def existing(cls, layers: dict[str, nn.Module]) -> MaskSet:
        """The masks already attached to ``layers`` (a copy of a masked model's)."""
        for name, module in layers.items():
            if not hasattr(module, MASK):
                raise MaskError(f"layer '{name}' has no mask attached.")
        masks = cls.__new__(cls)
        masks.layers = dict(layers)
        return masks

    def __iter__(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(self.layers.items())

    def __len__(self) -> int:
        return len(self.layers)

    def mask(self, name: str) -> torch.Tensor:
        return getattr(self.layers[name], MASK)

    def weight(self, name: str) -> torch.Tensor:
        return stored_weight(self.layers[name])

    def set(self, name: str, mask: torch.Tensor) -> None:
        """Replace a layer's mask (validated) and zero its newly masked weights."""
        current = self.mask(name)
        if mask.shape != current.shape:
            raise MaskError(
                f"mask for '{name}' has shape {tuple(mask.shape)}, the weight {tuple(current.shape)}."
            )
        current.copy_(mask.to(torch.bool))
        with torch.no_grad():
            self.weight(name).mul_(current)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight (call after each optimizer step)."""
        for _, module in self:
            weight, mask = stored_weight(module), getattr(module, MASK)
            if not hasattr(module, ZEROED):
                weight.mul_(mask)
            elif getattr(module, ZEROED) != (mask._version, weight._version):
                weight.mul_(mask)
                setattr(module, ZEROED, (mask._version, weight._version))

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of masked weights (call before each optimizer step)."""
        for _, module in self:
            weight = stored_weight(module)
            if weight.grad is not None:
                weight.grad.mul_(getattr(module, MASK))

    def densities(self) -> dict[str, float]:
        return {name: float(self.mask(name).float().mean()) for name in self.layers}

    def sparsity(self) -> float:
        """Fraction of masked weights over all masked layers."""
        total = sum(self.mask(n).numel() for n in self.layers)
        kept = sum(int(self.mask(n).sum()) for n in self.layers)
        return 1.0 - kept / total

    @staticmethod
    def detach(model: nn.Module) -> None:
        """Remove every mask buffer from ``model`` (weights keep their zeros)."""
        for module in model.modules():
            if MASK in module._buffers:
                del module._buffers[MASK]


def reset_optimizer_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor
) -> None:
    """Zero every per-element optimizer state of ``param`` (momentum, Adam moments) at ``where``.

    Used when dynamic sparse training grows a connection: it starts at zero with no history.
    """
    state = optimizer.state.get(param, {})
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.masked_fill_(where, 0)

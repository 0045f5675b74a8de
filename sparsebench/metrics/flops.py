"""Forward FLOPs per sample from torch's FlopCounterMode, dense and with layer density applied.

FlopCounterMode counts 2 FLOPs per multiply-add. Its CPU path has no formula for the fused
attention kernel PyTorch picks on CPU, so that op is mapped to torch's own SDPA formula.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

from sparsebench.metrics.params import layer_densities
from sparsebench.sparsity.prunable import PRUNABLE_TYPES


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop(query_shape, key_shape, value_shape)


_CUSTOM = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flop


def module_flops(model: nn.Module, example: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total forward FLOPs of ``model(example)`` and those of each Conv/Linear by name."""
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_CUSTOM)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        model.train(was_training)
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    per_layer = {}
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE_TYPES):
            per_layer[name] = int(sum(by_module.get(f"{root}.{name}", {}).values()))
    return int(counter.get_total_flops()), per_layer


def flops_per_sample(
    model: nn.Module, example: torch.Tensor, layers: dict[str, nn.Module] | None = None
) -> dict[str, float]:
    """``flops/dense`` and ``flops/sparse`` per sample, and the MAC count.

    ``flops/sparse`` scales each prunable layer's FLOPs by its density (fraction of nonzero
    weights); the rest of the network counts in full.
    """
    batch = example.shape[0]
    total, per_layer = module_flops(model, example)
    densities = layer_densities(model, layers)
    saved = sum(per_layer.get(name, 0) * (1.0 - d) for name, d in densities.items())
    return {
        "flops/dense": total / batch,
        "flops/sparse": (total - saved) / batch,
        "macs/dense": total / 2 / batch,
    }

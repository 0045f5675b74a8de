"""Which weights are prunable.

Conv and Linear weights are prunable; biases, norms and embeddings are not. By default the stem
(the first Conv/Linear the input meets) and the classifier head stay dense, as in the rigl and
Sparse-IFT code. Downsample 1x1 shortcut convs are prunable.
"""

from __future__ import annotations

from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _head(model: nn.Module) -> nn.Module | None:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, PRUNABLE_TYPES):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def prunable_layers(
    model: nn.Module, dense_stem: bool = True, dense_head: bool = True
) -> dict[str, nn.Module]:
    """Map of qualified name -> Conv/Linear module whose ``weight`` may be pruned."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if dense_stem and layers:
        layers.pop(next(iter(layers)))
    head = _head(model) if dense_head else None
    return {name: m for name, m in layers.items() if m is not head}

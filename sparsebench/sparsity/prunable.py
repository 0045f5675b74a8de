"""Which weights are prunable.

Conv and Linear weights are prunable; biases, norms and embeddings are not. By default the stem
(the first Conv/Linear the input meets) and the classifier head stay dense, as in the rigl and
Sparse-IFT code. Downsample 1x1 shortcut convs are prunable. ``include``/``exclude`` take
module-name patterns (``fnmatch``: ``layer4.*``, ``*.downsample.0``) to choose further.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` (transformations, hardware conversions)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _head(model: nn.Module) -> nn.Module | None:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, PRUNABLE_TYPES):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def prunable_layers(
    model: nn.Module,
    dense_stem: bool = True,
    dense_head: bool = True,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> dict[str, nn.Module]:
    """Map of qualified name -> Conv/Linear module whose ``weight`` may be pruned.

    ``include`` (if given) keeps only names matching one of its patterns; ``exclude`` then
    drops matching names. Stem and head are dropped unless ``dense_stem``/``dense_head`` are off.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if dense_stem and layers and not getattr(model, "embeds_input", False):
        layers.pop(next(iter(layers)))  # (a language model's input meets its embedding)
    head = _head(model) if dense_head else None
    layers = {name: m for name, m in layers.items() if m is not head}
    if include:
        layers = {n: m for n, m in layers.items() if any(fnmatchcase(n, p) for p in include)}
    return {n: m for n, m in layers.items() if not any(fnmatchcase(n, p) for p in exclude)}

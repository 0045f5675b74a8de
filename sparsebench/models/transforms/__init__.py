"""Model transformations: Sparse-IFT families (and Monarch layers)."""

from sparsebench.models.transforms.sparse_ift import FAMILIES, transform_layers, widen

__all__ = ["FAMILIES", "transform_layers", "widen"]

"""Model transformations: the network a run trains, made from the configured one (a config node
of its own, ``transform``, composed with any sparsity method)."""

from sparsebench.transforms.base import ModelTransform
from sparsebench.transforms.dass import DASS
from sparsebench.transforms.monarch import Monarch, MonarchLinear
from sparsebench.transforms.sparse_ift import FAMILIES, SparseIFT

__all__ = ["DASS", "FAMILIES", "ModelTransform", "Monarch", "MonarchLinear", "SparseIFT"]

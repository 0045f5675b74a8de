"""Post-training pruning (``runner=prune``): calibration, per-layer algorithms, methods."""

from sparsebench.pruning.methods import (
    DSnoT,
    OneShotMagnitude,
    PostTrainingMethod,
    SparseGPT,
    Wanda,
)

__all__ = ["DSnoT", "OneShotMagnitude", "PostTrainingMethod", "SparseGPT", "Wanda"]

"""Random node masks: which hidden units of an over-parameterised network survive."""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod, check_fraction


class NodeMask(SparsityMethod):
    """A random sub-network in the node space of an over-parameterised MLP, fixed for training.

    Farahani et al. 2024 ("random search as a baseline for sparse neural network architecture
    search") sample which hidden units survive, at a target sparsity, train each candidate and
    compare with random weight-level masks of equal sparsity and with the dense parent. Here a
    candidate is drawn from ``node_seed``: per hidden layer a relative width
    ``1 - layer_spread * u`` (u uniform), scaled together until the kept weights (incoming and
    outgoing weights of surviving units, over every Linear layer) meet ``sparsity``, then that
    many units chosen at random. ``layer_spread=0`` keeps the same fraction in every layer.

    Units are removed through weight masks (rows of the layer that computes them, columns of the
    next), so every layer, stem and head included, is masked. Models whose prunable layers are
    not a chain of Linear layers are refused.
    """

    kind = "structured"
    sparse_from_start = True

    def __init__(
        self,
        name: str = "node",
        node_seed: int = 0,
        layer_spread: float = 0.5,
        dense_stem: bool = False,
        dense_head: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(name=name, dense_stem=dense_stem, dense_head=dense_head, **kwargs)
        check_fraction("layer_spread", layer_spread, high_open=False)
        self.node_seed = node_seed
        self.layer_spread = layer_spread
        self.kept_units: dict[str, int] = {}
        self._densities: dict[str, float] = {}

    def _chain(self) -> list[tuple[str, nn.Linear]]:
        layers = list(self.masks)
        for (name, module), (next_name, following) in zip(layers, layers[1:], strict=False):
            if not (
                isinstance(module, nn.Linear)
                and isinstance(following, nn.Linear)
                and module.out_features == following.in_features
            ):
                raise ConfigError(
                    f"method 'node' needs a chain of Linear layers (e.g. model=mlp); "
                    f"'{name}' -> '{next_name}' is not one."
                )
        if len(layers) < 2:
            raise ConfigError(
                "method 'node' needs at least one hidden layer between two Linear layers."
            )
        return layers

    def init_masks(self) -> None:
        layers = self._chain()
        widths = [m.out_features for _, m in layers[:-1]]  # hidden layers
        ins, outs = layers[0][1].in_features, layers[-1][1].out_features
        gen = torch.Generator().manual_seed(self.node_seed)
        relative = 1 - self.layer_spread * torch.rand(len(widths), generator=gen)
        total = sum(m.weight.numel() for _, m in layers)
        budget = (1 - self.sparsity) * total

        def kept(scale: float) -> tuple[list[int], int]:
            units = [
                max(1, min(w, round(scale * float(r) * w)))
                for w, r in zip(widths, relative, strict=True)
            ]
            dims = [ins, *units, outs]
            return units, sum(a * b for a, b in zip(dims, dims[1:], strict=False))

        low, high = 0.0, 1.0 / float(relative.min())
        for _ in range(60):  # bisection on the common scale: kept weights grow with it
            mid = (low + high) / 2
            low, high = (mid, high) if kept(mid)[1] <= budget else (low, mid)
        units, _ = min((kept(low), kept(high)), key=lambda k: abs(k[1] - budget))
        survivors = [
            torch.randperm(w, generator=gen)[:k] for w, k in zip(widths, units, strict=True)
        ]
        for index, (name, module) in enumerate(layers):
            rows = torch.ones(module.out_features, dtype=torch.bool)
            cols = torch.ones(module.in_features, dtype=torch.bool)
            if index < len(widths):
                rows = torch.zeros_like(rows).index_fill_(0, survivors[index], True)
            if index > 0:
                cols = torch.zeros_like(cols).index_fill_(0, survivors[index - 1], True)
            mask = rows[:, None] & cols[None, :]
            self.masks.set(name, mask)
            self._densities[name] = float(mask.float().mean())
        self.kept_units = {name: int(k) for (name, _), k in zip(layers, units, strict=False)}

    def densities(self, scores=None, sparsity=None) -> dict[str, float]:
        """The densities the node mask produced (not a distribution's)."""
        return dict(self._densities) if self._densities else super().densities(scores, sparsity)

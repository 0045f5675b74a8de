"""Layer-wise sparsity distributions: how a total sparsity is split across layers.

- ``uniform``: every layer at s.
- ``uniform_plus`` (Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022):
  uniform, but the last layer keeps at least 20% of its weights, the others rescaled to keep
  the total (the first layer is the dense stem here, as by default).
- ``er`` / ``erk`` (Mocanu et al. 2018; Evci et al., "Rigging the Lottery", ICML 2020):
  density ~ (n_in + n_out)/(n_in * n_out), or (sum of all dims / product of all dims)^power;
  solved for the total and re-solved with layers that would exceed density 1 made dense.
- ``global``: one magnitude threshold over all layers (densities follow from the scores).
"""

from __future__ import annotations

import math

import torch

from sparsebench.errors import ConfigError

DISTRIBUTIONS = ("uniform", "uniform_plus", "er", "erk", "global")


def _raw(shape: torch.Size, kind: str, power: float) -> float:
    if kind == "er":
        n_out, n_in = shape[0], shape[1]
        return (n_in + n_out) / (n_in * n_out)
    return (sum(shape) / math.prod(shape)) ** power


def _solve_scaled(
    shapes: dict[str, torch.Size], sparsity: float, raw: dict[str, float]
) -> dict[str, float]:
    """density_l = eps * raw_l with kept weights = (1 - s) * total; layers hitting 1 made dense.

    Follows google-research/rigl's sparse_utils: make the layer(s) with the largest raw score
    dense, remove them from both sides, and solve again until every density is <= 1.
    """
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        remaining = budget - sum(sizes[n] for n in dense)
        denominator = sum(raw[n] * sizes[n] for n in free)
        if not free or denominator <= 0:
            raise ConfigError(f"cannot spread sparsity {sparsity} over these layers.")
        eps = remaining / denominator
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            break
        top = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == top)
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def layer_densities(
    shapes: dict[str, torch.Size],
    sparsity: float,
    kind: str = "uniform",
    power: float = 1.0,
    scores: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Density (fraction kept) of each layer so that the total density is 1 - sparsity."""
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"unknown distribution '{kind}'; available: {', '.join(DISTRIBUTIONS)}.")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}.")
    if kind == "uniform":
        return {n: 1.0 - sparsity for n in shapes}
    if kind == "uniform_plus":
        names = list(shapes)
        last = names[-1]
        if 1.0 - sparsity >= 0.2 or len(names) == 1:
            return {n: 1.0 - sparsity for n in names}
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        rest = sum(sizes[n] for n in names[:-1])
        density = ((1.0 - sparsity) * sum(sizes.values()) - 0.2 * sizes[last]) / rest
        return {**{n: max(0.0, density) for n in names[:-1]}, last: 0.2}
    if kind in ("er", "erk"):
        return _solve_scaled(shapes, sparsity, {n: _raw(s, kind, power) for n, s in shapes.items()})
    # global: one threshold over all scores
    if scores is None:
        raise ConfigError(
            "the 'global' distribution needs scores (it is set by magnitude, not at init)."
        )
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = round((1.0 - sparsity) * flat.numel())
    if keep == 0:
        return {n: 0.0 for n in shapes}
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    above = {n: int((s > threshold).sum()) for n, s in scores.items()}
    ties = keep - sum(above.values())  # spread weights equal to the threshold in layer order
    densities = {}
    for n, s in scores.items():
        at = int((s == threshold).sum())
        take = min(at, max(0, ties))
        ties -= take
        densities[n] = (above[n] + take) / s.numel()
    return densities

"""Dynamic sparse training: SET and RigL (drop by magnitude, grow at random or by gradient)."""

from __future__ import annotations

import torch

from sparsebench.errors import ConfigError
from sparsebench.sparsity.masks import reset_optimizer_state
from sparsebench.sparsity.methods.base import SparsityMethod, check_fraction
from sparsebench.sparsity.patterns import Block, Unstructured
from sparsebench.sparsity.schedules import Schedule


class DynamicSparseTraining(SparsityMethod):
    """Shared machinery: random ERK masks at init; every ``update_interval`` steps until ``end``
    (fraction of training), each layer drops the cosine-decayed fraction of its active units
    (weights; or whole blocks of a block pattern, scored by their sums) with the smallest |w|
    and grows as many, as rigl's op does (:func:`drop_and_grow`): a unit dropped and grown again
    in the same update keeps its value and optimizer state; only units that were not active
    start anew (their value from :meth:`grow_values`, no optimizer state).
    """

    sparse_from_start = True
    # Drops and grows the pattern's units: single weights, or whole blocks (scored by their sums)
    patterns = (Unstructured, Block)

    def __init__(
        self,
        name: str,
        distribution: str = "erk",
        drop_fraction: float = 0.3,
        update_interval: int = 100,
        end: float = 0.75,
        **kwargs,
    ) -> None:
        super().__init__(name=name, distribution=distribution, **kwargs)
        check_fraction("drop_fraction", drop_fraction, high_open=False)
        self.drop_fraction, self.update_interval = drop_fraction, update_interval
        self.schedule = Schedule(start=0.0, end=end, interval=update_interval, start_option=None)

    def init_masks(self) -> None:
        gen = self.generator(0)
        self.prune_by({name: torch.rand(m.weight.shape, generator=gen) for name, m in self.masks})

    def is_update_step(self, step: int) -> bool:
        return step > 0 and self.schedule.due(step)

    def grow_scores(self, name: str, step: int) -> torch.Tensor:
        raise NotImplementedError

    def layer_generator(self, name: str, step: int) -> torch.Generator:
        """Seeded by (seed, step, layer): identical on every DDP rank."""
        return self.generator(step * 4099 + list(self.masks.layers).index(name))

    def grow_values(self, name: str, grown: torch.Tensor, step: int) -> torch.Tensor:
        """Initial values of newly grown connections: zero (RigL)."""
        return torch.zeros(int(grown.sum()), dtype=self.masks.weight(name).dtype)

    def drop_and_grow(self, step: int) -> dict[str, int]:
        """One mask update (:func:`drop_and_grow`, rigl's op); returns the connections moved per
        layer (dropped and grown again, some in place)."""
        fraction = self.schedule.cosine(step, self.drop_fraction)
        moved = {}
        for name, module in self.masks:
            full = self.masks.mask(name)
            pattern = self.pattern
            mask = pattern.units(full.float()) > 0  # units: weights, or blocks of the pattern
            magnitude = pattern.units(module.weight.detach().abs())
            # rigl breaks ties in the drop scores with N(0, 1e-5) noise, seeded per (step, layer).
            # rigl adds it to inactive units too (their score is then the noise alone, which can
            # outrank an active |w| below 1e-5 and keep a unit that was never grown): here an
            # inactive unit is never kept.
            noise = torch.randn(
                magnitude.shape,
                generator=self.layer_generator(name, step + 2),
                dtype=magnitude.dtype,
            )
            score_drop = torch.where(mask, magnitude + 1e-5 * noise, -torch.inf)
            kept, grown, k = drop_and_grow(
                score_drop, pattern.units(self.grow_scores(name, step)), mask, fraction
            )
            moved[name] = k
            if k == 0:
                continue
            kept = pattern.expand(kept, full.shape)
            grown = pattern.expand(grown, full.shape)
            new = grown & ~full  # regrown in place: keeps its value and optimizer state
            with torch.no_grad():
                module.weight[new] = self.grow_values(name, new, step)
            if self.optimizer is not None:
                reset_optimizer_state(self.optimizer, module.weight, new)
            self.masks.set(name, kept | grown)
        return moved


def drop_and_grow(
    score_drop: torch.Tensor, score_grow: torch.Tensor, mask: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """rigl's mask update (google-research/rigl, ``SparseSETOptimizer._get_update_op``): of the
    ``n = mask.sum()`` active units, ``floor(n * fraction)`` are moved: the ``n - k`` best by
    ``score_drop`` are kept, then the ``k`` best by ``score_grow`` among the rest (the dropped
    ones included) are grown. Ties go to the lower flat index, as tf.math.top_k orders them.
    Returns (kept, grown, k)."""
    n_total, n_ones = mask.numel(), int(mask.sum())
    k = int(n_ones * fraction)  # rigl casts to int32: the floor
    order = torch.sort(score_drop.reshape(-1), descending=True, stable=True).indices
    kept = torch.zeros(n_total, dtype=torch.bool)
    kept[order[: n_ones - k]] = True
    grow = score_grow.reshape(-1).float()
    lifted = torch.where(kept, grow.min() - 1, grow)  # kept units rank last
    order = torch.sort(lifted, descending=True, stable=True).indices
    grown = torch.zeros(n_total, dtype=torch.bool)
    grown[order[:k]] = True
    return kept.view_as(mask), grown.view_as(mask), k


GROW_INITS = ("random", "zeros")


class SET(DynamicSparseTraining):
    """Mocanu et al., "Scalable training of artificial neural networks with adaptive sparse
    connectivity inspired by network science", Nature Communications 2018: regrow at random.

    As in the paper, grown weights get random values (``grow_init=random``: normal with the
    standard deviation of the layer's kept weights); ``zeros`` is rigl's variant. A zero-valued
    weight grown where its gradient is structurally zero (a dead input) would stay zero
    forever. The draws are seeded by (seed, step, layer), so every DDP rank agrees.
    """

    def __init__(self, name: str = "set", grow_init: str = "random", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        if grow_init not in GROW_INITS:
            raise ConfigError(
                f"method.grow_init must be one of {', '.join(GROW_INITS)}, got '{grow_init}'."
            )
        self.grow_init = grow_init

    def grow_values(self, name: str, grown: torch.Tensor, step: int) -> torch.Tensor:
        if self.grow_init == "zeros":
            return super().grow_values(name, grown, step)
        weight = self.masks.weight(name).detach()
        kept = weight[self.masks.mask(name)]
        std = float(kept.std()) if kept.numel() > 1 else 0.01
        gen = self.layer_generator(name, step + 1)  # not the stream that chose the positions
        return torch.randn(int(grown.sum()), generator=gen, dtype=weight.dtype) * std

    def update_due(self, step: int) -> bool:
        return self.is_update_step(step)

    def update(self, step: int) -> None:
        self.drop_and_grow(step)

    def grow_scores(self, name: str, step: int) -> torch.Tensor:
        # One generator per (step, layer index): identical across ranks and layers' order.
        index = list(self.masks.layers).index(name)
        return torch.rand(
            self.masks.mask(name).shape, generator=self.generator(step * 4099 + index)
        )


class RigL(DynamicSparseTraining):
    """Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020: regrow where
    the dense gradient |dL/dw| is largest. The gradient of the full weight tensor is computed by
    backward anyway; it is read on update steps before gradients are masked (after DDP's
    all-reduce, so every rank sees the same one). On an update step the optimizer step still
    runs with the new mask (grown weights take their first step from zero); rigl's TF code
    skips the weight update on mask-update steps, a difference of one step in every dT.
    """

    def __init__(self, name: str = "rigl", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def after_backward(self, step: int) -> None:
        if self.is_update_step(step):
            self.drop_and_grow(step)

    def needs_dense_grad(self, step: int) -> bool:
        return self.is_update_step(step)  # the grow step reads |dL/dw| of every weight

    def grow_scores(self, name: str, step: int) -> torch.Tensor:
        grad = self.masks.weight(name).grad
        if grad is None:
            raise RuntimeError(
                f"RigL needs the gradient of '{name}' on update steps; it is missing."
            )
        return grad.detach().abs()

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Per step: 3 f_s, plus a dense gradient (f_D + 2 f_s in all) every dT steps (Sparse-IFT).
        dt = self.update_interval
        return samples * (3 * sparse_flops * dt + 2 * sparse_flops + dense_flops) / (dt + 1)

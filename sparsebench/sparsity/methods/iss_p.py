"""ISS-P: iterative soft shrinkage of the smallest weights instead of zeroing them."""

from __future__ import annotations

import torch

from sparsebench.sparsity.methods.base import SparsityMethod, check_fraction
from sparsebench.sparsity.patterns import Block, Unstructured
from sparsebench.sparsity.schedules import Schedule


class ISSP(SparsityMethod):
    """Iterative Soft Shrinkage-Percentage (Wang et al., "Iterative Soft Shrinkage Learning for
    Efficient Image Super-Resolution", ICCV 2023): every ``update_interval`` optimizer steps (1), per layer, the
    smallest p_t fraction of |w| is multiplied by ``alpha`` (0.95) rather than set to zero, so
    pruned candidates can still recover; p_t follows the cubic schedule to the target between
    ``start`` and ``end``; at ``end`` the layer is hard-pruned to its target and the mask is
    fixed (alpha = 0 would be hard iterative thresholding).
    """

    patterns = (Unstructured, Block)  # shrinks the pattern's units: weights, or whole blocks

    def __init__(
        self,
        name: str = "iss_p",
        alpha: float = 0.95,
        start: float = 0.0,
        end: float = 1.0,
        update_interval: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        check_fraction("alpha", alpha)
        self.alpha = alpha
        self.schedule = Schedule(start=start, end=end, interval=update_interval)
        self.hard_pruned = False

    def shrink_fraction(self, step: int) -> float:
        return self.schedule.cubic(step, self.sparsity)

    @torch.no_grad()
    def shrink(self, step: int) -> None:
        densities = self.densities()
        target = self.shrink_fraction(step)
        for name, module in self.masks:
            weight = module.weight
            units = self.pattern.units(weight.abs())
            k = round(target * (1 - densities[name]) / max(1e-12, self.sparsity) * units.numel())
            if k > 0:
                smallest = torch.zeros(units.numel(), dtype=torch.bool)
                smallest[torch.topk(units.reshape(-1), k, largest=False).indices] = True
                weight[self.pattern.expand(smallest.view_as(units), weight.shape)] *= self.alpha

    def after_step(self, step: int) -> None:
        if self.hard_pruned:
            return
        if step >= max(1, self.schedule.end_step):
            self.finalize()
        elif self.schedule.due(step):
            self.shrink(step)

    def finalize(self) -> None:
        if not self.hard_pruned:
            self.prune_by(self.magnitudes())
            self.hard_pruned = True

    def state_dict(self) -> dict:
        return {"hard_pruned": self.hard_pruned}

    def load_state_dict(self, state_dict: dict) -> None:
        self.hard_pruned = bool(state_dict.get("hard_pruned", False))

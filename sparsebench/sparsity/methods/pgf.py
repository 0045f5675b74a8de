"""Progressive gradient flow for N:M sparsity: decaying (MDGF) and structure-decaying (SDGF)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.methods.nm import _SRSTEMask
from sparsebench.sparsity.patterns import NM
from sparsebench.sparsity.schedules import Schedule

DECAYS = ("linear", "exponential", "stepwise", "geometric")


class DecayingMask(nn.Module):
    """Parametrization W -> W * (E + (1 - E) * beta), E the N:M mask of |W| (recomputed each call).

    With ``beta`` > 0 masked weights still act (and get gradient scaled by beta); with
    ``beta`` = 0 it is the straight-through N:M forward of SR-STE without the decay term.
    """

    def __init__(self, pattern: NM) -> None:
        super().__init__()
        self.pattern = pattern
        self.beta = 1.0
        self.identity = False  # after hardening: the stored weights are masked directly

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return weight
        mask = self.pattern.mask(weight.detach().abs())
        if self.beta > 0:
            return weight * (mask + (~mask) * self.beta)
        return _SRSTEMask.apply(weight, mask, 0.0)


class ProgressiveGradientFlow(SparsityMethod):
    """Bambhaniya et al., "Progressive Gradient Flow for Robust N:M Sparsity Training in
    Transformers", 2024.

    After an optional dense phase (until ``start``), until ``end`` (fractions of training):
    - MDGF (``decay=linear|exponential``): the forward uses W * (E + (1 - E) beta(t)) with
      beta = max(0, 1 - c t) or exp(-c t), t counted from the end of the dense phase;
    - SDGF (``decay=stepwise|geometric``): the pattern tightens in equal time frames, stepwise
      (M-1):M -> M/2:M -> N:M, or geometric 8N:8M -> 4N:4M -> 2N:2M -> N:M.
    From ``end`` on, the N:M mask is hard and fixed for fine-tuning.
    """

    sparse_from_start = True
    patterns = (NM,)

    def __init__(
        self,
        name: str = "pgf",
        pattern: str = "2:4",
        decay: str = "linear",
        rate: float = 2e-4,
        start: float = 0.0,
        end: float = 0.75,
        distribution: str = "uniform",
        **kwargs,
    ) -> None:
        super().__init__(name=name, pattern=pattern, distribution=distribution, **kwargs)
        if decay not in DECAYS:
            raise ConfigError(f"method.decay must be one of {', '.join(DECAYS)}, got '{decay}'.")
        if rate <= 0:
            raise ConfigError(f"method.rate must be > 0, got {rate}.")
        self.n, self.m = self.pattern.n, self.pattern.m
        self.decay, self.rate, self.end = decay, rate, end
        self.schedule = Schedule(start=start, end=end)  # dense until start, decaying until end
        self.hardened = False

    def stages(self) -> list[tuple[int, int]]:
        """SDGF's N:M patterns from loosest to the target."""
        n, m = self.n, self.m
        if self.decay == "stepwise":
            stages = [(m - 1, m), (m // 2, m), (n, m)]
        else:  # geometric
            stages = [(8 * n, 8 * m), (4 * n, 4 * m), (2 * n, 2 * m), (n, m)]
        unique = []
        for stage in stages:
            if stage not in unique and stage[0] >= n * stage[1] // m:
                unique.append(stage)
        return unique

    def phase(self, step: int) -> tuple[float, tuple[int, int]]:
        """(beta, (n, m)) at ``step``; beta = 1 means dense."""
        start, end = self.schedule.start_step, self.schedule.end_step
        if step < start:
            return 1.0, (self.n, self.m)
        t = step - start
        if self.decay == "linear":
            return max(0.0, 1.0 - self.rate * t), (self.n, self.m)
        if self.decay == "exponential":
            return math.exp(-self.rate * t), (self.n, self.m)
        stages = self.stages()
        frame = max(1, (end - start) // len(stages))
        return 0.0, stages[min(len(stages) - 1, t // frame)]

    def check_layers(self) -> None:
        for name, module in self.masks:
            for n, m in (
                self.stages() if self.decay in ("stepwise", "geometric") else [(self.n, self.m)]
            ):
                NM(n, m).check(name, module.weight.shape)

    def init_masks(self) -> None:
        self.check_layers()
        for _, module in self.masks:
            parametrize.register_parametrization(module, "weight", DecayingMask(NM(self.n, self.m)))

    def update_due(self, step: int) -> bool:
        return True  # beta or the pattern may change on every step

    def update(self, step: int) -> None:
        if not self.hardened and step >= self.schedule.end_step:
            self.harden()
        for _, module in self.masks:
            param = module.parametrizations.weight[0]
            if self.hardened:
                param.identity = True  # also after resuming from a hardened checkpoint
                continue
            beta, (n, m) = self.phase(step)
            param.beta = beta
            if (param.pattern.n, param.pattern.m) != (n, m):
                param.pattern = NM(n, m)

    @property
    def hard_masks(self) -> bool:
        return self.hardened  # before that the dense weights train

    def harden(self) -> None:
        """Fix the target N:M mask of the dense weights; fine-tuning keeps it."""
        for name, _ in self.masks:
            self.masks.set(name, self.pattern.mask(self.masks.weight(name).detach().abs()))
        self.hardened = True

    def finalize(self) -> None:
        """End of training: harden if not yet, and drop the parametrization (weights stay)."""
        if not self.hardened:
            self.harden()
        for _, module in self.masks:
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

    def state_dict(self) -> dict:
        return {"hardened": self.hardened}

    def load_state_dict(self, state_dict: dict) -> None:
        self.hardened = bool(state_dict.get("hardened", False))

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # Dense-weight forward and backward until 'end', sparse fine-tuning after.
        return 3 * samples * (self.end * dense_flops + (1 - self.end) * sparse_flops)

"""HESSO-CRIC: HESSO whose redundant channels are found by the Corrective Redundant
Identification Cycle, as Only-Train-Once's ``hesso_cric.py`` does it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.groups import CRITERIA
from sparsebench.sparsity.methods.hesso import HESSO

TRIALS = (0.25, 0.5, 0.75)  # OTO's trial_group_sparsties


class HESSOCRIC(HESSO):
    """Chen et al. 2024 (HESSO, Only-Train-Once), with CRIC as ``only_train_once/optimizer/
    hesso_cric.py`` runs it around the run's optimizer (OTO's step counter n = steps taken + 1;
    its saliency: five criteria on the optimizer's direction, ``sparsebench.sparsity.groups``):

    1. Until ``start`` (a fraction of training) everything trains. At n = start the loss and
       all parameters are saved (the reference point).
    2. Trial projections, 2 steps each, for every group and trial sparsity 0.25 / 0.5 / 0.75:
       the group's lowest-saliency fraction is set to zero (no update on that step), the next
       step's loss over the reference is recorded and all parameters are reset.
    3. Sampling cycles of ``sampling_steps`` steps (at most ``max_cycles``): at a cycle's start
       the parameters are reset; the first cycle's violating set is the K lowest-saliency
       channels of the network, a later one's the channels that entered the K lowest during
       the cycle before and were never violating. Only the groups train; violating channels
       are zeroed and shrink back over the cycle. The search stops when a cycle's violating
       set has ``tolerance`` channels or fewer (or after ``max_cycles``).
    4. The redundant channels: the K lowest of the saliency averaged over every step of 2-3
       plus each group's mean trial-loss ratio over its size (weight 1, OTO's ``loss``).
       Parameters are reset once more, and these channels are projected onto zero over
       ``hybrid`` (a fraction of training) while everything trains, then masked.

    Everything trained in 2-3 is discarded (OTO's resets); the optimizer's state is kept.
    A run that ends before the search stops takes the redundant channels as 4 would, then.
    """

    def __init__(
        self,
        name: str = "hesso_cric",
        sparsity: float = 0.5,
        start: float = 0.1,
        sampling_steps: int = 10,
        max_cycles: int = 10,
        tolerance: int = 0,
        hybrid: float = 0.1,
        loss_weight: float = 1.0,
        group_divisible: int = 1,
        criteria: Mapping[str, float] = CRITERIA,
        pattern: str = "channel",
        dense_stem: bool = False,
        dense_head: bool = True,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(
            name=name,
            sparsity=sparsity,
            start=start,
            end=1.0,  # (HESSO's periods are not used: the search decides when)
            group_divisible=group_divisible,
            criteria=criteria,
            pattern=pattern,
            dense_stem=dense_stem,
            dense_head=dense_head,
            include=include,
            exclude=exclude,
            seed=seed,
        )
        if int(sampling_steps) < 1 or int(max_cycles) < 1 or int(tolerance) < 0:
            raise ConfigError(
                "method.sampling_steps and method.max_cycles must be >= 1 and method.tolerance "
                f">= 0, got {sampling_steps}, {max_cycles} and {tolerance}."
            )
        if not 0 < hybrid < 1:
            raise ConfigError(f"method.hybrid must be in (0, 1), got {hybrid}.")
        self.sampling, self.max_cycles = int(sampling_steps), int(max_cycles)
        self.tolerance, self.hybrid, self.loss_weight = int(tolerance), hybrid, loss_weight
        self.cycle = -1  # OTO's curr_cycle_period
        self.terminated_at: int | None = None
        self.loss = math.nan
        self.ref_loss = math.nan
        self.cache: list[torch.Tensor] = []  # every trained parameter at the reference point
        self.before: list[torch.Tensor] = []  # ... before this step's optimizer update
        self.trained: list[nn.Parameter] = []
        self.current: list[torch.Tensor] = []  # this step's saliency, per group
        self.totals: list[torch.Tensor] = []  # saliency summed over the sampled steps
        self.counted = 0
        self.trial_losses: list[list[float]] = []
        self.violating: list[torch.Tensor] = []  # OTO's active / trial / historical sets
        self.trial: list[torch.Tensor] = []
        self.historical: list[torch.Tensor] = []

    def select(self, model: nn.Module, example: torch.Tensor | None = None) -> dict[str, nn.Module]:
        chosen = super().select(model, example)
        self.trained = [p for p in model.parameters() if p.requires_grad]
        empty = [torch.zeros(g.size, dtype=torch.bool) for g in self.groups]
        self.violating, self.trial, self.historical = ([e.clone() for e in empty] for _ in range(3))
        self.totals = [torch.zeros(g.size) for g in self.groups]
        self.trial_losses = [[] for _ in self.groups]
        start, sampling = self.begin, self.sampling_start
        if sampling + self.sampling + self.hybrid_steps > self.schedule.total_steps:
            raise ConfigError(
                f"method '{self.name}' needs {sampling - start} trial steps ({len(self.groups)} "
                f"groups x 6), a {self.sampling}-step sampling cycle and {self.hybrid_steps} "
                f"hybrid steps after step {start}, more than the run's "
                f"{self.schedule.total_steps}; train longer or lower method.start."
            )
        return chosen

    # -- the phases ---------------------------------------------------------------------------
    @property
    def begin(self) -> int:
        """OTO's start_cric_step: the step counter starts at 1, and so does the search."""
        return max(1, self.schedule.start_step)

    @property
    def sampling_start(self) -> int:
        """OTO's start_global_sampling_step: after 2 x 3 trial steps per group."""
        return self.begin + 2 * len(TRIALS) * len(self.groups)

    @property
    def hybrid_steps(self) -> int:
        return max(1, round(self.hybrid * self.schedule.total_steps))

    def observe_loss(self, step: int, loss: torch.Tensor) -> None:
        self.loss = float(loss)

    @torch.no_grad()
    def after_backward(self, step: int) -> None:
        n, start = step + 1, self.begin
        if n == start:
            self.ref_loss, self.cache = self.loss, self.snapshot()
            self.cycle = 0
        if n < start or self.terminated_at is not None:
            return
        self.before = self.snapshot()
        if n < self.sampling_start or self.cycle < self.max_cycles:
            self.current = self.scores()  # OTO's commit_important_scores, every step
            for total, score in zip(self.totals, self.current, strict=True):
                total += score
            self.counted += 1

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        n, start = step, self.begin
        if self.terminated_at is not None:
            return self.hybrid_step(n)
        if n < start:
            return None
        if n < self.sampling_start:
            self.trial_step(n - start)
        elif self.cycle < self.max_cycles:
            self.cric_step(n)
        if self.cycle >= self.max_cycles or (
            self.cycle >= 1 and sum(int(v.sum()) for v in self.violating) <= self.tolerance
        ):
            self.terminate(n)
        return None

    def trial_step(self, k: int) -> None:
        """OTO's proj_step k: no update; project a group at a trial sparsity, or record the
        loss at the projected point and reset."""
        self.restore(self.before)
        g = k // (2 * len(TRIALS))
        if k % 2 == 0:
            trial = TRIALS[k // 2 % len(TRIALS)]
            size = self.groups[g].size
            count = max(min(int(size * trial), size), 1)
            rows = torch.topk(-self.current[g], count).indices
            for p in self.groups[g].params:
                p[rows] = 0
        else:
            self.trial_losses[g].append(self.loss / self.ref_loss)
            self.restore(self.cache)

    def cric_step(self, n: int) -> None:
        """OTO's cric_step: the groups' update from the (maybe reset) point, violating channels
        shrunk; the rest of the network does not move."""
        moved = [p - b for p, b in zip(self.trained, self.before, strict=True)]
        base = self.before
        if (n - self.sampling_start) % self.sampling == 0:
            self.cycle += 1
            self.update_violating()
            base = self.cache
        self.restore(base)
        lowest = self.lowest(torch.cat(self.current))
        for g in range(len(self.groups)):
            self.trial[g] |= lowest[g]
            self.trial[g] &= ~self.violating[g] & ~self.historical[g]
        t = (n - self.sampling_start - 1) % self.sampling
        factor = (self.sampling - t - 1.0) / (self.sampling - t)
        index = {id(p): i for i, p in enumerate(self.trained)}
        for group, violating in zip(self.groups, self.violating, strict=True):
            for p in group.params:
                p += moved[index[id(p)]]
                if violating.any():
                    p[violating] *= factor

    def update_violating(self) -> None:
        if self.cycle == 1:
            self.violating = self.lowest(torch.cat(self.current))
        else:
            self.violating = [t & ~h for t, h in zip(self.trial, self.historical, strict=True)]
        self.historical = [h | v for h, v in zip(self.historical, self.violating, strict=True)]

    def lowest(self, scores: torch.Tensor) -> list[torch.Tensor]:
        """Per group, which of its channels are among the network's K lowest ``scores``."""
        flat = torch.zeros(scores.numel(), dtype=torch.bool)
        flat[torch.topk(-scores, self.target).indices] = True
        return list(flat.split([g.size for g in self.groups]))

    def terminate(self, n: int, reset: bool = True) -> None:
        """OTO's compute_accumulate_saliency_score and identify_redundant_groups."""
        scores = []
        for g, group in enumerate(self.groups):
            score = self.totals[g] / max(1, self.counted)
            losses = self.trial_losses[g]
            if losses:
                score = score + self.loss_weight * (sum(losses) / len(losses) / group.size)
            scores.append(score)
        self.identify(torch.cat(scores), self.target)
        if reset and self.cache:
            self.restore(self.cache)
        self.terminated_at = n
        self.cache, self.before = [], []

    def hybrid_step(self, n: int) -> None:
        t, length = n - self.terminated_at - 1, self.hybrid_steps
        if t >= length:
            return
        factor = (length - t - 1.0) / (length - t)
        for group, active in zip(self.groups, self.active, strict=True):
            if active.any():
                for p in group.params:
                    p[active] *= factor
        if t == length - 1:
            self.commit()

    # -- parameters ------------------------------------------------------------------------------
    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.trained]

    def restore(self, values: list[torch.Tensor]) -> None:
        for p, v in zip(self.trained, values, strict=True):
            p.copy_(v)

    @torch.no_grad()
    def finalize(self) -> None:
        if self.terminated_at is None:  # the search had not stopped: decide with what it has
            self.terminate(self.schedule.total_steps, reset=False)
        super().finalize()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(
            cycle=self.cycle,
            terminated_at=self.terminated_at,
            ref_loss=self.ref_loss,
            cache=[c.clone() for c in self.cache],
            totals=[t.clone() for t in self.totals],
            counted=self.counted,
            trial_losses=[list(x) for x in self.trial_losses],
            violating=[v.clone() for v in self.violating],
            trial=[t.clone() for t in self.trial],
            historical=[h.clone() for h in self.historical],
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "cycle" in state:
            self.cycle, self.terminated_at = int(state["cycle"]), state["terminated_at"]
            self.ref_loss, self.counted = float(state["ref_loss"]), int(state["counted"])
            self.cache = [c.clone() for c in state["cache"]]
            self.totals = [t.clone() for t in state["totals"]]
            self.trial_losses = [list(x) for x in state["trial_losses"]]
            self.violating = [v.clone() for v in state["violating"]]
            self.trial = [t.clone() for t in state["trial"]]
            self.historical = [h.clone() for h in state["historical"]]

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # The full network trains until the hybrid stage ends, the slim one after it.
        total = max(1, self.schedule.total_steps)
        ended = (self.terminated_at or total) + self.hybrid_steps
        slim = max(0, total - ended) / total
        return 3 * samples * (dense_flops - (dense_flops - sparse_flops) * slim)

"""HESSO: structured pruning by a hybrid optimizer that projects redundant groups onto zero."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from sparsebench.errors import ConfigError
from sparsebench.sparsity.groups import (
    CRITERIA,
    ChannelGroup,
    channel_groups,
    criteria,
    direction,
    remove_channels,
    saliency,
)
from sparsebench.sparsity.masks import MaskSet
from sparsebench.sparsity.methods.base import SparsityMethod
from sparsebench.sparsity.patterns import Channel
from sparsebench.sparsity.prunable import prunable_layers
from sparsebench.sparsity.schedules import Schedule

log = logging.getLogger(__name__)


class HESSO(SparsityMethod):
    """Chen et al. 2024, "HESSO: Towards Automatic Efficient and User Friendly Any Neural
    Network Training and Pruning" (Only-Train-Once), as ``only_train_once/optimizer/hesso.py``
    does it, on the run's own optimizer (SGD, Adam or AdamW):

    - Groups: every channel group of the network (``sparsebench.sparsity.groups``), residual
      streams included; a group of ``group_divisible`` channels or fewer is not pruned.
    - Budget: K = floor(sparsity x all channels) channels over the whole network, K / periods
      per period (the remainder in the last), so layers lose different fractions.
    - Steps (OTO's counter n = steps taken + 1): from ``start`` (a fraction of training) for
      ``end - start`` of it in ``periods`` periods of D steps; a period starts when
      (n - start - 1) mod D = 0: saliency (OTO's five criteria on the optimizer's direction,
      normalised over all channels) picks the period's channels globally (OTO's own rule: the
      lowest-scored K_so_far + K_period, minus those already taken, the lowest indices first),
      each group keeping at least ``group_divisible`` channels.
    - Projection: the chosen channels train on and after each step are scaled by
      (D - t - 1) / (D - t), t = (n - start) mod D, so they are exactly zero at t = D - 1,
      then masked for good. There is no fine-tuning stage.

    The result is physically smaller (``deployed_model``: Torch-Pruning removes the zero
    channels, consumers' inputs included) and ``flops/sparse`` is that network's FLOPs.
    """

    kind = "structured"
    patterns = (Channel,)
    optimizers = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW")

    def __init__(
        self,
        name: str = "hesso",
        sparsity: float = 0.5,
        start: float = 0.1,
        end: float = 0.2,
        periods: int = 10,
        group_divisible: int = 1,
        criteria: Mapping[str, float] = CRITERIA,
        pattern: str = "channel",
        distribution: str = "global",
        dense_stem: bool = False,
        dense_head: bool = True,
        **kwargs,
    ) -> None:
        if distribution != "global":
            raise ConfigError(
                f"method '{name}' chooses channels over the whole network (OTO's global "
                f"selection): method.distribution must be global, got '{distribution}'."
            )
        if not dense_head:
            raise ConfigError(
                f"method '{name}' never removes the classifier's outputs (the classes): "
                "method.dense_head must be true."
            )
        super().__init__(
            name=name,
            sparsity=sparsity,
            pattern=pattern,
            distribution=distribution,
            dense_stem=dense_stem,
            **kwargs,
        )
        if int(periods) < 1 or int(group_divisible) < 1:
            raise ConfigError(
                f"method.periods and method.group_divisible must be >= 1, got {periods} and "
                f"{group_divisible}."
            )
        unknown = sorted(set(criteria) - set(CRITERIA))
        if unknown:
            raise ConfigError(
                f"method.criteria has unknown criteria {unknown}; allowed: {', '.join(CRITERIA)}."
            )
        self.schedule = Schedule(start=start, end=end)
        self.start, self.end, self.periods = start, end, int(periods)
        self.group_divisible, self.weights = int(group_divisible), dict(criteria)
        self.groups: list[ChannelGroup] = []
        self.example: torch.Tensor | None = None
        self.pruned: list[torch.Tensor] = []  # per group: channels zero for good
        self.active: list[torch.Tensor] = []  # per group: channels being projected now
        self.taken: list[int] = []  # OTO's pruned_group_idxes (global channel indices)
        self.period = 0  # periods started
        self.target = 0  # OTO's target_num_redundant_groups
        self.per_period: list[int] = []

    # -- groups ---------------------------------------------------------------------------------
    def select(self, model: nn.Module, example: torch.Tensor | None = None) -> dict[str, nn.Module]:
        if example is None:
            raise ConfigError(f"method '{self.name}' needs an example input to trace the model.")
        self.example = example
        candidates = prunable_layers(model, **self.layer_options)
        groups = [
            g for g in channel_groups(model, example, candidates) if g.size > self.group_divisible
        ]
        self.groups = self.runnable(model, groups)
        if not self.groups:
            raise ConfigError(f"method '{self.name}' found no channel group it can remove.")
        self.pruned = [torch.zeros(g.size, dtype=torch.bool) for g in self.groups]
        self.active = [torch.zeros(g.size, dtype=torch.bool) for g in self.groups]
        total = sum(g.size for g in self.groups)
        self.target = int(total * min(self.sparsity, 0.999))
        share = self.target // self.periods
        self.per_period = [share] * (self.periods - 1) + [self.target - share * (self.periods - 1)]
        return {name: model.get_submodule(name) for g in self.groups for name in g.layers}

    def runnable(self, model: nn.Module, groups: list[ChannelGroup]) -> list[ChannelGroup]:
        """The groups whose removal leaves a network that still runs (one channel of each
        removed from a copy, all at once, one group at a time if that fails). A group whose
        channels are reshaped by a count (attention's qkv into heads) stays dense, said once."""

        def runs(chosen: list[ChannelGroup]) -> str | None:
            probe = copy.deepcopy(model).eval()
            keep = [torch.arange(g.size) != 0 for g in chosen]
            try:
                remove_channels(probe, self.example, chosen, keep)
                with torch.no_grad():
                    probe(self.example)
            except Exception as exc:  # noqa: BLE001 (any failure means: not removable)
                return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None

        if runs(groups) is None:
            return groups
        problems = [runs([g]) for g in groups]
        broken = [
            g.layers[0] for g, problem in zip(groups, problems, strict=True) if problem is not None
        ]
        log.warning(
            "method '%s': %d channel group(s) stay dense (rooted at %s): removing their channels "
            "breaks the network (%s).",
            self.name,
            len(broken),
            ", ".join(broken),
            next(p for p in problems if p is not None),
        )
        return [g for g, problem in zip(groups, problems, strict=True) if problem is None]

    def kept(self) -> list[torch.Tensor]:
        return [~p for p in self.pruned]

    @property
    def channel_sparsity(self) -> float:
        """The fraction of the groups' channels removed (``sparsity`` asks for this one)."""
        return sum(int(p.sum()) for p in self.pruned) / sum(g.size for g in self.groups)

    # -- OTO's step, around the run's optimizer ---------------------------------------------------
    @property
    def span(self) -> tuple[int, int]:
        """(start step, D: steps per period), OTO's start_pruning_step and period duration."""
        start = self.schedule.start_step
        steps = max(self.periods, max(1, self.schedule.end_step) - start)
        return start, steps // self.periods

    def scores(self) -> list[torch.Tensor]:
        """Each group's channel saliency now (the optimizer's direction from this gradient)."""
        raw = [criteria(g, [direction(self.optimizer, p) for p in g.params]) for g in self.groups]
        return saliency(raw, self.weights)

    def update_due(self, step: int) -> bool:
        return False  # channels are chosen in after_backward, where this step's gradient is

    def after_backward(self, step: int) -> None:
        n, (start, length) = step + 1, self.span
        if n >= start and self.period < self.periods and (n - start - 1) % length == 0:
            self.commit()
            self.identify(torch.cat(self.scores()), self.per_period[self.period])
            self.period += 1

    @torch.no_grad()
    def identify(self, scores: torch.Tensor, count: int) -> None:
        """OTO's identify_redundant_groups: ``count`` more channels from the lowest-scored."""
        top = torch.topk(-scores, min(len(self.taken) + count, scores.numel())).indices.numpy()
        new = np.setdiff1d(top, self.taken)[:count]
        self.taken.extend(int(i) for i in new)
        offset = 0
        for g, group in enumerate(self.groups):
            local = new[(new >= offset) & (new < offset + group.size)] - offset
            offset += group.size
            pruned = int(self.pruned[g].sum())
            trial = group.size - pruned - len(local)  # channels this group would keep
            if trial % self.group_divisible != 0 or trial <= 0:  # keep a multiple, at least one
                ratio = trial // self.group_divisible + 1
                keep = (
                    max(self.group_divisible, 1)
                    if ratio <= 1 or trial == 0
                    else max(ratio * self.group_divisible, self.group_divisible)
                )
                allowed = group.size - pruned - min(group.size, keep)
                self.target += allowed - len(local)
                local = local[:allowed]
            self.active[g][torch.as_tensor(local, dtype=torch.long)] = True

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        n, (start, length) = step, self.span
        t = (n - start) % length
        factor = (length - t - 1.0) / (length - t)
        for group, active in zip(self.groups, self.active, strict=True):
            if active.any():
                for p in group.params:
                    p[active] *= factor
        if n >= start and t == length - 1:
            self.commit()

    def commit(self) -> None:
        """The channels being projected are zero: mask them for good."""
        if not any(a.any() for a in self.active):
            return
        for g, group in enumerate(self.groups):
            self.pruned[g] |= self.active[g]
            self.active[g] = torch.zeros_like(self.active[g])
            for name in group.layers:
                weight = self.masks.layers[name].weight
                keep = ~self.pruned[g]
                self.masks.set(
                    name, keep.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
                )
        self.apply()

    # -- what masking means: a channel's bias and norms are zero too -------------------------------
    @torch.no_grad()
    def zero_channels(self, grads: bool = False) -> None:
        for group, pruned in zip(self.groups, self.pruned, strict=True):
            if pruned.any():
                for p in group.params:
                    target = p.grad if grads else p
                    if target is not None:
                        target[pruned] = 0

    def mask_grads(self) -> None:
        super().mask_grads()
        self.zero_channels(grads=True)

    def apply(self) -> None:
        super().apply()
        self.zero_channels()

    @torch.no_grad()
    def finalize(self) -> None:
        """A run that ended inside a period: its channels go to zero now."""
        for group, active in zip(self.groups, self.active, strict=True):
            for p in group.params:
                p[active] = 0
        self.commit()

    def deployed_model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with the pruned channels physically removed."""
        slim = copy.deepcopy(model).eval()
        MaskSet.detach(slim)  # Torch-Pruning reshapes parameters, not our mask buffers
        remove_channels(slim, self.example, self.groups, self.kept())
        return slim

    # -- resume and accounting ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "pruned": [p.clone() for p in self.pruned],
            "active": [a.clone() for a in self.active],
            "taken": list(self.taken),
            "period": self.period,
            "target": self.target,
        }

    def load_state_dict(self, state: dict) -> None:
        if "pruned" in state:
            self.pruned = [p.clone() for p in state["pruned"]]
            self.active = [a.clone() for a in state["active"]]
            self.taken = [int(i) for i in state["taken"]]
            self.period, self.target = int(state["period"]), int(state["target"])

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # The full network trains; each period's channels stop costing at its end.
        total = max(1, self.schedule.total_steps)
        start, length = self.span
        done = [
            min(self.periods, max(0, (t - start + 1) // length)) / self.periods
            for t in range(total)
        ]
        mean = sum(done) / total
        return 3 * samples * (dense_flops - (dense_flops - sparse_flops) * mean)

"""HESSO: structured pruning by a hybrid optimizer that projects redundant groups onto zero."""

from __future__ import annotations

import torch

from sparsebench.errors import ConfigError
from sparsebench.sparsity.methods.channel import ChannelPruning


class HESSO(ChannelPruning):
    """Chen et al. 2024, "HESSO: Towards Automatic Efficient and User Friendly Any Neural Network
    Training and Pruning" (Only-Train-Once series), on the removal groups of ``channel``: each
    output channel of a layer whose channels can be removed alone (Torch-Pruning's dependency
    graph) is a group of its filter, conv bias and following BatchNorm's weight and bias.

    - Warm-up: until ``start`` (a fraction of training) the optimizer trains everything.
    - ``periods`` pruning periods between ``start`` and ``end``: at the first step of period p
      each layer picks, among its groups not yet redundant, the lowest-saliency ones so that
      ``sparsity * (p + 1) / periods`` of its channels are redundant (at least one is kept).
      Saliency (our reading of the paper's several criteria): the group's L2 norm and its
      first-order Taylor score |sum g * x|, each divided by the layer's largest, averaged.
    - Within the period the redundant groups get no gradient and are projected onto zero
      linearly: after each optimizer step x <- x * r / (r + 1), r steps being left, so they are
      exactly zero at the period's end and stay zero (masked) from then on. The other groups
      train with the run's optimizer throughout; there is no fine-tuning stage.
    - CRIC (``cric=true``), the Corrective Redundant Identification Cycle, as we read it: for
      the first ``cric_cycles`` steps of a period the candidates are held at zero, and at each
      step the gradient at that projected point is read; a candidate whose restoring would
      lower the loss (first order: g . x < 0) by more than the median |g . x| of the layer's
      kept groups is marked indispensable, restored, and replaced by the next-lowest-saliency
      group. The survivors then shrink from their saved values over the rest of the period.

    The result is physically smaller (``deployed_model``: the zero groups removed by
    Torch-Pruning) and ``flops/sparse`` is that network's FLOPs, as for ``channel``.
    """

    def __init__(
        self,
        name: str = "hesso",
        sparsity: float = 0.5,
        start: float = 0.1,
        end: float = 0.7,
        periods: int = 5,
        cric: bool = False,
        cric_cycles: int = 3,
        **kwargs,
    ) -> None:
        super().__init__(name=name, sparsity=sparsity, start=start, end=end, **kwargs)
        if int(periods) < 1 or int(cric_cycles) < 1:
            raise ConfigError(
                f"method.periods and method.cric_cycles must be >= 1, got {periods} and {cric_cycles}."
            )
        self.periods, self.cric, self.cric_cycles = int(periods), bool(cric), int(cric_cycles)
        # Per layer: rows redundant in the current period (shrinking), their saved values while
        # CRIC holds them at zero, and rows CRIC found indispensable.
        self.shrinking: dict[str, torch.Tensor] = {}
        self.saved: dict[str, torch.Tensor] = {}
        self.protected: dict[str, torch.Tensor] = {}
        self.cycles_left = 0
        self.period = 0  # the current (or last) pruning period

    # -- the schedule ---------------------------------------------------------------------------
    def period_of(self, step: int) -> tuple[int, int, int] | None:
        """(period, first step, end step) of the period ``step`` is in, or None."""
        start, end = (
            self.schedule.start_step,
            max(self.schedule.start_step + self.periods, self.schedule.end_step),
        )
        if not start <= step < end:
            return None
        length = (end - start) / self.periods
        p = min(self.periods - 1, int((step - start) / length))
        return p, start + round(p * length), start + round((p + 1) * length)

    def update_due(self, step: int) -> bool:
        return False  # selection happens in after_backward, where this step's gradient is

    # -- per-row quantities (rows and params: channel's groups) --------------------------------------
    def per_row(self, name: str, values: list[torch.Tensor]) -> torch.Tensor:
        rows = self.masks.layers[name].weight.shape[0]
        return torch.stack([v.reshape(rows, -1).sum(1) for v in values]).sum(0)

    def saliency(self, name: str) -> torch.Tensor:
        params = self.params(name)
        norm = self.per_row(name, [p.detach() ** 2 for p in params]).sqrt()
        taylor = self.first_order(name).abs()
        scale = lambda v: v / v.max() if v.max() > 0 else v  # noqa: E731
        return (scale(norm) + scale(taylor)) / 2

    def first_order(self, name: str, values: torch.Tensor | None = None) -> torch.Tensor:
        """g . x per row (``values``: saved row values instead of the current ones)."""
        params = self.params(name)
        current = [p.detach() for p in params]
        if values is not None:
            current = self.unflatten(name, values)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        return self.per_row(name, [g * x for g, x in zip(grads, current, strict=True)])

    def flatten(self, name: str) -> torch.Tensor:
        rows = self.masks.layers[name].weight.shape[0]
        return torch.cat([p.detach().reshape(rows, -1) for p in self.params(name)], dim=1).clone()

    def unflatten(self, name: str, flat: torch.Tensor) -> list[torch.Tensor]:
        out, col = [], 0
        for p in self.params(name):
            width = p[0].numel() if p.dim() > 1 else 1
            out.append(flat[:, col : col + width].reshape(p.shape))
            col += width
        return out

    @torch.no_grad()
    def set_rows(self, name: str, rows: torch.Tensor, flat: torch.Tensor) -> None:
        for p, value in zip(self.params(name), self.unflatten(name, flat), strict=True):
            p[rows] = value[rows]

    @torch.no_grad()
    def zero_rows(self, name: str, rows: torch.Tensor) -> None:
        for p in self.params(name):
            p[rows] = 0

    # -- the hybrid optimizer -----------------------------------------------------------------------
    def select(self, model, example=None):
        chosen = super().select(model, example)
        self.protected = {
            n: torch.zeros(m.weight.shape[0], dtype=torch.bool) for n, m in chosen.items()
        }
        return chosen

    def choose(self, name: str, period: int, exclude: torch.Tensor) -> torch.Tensor:
        """Rows to make redundant now: the lowest-saliency kept rows not excluded, enough for
        the period's share of the layer."""
        kept = self.rows(name)
        total = kept.numel()
        target = min(total - 1, round(self.sparsity * total * (period + 1) / self.periods))
        removed = int((~kept).sum()) + int(self.shrinking.get(name, torch.zeros_like(kept)).sum())
        need = max(0, target - removed)
        free = kept & ~exclude & ~self.shrinking.get(name, torch.zeros_like(kept))
        score = torch.where(free, self.saliency(name), torch.inf)
        pick = torch.zeros_like(kept)
        if need:
            pick[torch.topk(score, min(need, int(free.sum())), largest=False).indices] = True
        return pick

    @torch.no_grad()
    def after_backward(self, step: int) -> None:
        period = self.period_of(step)
        if period is None:
            return
        p, first, end = period
        if step == first:
            self.period = p
            for name, _ in self.masks:
                self.shrinking[name] = self.choose(name, p, self.protected[name])
            if self.cric:
                self.cycles_left = min(self.cric_cycles, end - first - 1)  # leave a step to shrink
                for name, _ in self.masks:  # hold the candidates at zero, saving their values
                    self.saved[name] = self.flatten(name)
                    self.zero_rows(name, self.shrinking[name])
            return
        if self.cycles_left > 0:
            self.correct()

    @torch.no_grad()
    def correct(self) -> None:
        """One CRIC cycle at the projected point: restore the violating candidates, replace them."""
        self.cycles_left -= 1
        for name, _ in self.masks:
            candidates = self.shrinking[name]
            if not candidates.any():
                continue
            restore_gain = self.first_order(name, self.saved[name])  # loss(x) - loss(0) ~ g . x
            kept = self.rows(name) & ~candidates
            typical = (
                self.first_order(name)[kept].abs().median() if kept.any() else torch.tensor(0.0)
            )
            violating = candidates & (restore_gain < -typical)
            if violating.any():
                self.protected[name] |= violating
                self.set_rows(name, violating, self.saved[name])
                self.shrinking[name] = candidates & ~violating
                more = self.choose(name, self.period, self.protected[name])
                self.saved[name] = torch.where(more[:, None], self.flatten(name), self.saved[name])
                self.zero_rows(name, more)
                self.shrinking[name] |= more
        if self.cycles_left == 0:  # the survivors shrink from their saved values from now on
            for name, _ in self.masks:
                self.set_rows(name, self.shrinking[name], self.saved[name])
            self.saved = {}

    def mask_grads(self) -> None:
        super().mask_grads()
        for name, rows in self.shrinking.items():  # redundant groups get no gradient
            for p in self.params(name):
                if p.grad is not None:
                    p.grad[rows] = 0

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        period = self.period_of(step - 1)  # the step just taken
        if period is None or not self.shrinking:
            return
        _, _, end = period
        if self.cycles_left > 0 and end - step > 0:  # CRIC holds the candidates at zero
            for name, rows in self.shrinking.items():
                self.zero_rows(name, rows)
            return
        left = end - step
        for name, rows in self.shrinking.items():
            factor = left / (left + 1) if left > 0 else 0.0
            for p in self.params(name):
                p[rows] *= factor
        if left <= 0:
            self.retire()

    def retire(self) -> None:
        """The period's redundant groups are zero: mask them for good."""
        for name, rows in self.shrinking.items():
            module = self.masks.layers[name]
            keep = self.rows(name) & ~rows
            self.masks.set(
                name,
                keep.view(-1, *([1] * (module.weight.dim() - 1))).expand_as(module.weight).clone(),
            )
        self.shrinking = {}
        self.apply()

    def finalize(self) -> None:
        if self.shrinking:  # a run that ended inside a period: its groups go to zero now
            for name, rows in self.shrinking.items():
                self.zero_rows(name, rows)
            self.retire()

    def update(self, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {
            "shrinking": {k: v.clone() for k, v in self.shrinking.items()},
            "protected": {k: v.clone() for k, v in self.protected.items()},
            "saved": {k: v.clone() for k, v in self.saved.items()},
            "cycles_left": self.cycles_left,
            "period": self.period,
        }

    def load_state_dict(self, state: dict) -> None:
        self.shrinking = dict(state.get("shrinking", {}))
        self.protected.update(state.get("protected", {}))
        self.saved = dict(state.get("saved", {}))
        self.cycles_left = int(state.get("cycles_left", 0))
        self.period = int(state.get("period", 0))

    def train_flops(self, dense_flops: float, sparse_flops: float, samples: int) -> float:
        # The full network trains; each period's groups stop costing at its end (as GMP's ramp).
        grid = 1000
        start, end = self.start * grid, max(self.end * grid, self.start * grid + self.periods)
        length = (end - start) / self.periods
        fraction = [
            min(self.periods, max(0, int((t - start) // length))) / self.periods
            for t in range(grid)
        ]
        mean = sum(fraction) / grid
        return 3 * samples * (dense_flops - (dense_flops - sparse_flops) * mean)

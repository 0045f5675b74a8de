"""Schedules: when masks change, and the target sparsity or drop fraction at each step.

One object, :class:`Schedule`, turns a method's ``start``/``end`` (fractions of training) and
update ``interval`` into steps once the run's length is known (:meth:`Schedule.bind`), as
jaxpruner's sparsity schedules do (google/jaxpruner, ``sparsity_schedules.py``):

- :meth:`Schedule.due`: the mask-update steps start, start + interval, ... before end;
- :meth:`Schedule.cubic` (Zhu & Gupta, "To prune, or not to prune", 2017):
  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3, constant between update steps;
- :meth:`Schedule.cosine` (Evci et al., RigL, 2020): alpha_t = alpha/2 * (1 + cos(pi t / T_end));
- :func:`imp_density` (Frankle & Carbin 2019; open_lth): 0.8^L after L levels at 20% per level.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sparsebench.errors import ConfigError


def check_fraction(
    name: str, value: float, low: float = 0.0, high: float = 1.0, high_open: bool = True
) -> None:
    """``method.NAME`` within [low, high) (``high_open``) or [low, high], else one sentence."""
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"method.{name} must be in [{low}, {high}{bracket}, got {value}.")


@dataclass(frozen=True)
class Schedule:
    """Update steps from ``start`` to ``end`` (fractions of training) every ``interval`` steps.

    Every scheduled method speaks this one vocabulary, its options named ``method.start``,
    ``method.end`` and ``method.update_interval`` (jaxpruner's ``update_start_step``,
    ``update_end_step`` and ``update_freq``), and is checked here, once: start in [0, 1), end
    in [0, 1] and after start, interval >= 1. ``start_option``: the option a method's start is
    set by (None: the method has none and starts at 0; magnitude pruning's ``prune_at``).

    ``total_steps`` is 0 until :meth:`bind` gives it the run's length in optimizer steps; then
    :attr:`start_step` and :attr:`end_step` are steps. ``shrink``: in runs too short for the
    interval, at least four updates fit between start and end (gradual pruning).
    """

    start: float = 0.0
    end: float = 1.0
    interval: int = 1
    total_steps: int = 0
    shrink: bool = False
    start_option: str | None = "start"

    def __post_init__(self) -> None:
        check_fraction(self.start_option or "start", self.start)
        check_fraction("end", self.end, high_open=False)
        if self.end <= self.start:
            after = f"method.{self.start_option}" if self.start_option else f"{self.start}"
            raise ConfigError(
                f"method.end must be after {after}, got "
                f"{self.start_option or 'start'}={self.start}, end={self.end}."
            )
        if self.interval < 1:
            raise ConfigError(f"method.update_interval must be >= 1, got {self.interval}.")

    def bind(self, total_steps: int) -> Schedule:
        return dataclasses.replace(self, total_steps=max(1, int(total_steps)))

    @property
    def start_step(self) -> int:
        return int(self.start * self.total_steps)

    @property
    def end_step(self) -> int:
        return int(self.end * self.total_steps)

    @property
    def step_interval(self) -> int:
        if not self.shrink:
            return self.interval
        span = max(1, self.end_step) - self.start_step
        return max(1, min(self.interval, span // 4 or 1))

    def due(self, step: int) -> bool:
        """True on steps start, start + interval, ... before end (the mask-update steps)."""
        start = self.start_step
        return start <= step < self.end_step and (step - start) % self.step_interval == 0

    def cubic(self, step: int, final: float, initial: float = 0.0) -> float:
        """Gradual magnitude pruning's target at ``step``; constant between update steps."""
        return cubic_sparsity(
            step, final, self.start_step, max(1, self.end_step), self.step_interval, initial
        )

    def cosine(self, step: int, alpha: float) -> float:
        """Fraction of active weights to drop at ``step``; 0 from the end step on."""
        end = self.end_step
        if step >= end:
            return 0.0
        return alpha / 2.0 * (1.0 + math.cos(math.pi * step / max(1, end)))


def cubic_sparsity(
    step: int,
    final: float,
    start_step: int,
    end_step: int,
    update_interval: int,
    initial: float = 0.0,
) -> float:
    """Gradual magnitude pruning target at ``step``; constant between update steps."""
    if step < start_step:
        return initial
    if step >= end_step:
        return final
    span = max(1, end_step - start_step)
    t = start_step + ((step - start_step) // update_interval) * update_interval  # last update step
    progress = min(1.0, (t - start_step) / span)
    return final + (initial - final) * (1.0 - progress) ** 3


def imp_density(level: int, rate: float = 0.2) -> float:
    """Density after ``level`` rounds that each prune ``rate`` of the remaining weights."""
    return (1.0 - rate) ** level

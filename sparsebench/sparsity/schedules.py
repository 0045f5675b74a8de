"""Schedules: target sparsity and drop fraction over training steps.

- :func:`cubic_sparsity` (Zhu & Gupta, "To prune, or not to prune", 2017):
  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 on the update steps t0, t0+dt, ...
- :func:`cosine_drop_fraction` (Evci et al., RigL, 2020): alpha_t = alpha/2 * (1 + cos(pi t / T_end)).
- :func:`imp_density` (Frankle & Carbin 2019; open_lth): 0.8^L after L levels at 20% per level.
"""

from __future__ import annotations

import math


def cubic_sparsity(step: int, final: float, start_step: int, end_step: int, update_interval: int,
                   initial: float = 0.0) -> float:  # fmt: skip
    """Gradual magnitude pruning target at ``step``; constant between update steps."""
    if step < start_step:
        return initial
    if step >= end_step:
        return final
    span = max(1, end_step - start_step)
    t = start_step + ((step - start_step) // update_interval) * update_interval  # last update step
    progress = min(1.0, (t - start_step) / span)
    return final + (initial - final) * (1.0 - progress) ** 3


def cosine_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """Fraction of active weights to drop at ``step``; 0 from ``end_step`` on."""
    if step >= end_step:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / max(1, end_step)))


def imp_density(level: int, rate: float = 0.2) -> float:
    """Density after ``level`` rounds that each prune ``rate`` of the remaining weights."""
    return (1.0 - rate) ** level


def update_due(step: int, start_step: int, end_step: int, interval: int) -> bool:
    """True on steps start, start+interval, ... before end (the mask-update steps)."""
    return start_step <= step < end_step and (step - start_step) % interval == 0

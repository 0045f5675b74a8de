"""Paired effects over seeds and the verdict they support.

Arms of a claim run with the same seeds, so seed ``i`` of arm A is paired with seed ``i`` of
arm B (same data split, same initialisation where the arms share a model) and the effect is the
mean of the paired differences ``A_i - B_i``, with a confidence interval from the t
distribution (``scipy.stats.ttest_rel``) or a BCa bootstrap (``scipy.stats.bootstrap``).

A claim says how A relates to B and names the smallest effect that counts, ``delta`` (>= 0):

============  ==========================  ======================  =======================
direction     the claim                   reproduced when         contradicted when
============  ==========================  ======================  =======================
greater       A beats B by at least delta  low > 0 and mean >= delta  high < delta
less          A is below B by delta        high < 0 and mean <= -delta  low > -delta
not_less      A at least matches B         low > -delta            high < -delta
not_greater   A is no better than B        high < delta            low > delta
============  ==========================  ======================  =======================

and inconclusive otherwise: the interval does not decide at this n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DIRECTIONS = ("greater", "less", "not_less", "not_greater")
METHODS = ("t", "bootstrap")
VERDICTS = ("reproduced", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Effect:
    """Mean paired difference A - B with its confidence interval over ``n`` pairs."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    method: str

    def interval(self) -> str:
        """``+0.0123 [+0.0050, +0.0196]`` (4 significant digits for large values: FLOPs)."""
        big = max(abs(self.low), abs(self.high)) >= 1000

        def num(x: float) -> str:
            return f"{x:+.4g}" if big else f"{x:+.4f}"

        return f"{num(self.mean)} [{num(self.low)}, {num(self.high)}]"

    def describe(self) -> str:
        return f"{self.interval()} ({self.confidence:.0%} CI, n={self.n})"


def paired_effect(
    a: list[float], b: list[float], confidence: float = 0.95, method: str = "t", seed: int = 0
) -> Effect:
    """The effect of A over B from paired samples (``a[i]`` with ``b[i]``)."""
    import numpy as np
    from scipy import stats

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two or more pairs, got {len(a)} and {len(b)} values")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(diff.mean())
    if float(diff.std()) == 0.0:  # identical differences: no spread to estimate
        return Effect(mean, mean, mean, len(diff), confidence, method)
    if method == "t":
        interval = stats.ttest_rel(a, b).confidence_interval(confidence)
    else:
        interval = stats.bootstrap(
            (diff,),
            np.mean,
            confidence_level=confidence,
            method="BCa",
            n_resamples=9999,
            rng=np.random.default_rng(seed),
        ).confidence_interval
    return Effect(mean, float(interval.low), float(interval.high), len(diff), confidence, method)


def verdict(effect: Effect, direction: str, delta: float) -> str:
    """``reproduced``, ``contradicted`` or ``inconclusive`` (the table above)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
    if delta < 0 or math.isnan(delta):
        raise ValueError(f"the smallest effect that counts must be >= 0, got {delta}")
    low, high, mean = effect.low, effect.high, effect.mean
    if direction == "greater":
        decided = (
            "reproduced" if low > 0 and mean >= delta else "contradicted" if high < delta else None
        )
    elif direction == "less":
        decided = (
            "reproduced"
            if high < 0 and mean <= -delta
            else "contradicted"
            if low > -delta
            else None
        )
    elif direction == "not_less":
        decided = "reproduced" if low > -delta else "contradicted" if high < -delta else None
    else:
        decided = "reproduced" if high < delta else "contradicted" if low > delta else None
    return decided or "inconclusive"

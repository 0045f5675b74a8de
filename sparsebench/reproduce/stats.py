"""Paired effects over seeds and the verdict they support.

Arms of a claim run with the same seeds, so seed ``i`` of arm A is paired with seed ``i`` of
arm B (same data split, same initialisation where the arms share a model) and the effect is the
mean of the paired differences ``A_i - B_i``, with a confidence interval from the t
distribution (``scipy.stats.ttest_rel``) or a BCa bootstrap (``scipy.stats.bootstrap``).

A claim says how A relates to B and names the smallest effect that counts, ``delta`` (>= 0),
which puts one threshold on the effect's axis; the verdict is read off the interval alone:

============  ==========================  =========  ====================  ==================
direction     the claim                   threshold  reproduced when       contradicted when
============  ==========================  =========  ====================  ==================
greater       A beats B by more than delta  +delta   low > +delta          high < +delta
less          A is below B by more than d   -delta   high < -delta         low > -delta
not_less      A at least matches B          -delta   low > -delta          high < -delta
not_greater   A is no better than B         +delta   high < +delta         low > +delta
============  ==========================  =========  ====================  ==================

and inconclusive otherwise: the interval does not decide at this n. (A superiority claim is
reproduced only when the whole interval lies beyond its margin; a non-inferiority claim when
it lies on the right side of its margin.)

A report makes many comparisons, so its verdicts are also given under Holm's step-down
correction (Holm 1979, "A simple sequentially rejective multiple test procedure"): with m
comparisons ordered by the p-value of their decision (the t test of the effect against the
threshold, two-sided), the k-th is decided only at the level 0.05 / (m - k + 1), i.e. with its
interval at confidence 1 - 0.05 / (m - k + 1), and only if every one before it was decided.

Power: :func:`detectable` is the smallest distance from the threshold that a paired t test at
this n and the observed spread detects with 80% power (two-sided 0.05, the noncentral t's exact power); a comparison whose
claim file's ``detect`` (the effect it is meant to detect) lies closer to the threshold than
that is underpowered: n cannot decide it.
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


def threshold(direction: str, delta: float) -> tuple[float, int]:
    """The threshold a direction puts on the effect's axis, and the side (+1: above it, -1:
    below it) on which the claim is reproduced."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
    if delta < 0 or math.isnan(delta):
        raise ValueError(f"the smallest effect that counts must be >= 0, got {delta}")
    return {
        "greater": (delta, 1),
        "less": (-delta, -1),
        "not_less": (-delta, 1),
        "not_greater": (delta, -1),
    }[direction]


def verdict(effect: Effect, direction: str, delta: float) -> str:
    """``reproduced``, ``contradicted`` or ``inconclusive`` (the table above)."""
    tau, side = threshold(direction, delta)
    low, high = (effect.low, effect.high) if side > 0 else (-effect.high, -effect.low)
    tau *= side
    return "reproduced" if low > tau else "contradicted" if high < tau else "inconclusive"


def decision_p(diffs: list[float], direction: str, delta: float) -> float:
    """The two-sided p-value of the paired t test of the mean difference against the
    direction's threshold: the level below which the interval excludes it (1 when the
    differences have no spread and sit on it, 0 when they have none and do not)."""
    import numpy as np
    from scipy import stats

    tau, _ = threshold(direction, delta)
    d = np.asarray(diffs, dtype=float)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 1.0 if float(d.mean()) == tau else 0.0
    t = (float(d.mean()) - tau) / (sd / math.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def holm_levels(pvalues: list[float], alpha: float = 0.05) -> list[float | None]:
    """Holm's step-down levels: per comparison the level it is decided at, or None where an
    earlier one in the order (ascending p) was not decided (so this one is not either)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    levels: list[float | None] = [None] * len(pvalues)
    for k, i in enumerate(order):
        level = alpha / (len(pvalues) - k)
        if pvalues[i] > level:
            break
        levels[i] = level
    return levels


def detectable(diffs: list[float], alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest effect (distance from the threshold) a two-sided paired t test at ``alpha``
    detects with ``power``, at this n and the observed standard deviation: the exact power
    (the noncentral t's, as an integral over the chi-square of the variance, which stays
    finite where ``scipy.stats.nct`` returns NaN at one degree of freedom), solved for it."""
    import numpy as np
    from scipy import integrate, optimize, stats

    d = np.asarray(diffs, dtype=float)
    n, sd = len(d), float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(shift: float) -> float:  # shift: the effect in standard errors
        def given(v: float) -> float:  # P(reject | the variance's chi-square is v)
            edge = critical * math.sqrt(v / df)
            return (stats.norm.sf(edge - shift) + stats.norm.cdf(-edge - shift)) * stats.chi2.pdf(
                v, df
            )

        return integrate.quad(given, 0, np.inf, limit=200)[0] - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return optimize.brentq(shortfall, 0.0, high, xtol=1e-10) * sd / math.sqrt(n)

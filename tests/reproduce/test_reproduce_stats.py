"""The claim statistics against scipy and hand-computed values, and the verdict table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sparsebench.reproduce.stats import (
    Effect,
    decision_p,
    detectable,
    holm_levels,
    paired_effect,
    verdict,
)


def test_the_t_interval_is_the_textbook_one() -> None:
    # Differences 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t(4, 0.975) = 2.7764451.
    effect = paired_effect([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(0.5)
    assert effect.mean == 3 and effect.n == 5
    assert effect.low == pytest.approx(3 - half, abs=1e-6)
    assert effect.high == pytest.approx(3 + half, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_the_t_interval_matches_scipy_on_random_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    a, b = rng.normal(0.8, 0.02, n), rng.normal(0.79, 0.02, n)
    d = a - b
    half = stats.t.ppf(0.95, n - 1) * d.std(ddof=1) / math.sqrt(n)  # a 90% interval
    effect = paired_effect(list(a), list(b), confidence=0.9)
    assert (effect.low, effect.high) == pytest.approx((d.mean() - half, d.mean() + half))


def test_the_bootstrap_interval_is_scipys_bca() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.8, 0.02, 8), rng.normal(0.78, 0.02, 8)
    effect = paired_effect(list(a), list(b), method="bootstrap", seed=3)
    expected = stats.bootstrap(
        (a - b,), np.mean, method="BCa", n_resamples=9999, rng=np.random.default_rng(3)
    ).confidence_interval
    assert (effect.low, effect.high) == pytest.approx((expected.low, expected.high))
    assert effect.low < effect.mean < effect.high


def test_identical_differences_have_a_point_interval_and_bad_input_is_refused() -> None:
    effect = paired_effect([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])
    assert (effect.mean, effect.low, effect.high) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="two or more pairs"):
        paired_effect([1.0], [2.0])
    with pytest.raises(ValueError, match="method"):
        paired_effect([1.0, 2.0], [2.0, 1.0], method="z")


def e(mean: float, low: float, high: float) -> Effect:
    return Effect(mean, low, high, 5, 0.95, "t")


@pytest.mark.parametrize(
    ("effect", "direction", "delta", "expected"),
    [
        (e(0.02, 0.01, 0.03), "greater", 0.005, "reproduced"),
        (e(0.003, 0.001, 0.0045), "greater", 0.005, "contradicted"),  # real but too small
        (e(0.003, 0.001, 0.02), "greater", 0.005, "inconclusive"),
        (e(0.008, 0.002, 0.014), "greater", 0.005, "inconclusive"),  # not all beyond the margin
        (e(-0.02, -0.03, -0.01), "greater", 0.0, "contradicted"),
        (e(0.01, -0.01, 0.03), "greater", 0.0, "inconclusive"),
        (e(-0.02, -0.03, -0.01), "less", 0.005, "reproduced"),
        (e(0.0, -0.002, 0.002), "less", 0.005, "contradicted"),
        (e(-0.001, -0.004, 0.002), "not_less", 0.005, "reproduced"),
        (e(-0.02, -0.03, -0.01), "not_less", 0.005, "contradicted"),
        (e(-0.004, -0.008, 0.0), "not_less", 0.005, "inconclusive"),
        (e(0.001, -0.004, 0.004), "not_greater", 0.005, "reproduced"),
        (e(0.02, 0.01, 0.03), "not_greater", 0.005, "contradicted"),
    ],
)
def test_verdicts(effect: Effect, direction: str, delta: float, expected: str) -> None:
    assert verdict(effect, direction, delta) == expected


def test_the_decision_p_is_the_level_at_which_the_interval_touches_the_threshold() -> None:
    diffs = [0.012, 0.02, 0.009, 0.016, 0.011]
    p = decision_p(diffs, "greater", 0.005)
    expected = stats.ttest_1samp(diffs, 0.005).pvalue  # two-sided, against the threshold
    assert p == pytest.approx(expected)
    at = paired_effect(diffs, [0.0] * 5, confidence=1 - p)
    assert at.low == pytest.approx(0.005)  # the interval at level p ends on the threshold


def test_holm_steps_down_and_stops_at_the_first_undecided() -> None:
    # m = 4: levels 0.0125, 0.0167, 0.025, 0.05 in order of p.
    assert holm_levels([0.04, 0.001, 0.012, 0.03]) == [None, 0.0125, 0.05 / 3, None]
    assert holm_levels([0.001, 0.01, 0.02, 0.04]) == [0.0125, 0.05 / 3, 0.025, 0.05]
    assert holm_levels([0.03, 0.03]) == [None, None]
    assert holm_levels([0.02, 0.02]) == [0.025, 0.05]


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_detectable_effect_has_80_percent_power(n: int) -> None:
    rng = np.random.default_rng(n)
    diffs = list(rng.normal(0.0, 0.01, n))
    d = detectable(diffs)
    sd = float(np.std(diffs, ddof=1))
    critical = stats.t.ppf(0.975, n - 1)
    noncentral = stats.nct(n - 1, d / (sd / math.sqrt(n)))
    assert noncentral.sf(critical) + noncentral.cdf(-critical) == pytest.approx(0.8, abs=1e-6)
    if n == 10:  # R's pwr.t.test(n = 10, power = 0.8, type = 'one.sample'): d = 0.9959
        assert d / sd == pytest.approx(0.9959, abs=0.0005)

"""The claim statistics against scipy and hand-computed values, and the verdict table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sparsebench.reproduce.stats import Effect, paired_effect, verdict


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

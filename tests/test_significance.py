"""Significance tools: PSR, deflated Sharpe and the bootstrap Sharpe-difference interval."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import quantstats as qs

from metabt.reports.significance import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_difference_ci,
)

PPY = 252


def _normal(seed: int, n: int, annual_sharpe: float, vol: float = 0.01) -> np.ndarray:
    """Returns whose *true* annualised Sharpe is ``annual_sharpe``."""
    return np.random.default_rng(seed).normal(annual_sharpe / math.sqrt(PPY) * vol, vol, n)


def test_psr_of_a_strongly_positive_series_is_above_095() -> None:
    assert probabilistic_sharpe_ratio(_normal(1, 750, 3.0)) > 0.95
    assert probabilistic_sharpe_ratio(_normal(1, 750, -3.0)) < 0.05


def test_psr_penalises_negative_skew_at_equal_sharpe() -> None:
    # Same mean and volatility (so the same Sharpe), but the losses come as
    # rare crashes: the Sharpe estimate is less reliable, so the PSR is lower.
    rng = np.random.default_rng(2)

    def standard(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / x.std(ddof=1)

    symmetric = 0.08 + standard(rng.normal(0.0, 1.0, 1000))
    crashy = 0.08 + standard(-rng.exponential(1.0, 1000))  # skew about -2
    # Ignoring skew and kurtosis would make the two PSRs exactly equal.
    assert probabilistic_sharpe_ratio(crashy) < probabilistic_sharpe_ratio(symmetric)


def test_psr_of_a_flat_series_is_undefined() -> None:
    assert math.isnan(probabilistic_sharpe_ratio(np.zeros(300)))


def test_dsr_falls_as_the_number_of_trials_grows() -> None:
    r = _normal(3, 750, 1.5)
    values = [deflated_sharpe_ratio(r, n) for n in (1, 2, 10, 100, 1000)]
    assert values[0] == pytest.approx(probabilistic_sharpe_ratio(r))
    assert all(a > b for a, b in itertools.pairwise(values)), values


def test_expected_max_sharpe_matches_monte_carlo() -> None:
    draws = np.random.default_rng(4).standard_normal((20000, 50)).max(axis=1).mean()
    assert expected_max_sharpe(50, 1.0) == pytest.approx(draws, rel=0.03)
    assert expected_max_sharpe(1, 1.0) == 0.0


def test_bootstrap_ci_contains_the_true_difference_in_a_known_case() -> None:
    a, b = _normal(5, 2000, 2.0), _normal(6, 2000, 0.0)
    ci = sharpe_difference_ci(a, b, PPY, seed=0, reps=1000)
    assert ci.low < 2.0 < ci.high
    assert ci.significant and ci.low > 0.0


def test_bootstrap_ci_covers_the_truth_most_of_the_time() -> None:
    # 95 % intervals over 40 independent samples: 33 or fewer hits would happen
    # with probability < 0.1 % if the coverage really were 95 %.
    hits = 0
    for k in range(40):
        a, b = _normal(100 + k, 500, 1.0), _normal(200 + k, 500, 0.0)
        ci = sharpe_difference_ci(a, b, PPY, seed=k, reps=300)
        hits += ci.low < 1.0 < ci.high
    assert hits >= 34, hits


def test_bootstrap_is_seeded_and_reproducible() -> None:
    a, b = _normal(7, 500, 1.0), _normal(8, 500, 0.5)
    first = sharpe_difference_ci(a, b, PPY, seed=11, reps=400)
    assert sharpe_difference_ci(a, b, PPY, seed=11, reps=400) == first
    other = sharpe_difference_ci(a, b, PPY, seed=12, reps=400)
    assert (other.low, other.high) != (first.low, first.high)


def test_point_estimate_is_the_quantstats_sharpe_difference() -> None:
    idx = pd.bdate_range("2022-01-03", periods=400)
    a = pd.Series(_normal(9, 400, 1.0), index=idx)
    b = pd.Series(_normal(10, 400, 0.3), index=idx)
    ci = sharpe_difference_ci(a, b, PPY, reps=50)
    expected = qs.stats.sharpe(a, rf=0.0, periods=PPY) - qs.stats.sharpe(b, rf=0.0, periods=PPY)
    assert ci.diff == pytest.approx(expected, rel=1e-12)

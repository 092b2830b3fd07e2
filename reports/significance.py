"""How much to trust a Sharpe ratio: bootstrap intervals, PSR and the deflated Sharpe.

* :func:`sharpe_difference_ci` resamples the two return series *jointly* with a
  stationary block bootstrap (``arch``), so the interval keeps both the
  correlation between the strategies (same market, same days) and the serial
  dependence of daily returns (volatility clustering).
* :func:`probabilistic_sharpe_ratio` is the probability that the true Sharpe
  exceeds a benchmark, given the track-record length, skew and kurtosis
  (Bailey & Lopez de Prado, 2012, "The Sharpe Ratio Efficient Frontier").
* :func:`deflated_sharpe_ratio` is the PSR measured against the Sharpe the best of
  ``n_trials`` worthless configurations would show by luck (Bailey & Lopez de
  Prado, 2014, "The Deflated Sharpe Ratio").

Inside the bootstrap the Sharpe is computed in numpy (mean / std with ``ddof=1``,
times sqrt(periods)), which is QuantStats' definition with ``rf=0``: calling
QuantStats thousands of times per interval would be slow for no gain, and the
point estimate is checked against QuantStats in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from arch.bootstrap import StationaryBootstrap
from scipy import stats

EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class SharpeDiffCI:
    """Bootstrap confidence interval of ``Sharpe(a) - Sharpe(b)`` (annualised).

    Attributes
    ----------
    diff : float
        Point estimate on the observed returns.
    low, high : float
        Percentile interval bounds.
    level : float
        Coverage, e.g. 0.95.
    block_length : int
        Expected block length of the stationary bootstrap, in bars.
    reps : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling; the same seed gives the same interval.
    """

    diff: float
    low: float
    high: float
    level: float
    block_length: int
    reps: int
    seed: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero (both bounds on the same side)."""
        return bool(self.low > 0.0 or self.high < 0.0)


def _sharpe_columns(x: np.ndarray, periods_per_year: int) -> np.ndarray:
    """Annualised Sharpe of each column (QuantStats' definition, rf=0); NaN if flat."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sr = x.mean(axis=0) / x.std(axis=0, ddof=1)
    return np.where(np.isfinite(sr), sr, np.nan) * math.sqrt(periods_per_year)


def default_block_length(n_obs: int) -> int:
    """Expected block length ``round(n ** (1/3))`` bars (at least 1).

    The n^(1/3) rate is the order that balances bias and variance of block
    bootstrap variance estimates (Hall, Horowitz & Jing, 1995); for 2-4 years of
    daily bars it gives 8-10 days, long enough to carry a volatility cluster.
    """
    return max(1, round(n_obs ** (1.0 / 3.0)))


def sharpe_difference_ci(
    a: pd.Series | np.ndarray,
    b: pd.Series | np.ndarray,
    periods_per_year: int,
    *,
    level: float = 0.95,
    reps: int = 2000,
    block_length: int | None = None,
    seed: int = 0,
) -> SharpeDiffCI:
    """Stationary-bootstrap interval of the annualised Sharpe difference ``a - b``.

    Parameters
    ----------
    a, b : pd.Series or np.ndarray
        Daily simple returns of the two strategies. Series are aligned on their
        common dates; arrays must have the same length (same days).
    periods_per_year : int
        Bars per year used to annualise.
    level : float
        Two-sided coverage of the percentile interval.
    reps : int
        Bootstrap resamples (2000 keeps the 2.5 % tail to ~50 draws).
    block_length : int, optional
        Expected block length in bars; default :func:`default_block_length`.
    seed : int
        Seed of the resampling.

    Returns
    -------
    SharpeDiffCI
        NaN bounds when a series is flat (its Sharpe is undefined).
    """
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        a, b = a.align(b, join="inner")
    x = np.column_stack([np.asarray(a, dtype=float), np.asarray(b, dtype=float)])
    if x.shape[0] < 3:
        raise ValueError(f"need at least 3 common bars for a Sharpe interval, got {x.shape[0]}")
    block = default_block_length(x.shape[0]) if block_length is None else int(block_length)
    diff = float(np.subtract(*_sharpe_columns(x, periods_per_year)))
    if not math.isfinite(diff):
        return SharpeDiffCI(math.nan, math.nan, math.nan, level, block, reps, seed)

    def stat(data: np.ndarray) -> np.ndarray:
        sr = _sharpe_columns(data, periods_per_year)
        return np.array([sr[0] - sr[1]])

    # Rows are resampled together, keeping the two strategies on the same days.
    boot = StationaryBootstrap(block, x, seed=np.random.default_rng(seed))
    draws = boot.apply(stat, reps=reps)[:, 0]
    draws = draws[np.isfinite(draws)]  # a resample of only flat days has no Sharpe
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail]) if draws.size else (math.nan, math.nan)
    return SharpeDiffCI(diff, float(low), float(high), level, block, reps, seed)


def _moments(returns: pd.Series | np.ndarray) -> tuple[float, int, float, float]:
    """Per-period Sharpe, length, skew and (Pearson, normal = 3) kurtosis."""
    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)]
    n = r.size
    sd = r.std(ddof=1) if n > 1 else 0.0
    if n < 3 or not sd > 0.0:
        return math.nan, n, math.nan, math.nan
    return (
        float(r.mean() / sd),
        n,
        float(stats.skew(r, bias=False)),
        float(stats.kurtosis(r, fisher=False, bias=False)),
    )


def probabilistic_sharpe_ratio(
    returns: pd.Series | np.ndarray, benchmark_sharpe: float = 0.0
) -> float:
    """Probability that the true Sharpe exceeds ``benchmark_sharpe`` (Bailey & Lopez de Prado).

    ``PSR = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2))``
    with the per-period (not annualised) Sharpe ``SR``: fat tails and negative
    skew widen the Sharpe's standard error and lower the PSR.

    Parameters
    ----------
    returns : pd.Series or np.ndarray
        Daily simple returns.
    benchmark_sharpe : float
        Per-period Sharpe to beat (0 = "better than nothing"). Divide an annual
        Sharpe by sqrt(periods_per_year) to get this.

    Returns
    -------
    float
        In [0, 1]; NaN when the series is flat or shorter than 3 bars.
    """
    sr, n, skew, kurt = _moments(returns)
    if math.isnan(sr):
        return math.nan
    var = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    if not var > 0.0:  # only reachable with extreme skew; the formula has no answer
        return math.nan
    return float(stats.norm.cdf((sr - benchmark_sharpe) * math.sqrt(n - 1) / math.sqrt(var)))


def expected_max_sharpe(n_trials: int, sharpe_std: float) -> float:
    """Expected maximum of ``n_trials`` Sharpe estimates whose true Sharpe is zero.

    ``E[max] ~ std * ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e)))`` with
    Euler's constant ``g`` (the "false strategy" theorem); 0 for a single trial.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if n_trials == 1:
        return 0.0
    q = stats.norm.ppf
    z = (1.0 - EULER_GAMMA) * q(1.0 - 1.0 / n_trials) + EULER_GAMMA * q(
        1.0 - 1.0 / (n_trials * math.e)
    )
    return float(sharpe_std * z)


def deflated_sharpe_ratio(
    returns: pd.Series | np.ndarray, n_trials: int, trial_sharpe_std: float | None = None
) -> float:
    """PSR against the Sharpe the luckiest of ``n_trials`` worthless configurations would show.

    Parameters
    ----------
    returns : pd.Series or np.ndarray
        Daily simple returns of the chosen configuration.
    n_trials : int
        Configurations tried (grid points, meta-learning settings) before this one
        was picked. ``1`` gives the plain PSR.
    trial_sharpe_std : float, optional
        Standard deviation of the per-period Sharpe across the trials. When the
        trials' Sharpes are not known, the default is ``1 / sqrt(n - 1)``, the
        sampling standard deviation of a Sharpe estimate whose true value is 0:
        what the trials would scatter by if none of them had an edge. Treating
        the trials as independent makes the deflation conservative when the
        configurations are correlated (neighbouring grid points usually are).

    Returns
    -------
    float
        In [0, 1]; NaN when the series is flat or shorter than 3 bars.
    """
    _, n, _, _ = _moments(returns)
    if n < 3:
        return math.nan
    std = 1.0 / math.sqrt(n - 1) if trial_sharpe_std is None else float(trial_sharpe_std)
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(int(n_trials), std))

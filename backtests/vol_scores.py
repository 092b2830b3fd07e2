"""Scores of volatility forecasts: QLIKE, MSE of log variance, Mincer-Zarnowitz R^2, and how
close a forecast keeps the risk of a vol-targeted position to its target.

Every function takes forecasts of the next bar's variance made at ``t`` and the variance
proxy of bar ``t+1`` on the same rows; :mod:`backtests.volatility` runs the study.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from metabt.feeds.vol_features import VAR_FLOOR
from metabt.strategies.detectors import make_detector

WITHIN = 0.10  # a month is "on target" when its realised vol is within 10% of the target
MIN_MONTH_BARS = 10  # shorter months (the edges of the test period) are not scored


# -- accuracy -------------------------------------------------------------------------
def accuracy(forecast: np.ndarray, proxy: np.ndarray) -> dict[str, float | int]:
    """QLIKE, MSE of log variance and Mincer-Zarnowitz R^2 of paired rows (finite only).

    QLIKE is ``y/f - log(y/f) - 1`` (0 for a perfect forecast; Patton 2011), the proxy
    floored at ``VAR_FLOOR`` inside the logs (a bar with no price change).
    """
    ok = np.isfinite(forecast) & np.isfinite(proxy)
    f, y = forecast[ok], proxy[ok]
    if len(f) < 3:
        return {"qlike": np.nan, "mse_log": np.nan, "mz_r2": np.nan, "n": int(len(f))}
    qlike = float(np.mean(qlike_terms(f, y)))
    mse_log = float(np.mean((np.log(np.maximum(y, VAR_FLOOR)) - np.log(f)) ** 2))
    corr = np.corrcoef(f, y)[0, 1] if f.std() > 0 and y.std() > 0 else 0.0
    return {"qlike": qlike, "mse_log": mse_log, "mz_r2": float(corr**2), "n": int(len(f))}


def qlike_terms(forecast: np.ndarray, proxy: np.ndarray) -> np.ndarray:
    """Per-bar QLIKE (NaN where either side is missing)."""
    ratio = np.maximum(proxy, VAR_FLOOR) / forecast
    return proxy / forecast - np.log(ratio) - 1.0


def paired_difference(a: np.ndarray, b: np.ndarray, block: int) -> dict[str, Any]:
    """Mean of ``a - b`` per bar and a 95% interval from means of ``block``-bar blocks.

    Consecutive bars' losses are correlated (volatility clusters, and the bars after
    one change are one episode), so the interval treats each block as one observation.
    """
    d = a - b
    d = d[np.isfinite(d)]
    n_blocks = len(d) // block
    if n_blocks < 2:
        return {"diff": float(d.mean()) if len(d) else np.nan, "ci95": [np.nan, np.nan]}
    means = d[: n_blocks * block].reshape(n_blocks, block).mean(1)
    half = 1.96 * means.std(ddof=1) / np.sqrt(n_blocks)
    return {"diff": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)]}


def pooled(
    series: dict[str, pd.Series], masks: dict[str, np.ndarray], symbols: list[str]
) -> np.ndarray:
    """The masked bars of ``symbols``, one asset after another, as one array."""
    return np.concatenate([series[s].to_numpy()[masks[s]] for s in symbols] or [np.empty(0)])


def pooled_scores(
    forecasts: dict[str, pd.Series],
    proxies: dict[str, pd.Series],
    masks: dict[str, np.ndarray],
    symbols: list[str],
) -> dict[str, float | int]:
    """Pooled QLIKE / MSE over ``symbols``' masked bars; MZ R^2 averaged over symbols."""
    out = accuracy(pooled(forecasts, masks, symbols), pooled(proxies, masks, symbols))
    r2 = [
        accuracy(forecasts[s].to_numpy()[masks[s]], proxies[s].to_numpy()[masks[s]])
        for s in symbols
    ]
    out["mz_r2"] = float(np.nanmean([r["mz_r2"] for r in r2])) if r2 else np.nan
    return out


def after_change_mask(index: pd.DatetimeIndex, alarm_bars: list[int], bars: int) -> np.ndarray:
    """True on the ``bars`` bars starting at each alarm (the alarm bar included)."""
    mask = np.zeros(len(index), bool)
    for a in alarm_bars:
        mask[a : a + bars] = True
    return mask


def alarm_bars(frame: pd.DataFrame, detector: str, settings: dict[str, Any]) -> list[int]:
    """Bars at which the detector, run causally over the returns, reports a change."""
    det = make_detector(detector, **settings)
    r = np.log(frame["close"]).diff().to_numpy()
    return [t for t in range(1, len(r)) if np.isfinite(r[t]) and det.update(r[t])]


# -- risk against target ----------------------------------------------------------------
def monthly_risk(variance: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """Realised vol, per month, of the next-bar return divided by the forecast vol.

    A perfect forecast gives 1 (up to sampling noise); months are those of the
    return's bar. ``variance`` must be restricted to the bars to score.
    """
    r_next = np.log(frame["close"]).diff().shift(-1).reindex(variance.index)
    z = (r_next / np.sqrt(variance)).dropna()
    months = z.groupby(z.index.to_period("M"))
    rv = months.apply(lambda s: float(np.sqrt(np.mean(s**2))))
    return rv[months.size() >= MIN_MONTH_BARS]


def noise_ceiling(month_sizes: list[int], seed: int = 0, reps: int = 200) -> float:
    """Share of months within ``WITHIN`` of target for a forecast equal to the true vol
    of Gaussian returns: the best any estimator can do with so few bars a month."""
    rng = np.random.default_rng(seed)
    hits = [
        abs(np.sqrt(np.mean(rng.standard_normal(n) ** 2)) - 1.0) <= WITHIN
        for _ in range(reps)
        for n in month_sizes
    ]
    return float(np.mean(hits))

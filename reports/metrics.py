"""Per-strategy performance metrics: the numbers in ``metrics.json``.

The return-based ratios come from QuantStats (``quantstats.stats``) rather than a
re-implementation, so they match a tear sheet a user builds by hand with
``rf=0`` and the same ``periods``. Turnover, trade and adaptation counts come from
the run's event files, which QuantStats does not know about.

Undefined values are ``None`` (JSON ``null``), never NaN: JSON has no NaN, and
``json.dumps`` would write the bare token ``NaN`` that strict parsers (``jq``,
JavaScript, ``json.loads(..., parse_constant=...)``) reject. A value is undefined
when its formula divides by zero, e.g. the Sharpe of a strategy that never moved
(zero volatility), the Sortino of one that never lost (no downside), the Calmar of
one that never drew down, or a turnover for which the run recorded no weights.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

METRIC_KEYS: tuple[str, ...] = (
    "sharpe",
    "sortino",
    "cagr",
    "volatility",
    "max_drawdown",
    "calmar",
    "turnover",
    "n_trades",
    "n_adaptations",
)

Metrics = dict[str, dict[str, float | int | None]]


def _finite(value: object) -> float | None:
    """A plain float, or ``None`` for NaN/inf (see the module docstring)."""
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def return_metrics(returns: pd.Series, periods_per_year: int) -> dict[str, float | None]:
    """Sharpe, Sortino, CAGR, volatility, max drawdown and Calmar from QuantStats.

    Parameters
    ----------
    returns : pd.Series
        Daily simple returns (0.01 = +1 %), tz-naive date index.
    periods_per_year : int
        Bars per year used to annualise (252 for daily equities); passed explicitly
        because QuantStats' default is not right for every market.

    Returns
    -------
    dict
        Ratios annualised with ``rf=0``; ``cagr``, ``volatility`` and
        ``max_drawdown`` as fractions (``max_drawdown`` <= 0).
    """
    # Imported here, not with the module: QuantStats brings matplotlib and seaborn (about
    # 2 s), which the command line does not need to list METRIC_KEYS or to refuse bad input.
    import quantstats as qs

    r = returns.astype(float)
    if r.index.tz is not None:  # QuantStats compares against tz-naive indexes
        r = r.tz_localize(None)
    ppy = int(periods_per_year)
    # A flat series makes QuantStats divide by zero; the warning says nothing
    # the None in the output does not.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {
            "sharpe": qs.stats.sharpe(r, rf=0.0, periods=ppy),
            "sortino": qs.stats.sortino(r, rf=0.0, periods=ppy),
            "cagr": qs.stats.cagr(r, rf=0.0, periods=ppy),
            "volatility": qs.stats.volatility(r, periods=ppy),
            "max_drawdown": qs.stats.max_drawdown(r),
            "calmar": qs.stats.calmar(r, periods=ppy),
        }
    return {k: _finite(v) for k, v in out.items()}


def turnover(
    positions: pd.DataFrame, strategy: str, n_periods: int, periods_per_year: int
) -> float | None:
    """Annualised turnover: sum over bars and assets of |change in target weight|, per year.

    Weights are forward-filled per asset (a missing row means "unchanged") and
    start from 0, so entering the first position counts: buy-and-hold of one asset
    over one year has turnover 1.0; flipping long 1 -> short 1 adds 2.0.

    Parameters
    ----------
    positions : pd.DataFrame
        Long format with columns ``date, strategy, asset, weight``.
    strategy : str
        Which strategy's rows to use.
    n_periods : int
        Bars in the test period (rows of ``returns.csv``); sets the number of years.
    periods_per_year : int
        Bars per year.

    Returns
    -------
    float or None
        ``None`` when ``positions`` holds no row for ``strategy`` (unknown, not zero).
    """
    rows = positions[positions["strategy"] == strategy]
    if rows.empty or n_periods <= 0:
        return None
    # Several decisions on one bar for one asset: the last one is the target.
    wide = rows.pivot_table(index="date", columns="asset", values="weight", aggfunc="last")
    wide = wide.sort_index().ffill().fillna(0.0)
    traded = wide.diff().abs()
    traded.iloc[0] = wide.iloc[0].abs()
    years = n_periods / float(periods_per_year)
    return _finite(traded.to_numpy().sum() / years)


def compute_metrics(
    returns: pd.DataFrame,
    positions: pd.DataFrame,
    trades: pd.DataFrame,
    adaptations: pd.DataFrame,
    periods_per_year: int,
) -> Metrics:
    """Every metric of the ``metrics.json`` contract, one dict per strategy.

    Parameters
    ----------
    returns : pd.DataFrame
        Date x strategy daily returns (``returns.csv``).
    positions, trades, adaptations : pd.DataFrame
        Long event files with a ``strategy`` column; ``n_trades`` and
        ``n_adaptations`` count their rows per strategy (``"alarm"`` rows of
        ``adaptations`` excluded).
    periods_per_year : int
        Bars per year.

    Returns
    -------
    dict[str, dict[str, float | int | None]]
        Keys in the column order of ``returns``; inner keys are :data:`METRIC_KEYS`.
    """
    trade_counts = trades["strategy"].value_counts()
    # "alarm" rows mark a detected regime change, not an adaptation.
    if "trigger" in adaptations.columns:
        adaptations = adaptations.loc[adaptations["trigger"] != "alarm"]
    adapt_counts = adaptations["strategy"].value_counts()
    out: Metrics = {}
    for name in returns.columns:
        row: dict[str, float | int | None] = dict(return_metrics(returns[name], periods_per_year))
        row["turnover"] = turnover(positions, name, len(returns), periods_per_year)
        row["n_trades"] = int(trade_counts.get(name, 0))
        row["n_adaptations"] = int(adapt_counts.get(name, 0))
        out[str(name)] = row
    return out


def write_metrics(metrics: Metrics, path: Path) -> Path:
    """Write ``metrics.json`` (strict JSON: ``allow_nan=False`` guards the no-NaN rule)."""
    clean = {
        name: {k: (v if isinstance(v, int) or v is None else _finite(v)) for k, v in row.items()}
        for name, row in metrics.items()
    }
    path.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path

"""In-sample grid search for the static comparators.

The comparators get a fair chance: each is tuned on the training period only
(annualised Sharpe after costs), then its parameters are frozen for the test
period. Frames are cut before ``end`` here, so no bar of the test period is
even loaded into a tuning backtest. Configurations run in parallel through
joblib (loky processes), one backtest each.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from metabt.feeds.did_you_mean import did_you_mean
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.static import STATIC_STRATEGIES

TRADING_DAYS = 252


@dataclass(frozen=True)
class TuningResult:
    """Outcome of :func:`tune_static`.

    Attributes
    ----------
    best_params : dict
        The winning configuration, to be frozen for the test period.
    best_score : float
        Its in-sample annualised Sharpe after costs.
    n_trials : int
        Number of configurations evaluated (the grid size).
    scored_from : pd.Timestamp
        First day counted in every score: ``start``, or later if some config's
        indicators were still warming up then.
    table : pd.DataFrame
        One row per configuration in grid order: its params, ``sharpe``,
        ``total_return`` (both over ``scored_from`` .. ``end``), ``n_trades``
        and ``n_rejected`` (orders the broker
        refused for lack of cash, see :class:`strategies.engine.BacktestResult`).
    """

    best_params: dict
    best_score: float
    n_trials: int
    table: pd.DataFrame
    scored_from: pd.Timestamp


def annualised_sharpe(returns: pd.Series, periods: int = TRADING_DAYS) -> float:
    """Mean over standard deviation (ddof=1) of daily returns, times sqrt(periods).

    A strategy that never moves (zero variance, e.g. one that never trades)
    scores 0.0 rather than NaN so that ranking stays well defined.
    """
    r = np.asarray(returns, dtype="float64")
    if r.size < 2:
        return 0.0
    sd = r.std(ddof=1)
    if not np.isfinite(sd) or sd == 0.0:
        return 0.0
    return float(r.mean() / sd * math.sqrt(periods))


def expand_grid(grid: dict[str, list]) -> list[dict]:
    """Every combination of ``grid`` values, in a fixed order (last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _check_grid(name: str, grid: dict[str, list]) -> None:
    if name not in STATIC_STRATEGIES:
        hint = did_you_mean(name, STATIC_STRATEGIES)
        raise ValueError(
            f"unknown static strategy {name!r}"
            + (f"; {hint}" if hint else "")
            + f" (known: {', '.join(STATIC_STRATEGIES)})"
        )
    known = set(STATIC_STRATEGIES[name].params._getkeys())
    for key, values in grid.items():
        if key not in known:
            hint = did_you_mean(key, known)
            raise ValueError(
                f"{name}: unknown grid parameter {key!r}" + (f"; {hint}" if hint else "")
            )
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{name}: grid[{key!r}] must be a non-empty list of values")


def _run(
    frames: dict[str, pd.DataFrame], name: str, params: dict, costs: CostSpec, start: pd.Timestamp
) -> tuple[pd.Series, pd.Timestamp | None, int, int]:
    with warnings.catch_warnings():
        # tune_static handles a late warm-up itself (see scored_from).
        warnings.filterwarnings("ignore", message=".*warm-up")
        # Rejections are counted in the tuning table (n_rejected); a warning from a
        # worker process would only reach the terminal, not the caller.
        warnings.filterwarnings("ignore", message=".*orders rejected")
        result = run_backtest(frames, STATIC_STRATEGIES[name], params, costs, trade_start=start)
    ready = result.weights["date"].iloc[0] if len(result.weights) else None
    return result.returns, ready, len(result.trades), result.n_rejected


def tune_static(
    frames: dict[str, pd.DataFrame],
    name: str,
    grid: dict[str, list],
    costs: CostSpec,
    start: pd.Timestamp,
    end: pd.Timestamp,
    n_jobs: int = 2,
) -> TuningResult:
    """Grid-search a static comparator on the training period ``[start, end)``.

    Parameters
    ----------
    frames : dict[str, pd.DataFrame]
        Canonical bar frames. Bars before ``start`` warm indicators up; bars at
        or after ``end`` are dropped before any backtest runs.
    name : str
        Key of :data:`strategies.static.STATIC_STRATEGIES`.
    grid : dict[str, list]
        Param -> candidate values; the full product is evaluated. ``{}`` runs
        the default params once.
    costs : CostSpec
        Costs applied in every in-sample backtest (the score is after costs).
    start, end : pd.Timestamp
        First scored day and exclusive end of the training period.
    n_jobs : int
        Parallel joblib workers (loky processes).

    Returns
    -------
    TuningResult
        The best configuration by in-sample annualised Sharpe; ties go to the
        configuration that comes first in grid order. All configs are scored
        on the same days, from the first bar on which every one of them is warm
        (``scored_from``, with a warning when that is after ``start``).
    """
    _check_grid(name, grid)
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if not start < end:
        raise ValueError(f"tuning needs start < end, got start={start.date()}, end={end.date()}")
    train = {sym: f.loc[f.index < end] for sym, f in frames.items()}
    if not any((f.index >= start).any() for f in train.values()):
        raise ValueError(f"no bars in the training period [{start.date()}, {end.date()})")

    configs = expand_grid(grid)
    runs = Parallel(n_jobs=n_jobs, backend="loky")(
        delayed(_run)(train, name, params, costs, start) for params in configs
    )
    # Score every config on the same days: from the first bar on which the
    # slowest one (e.g. a 200-bar SMA) is warm. Otherwise a slow config's flat
    # warm-up days would count in its Sharpe and not in a fast one's.
    readies = [ready for _, ready, _, _ in runs]
    if any(r is None for r in readies):
        raise ValueError(
            f"{name}: some configs never finished warming up before "
            f"{end.date()}; shorten their lookbacks or lengthen the training period"
        )
    scored_from = max([start, *readies])
    if scored_from > start:
        warnings.warn(
            f"{name}: scored from {scored_from.date()}, when the slowest config is "
            f"warm, not from start={start.date()}; start later to silence this",
            stacklevel=2,
        )
    rows = []
    for params, (returns, _, n_trades, n_rejected) in zip(configs, runs):
        r = returns.loc[scored_from:]
        rows.append(
            {
                **params,
                "sharpe": annualised_sharpe(r),
                "total_return": float((1.0 + r).prod() - 1.0),
                "n_trades": n_trades,
                "n_rejected": n_rejected,
            }
        )
    table = pd.DataFrame(rows)
    # np.argmax returns the first maximum: a deterministic tie-break by grid order.
    best = int(np.argmax(table["sharpe"].to_numpy()))
    return TuningResult(
        best_params=dict(configs[best]),
        best_score=float(table["sharpe"].iloc[best]),
        n_trials=len(configs),
        table=table,
        scored_from=scored_from,
    )

"""Where a strategy earned, by true regime and by regime age (markets with known regimes).

On the synthetic lab the true regime of every bar is known, so each strategy's daily
return can be split by asset and bar and summed by the regime that bar was in, and by
how many bars had passed since that regime began. That tells apart a policy that loses
in the first bars after a change (detection, the fallback rule) from one that never
learns the regime well (adaptation), and shows which regimes pay at all after costs.

The split is exact broker accounting, not a model: an asset's profit on day ``t`` is the
shares held into ``t`` times the close-to-close move, plus the day's fills marked to the
close (the slippage already in their price) minus their commission. Over all assets it
adds up to the change of portfolio value, so divided by the value at the previous close
the assets' parts sum to the day's return in ``returns.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from metabt.strategies.engine import BacktestResult

#: Regime-age buckets: (label, first bar of the bucket), counting the regime's first bar as 1.
AGE_BUCKETS = (("1-21", 1), ("22-60", 22), ("61+", 61))


def bars_since_change(regime: pd.Series) -> pd.Series:
    """1 on the first bar of each regime, then 2, 3, ... (the first regime counts from bar 1)."""
    ids = regime.to_numpy()
    starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1]
    at = np.arange(len(ids))
    return pd.Series(at - starts[np.searchsorted(starts, at, side="right") - 1] + 1, regime.index)


def asset_contributions(result: BacktestResult, closes: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Each asset's share of each daily return: ``date, asset, contribution``.

    ``closes`` are the full close series (warm-up included) of the assets traded.
    The contributions of one date sum to that date's return.
    """
    returns = result.returns
    value_before = result.cash * (1.0 + returns).cumprod().shift(1, fill_value=1.0)
    fills = (
        result.trades.assign(paid=result.trades["value"] + result.trades["commission"])
        .groupby(["asset", "date"])[["size", "paid"]]
        .sum()
    )
    rows = []
    for asset, close in closes.items():
        close = close.ffill()  # a day with no bar: the position keeps its last price
        move = (close - close.shift(1)).reindex(returns.index).fillna(0.0)
        mark = close.reindex(returns.index).ffill()
        day = (
            fills.loc[asset].reindex(returns.index, fill_value=0.0)
            if asset in fills.index.get_level_values(0)
            else pd.DataFrame(0.0, index=returns.index, columns=["size", "paid"])
        )
        held_before = day["size"].cumsum().shift(1, fill_value=0.0)
        profit = held_before * move + day["size"] * mark - day["paid"]
        rows.append(
            pd.DataFrame(
                {"date": returns.index, "asset": asset, "contribution": profit / value_before}
            )
        )
    return pd.concat(rows, ignore_index=True)


def regime_attribution(
    contributions: pd.DataFrame,
    regimes: Mapping[str, pd.Series],
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Strategies' returns summed by true regime and by regime age.

    ``contributions`` holds :func:`asset_contributions` rows with a ``strategy``
    column (the bars to count, e.g. a study's test period). Returns the long table
    of ``regime_attribution.csv``: ``strategy``, ``by`` (``regime`` or ``age``),
    ``bucket`` (the regime's name, or its id when ``names`` is None; an age bucket
    of :data:`AGE_BUCKETS`), ``asset_bars`` and ``return_pct`` (the sum of the daily
    contributions in percent of the portfolio: the buckets of one ``by`` add up to
    the sum of the strategy's daily returns).
    """
    labels = pd.concat(
        pd.DataFrame(
            {
                "date": r.index,
                "asset": s,
                "regime": r.to_numpy(),
                "age": bars_since_change(r).to_numpy(),
            }
        )
        for s, r in regimes.items()
    )
    every = contributions.merge(labels, on=["date", "asset"], how="left", validate="many_to_one")
    unknown = every[every["regime"].isna()]
    if len(unknown):
        row = unknown.iloc[0]
        raise ValueError(
            f"no true regime for {row['asset']} on {row['date'].date()}: "
            "the regimes must cover every traded bar"
        )
    # Categories keep the table in a fixed order: strategies as run, regimes by id, ages
    # youngest first (groupby sorts by category order).
    every["strategy"] = pd.Categorical(
        every["strategy"], categories=list(dict.fromkeys(every["strategy"]))
    )
    regime = pd.Categorical(every["regime"].astype(int))
    every["regime"] = regime.rename_categories(
        [str(i) if names is None else names[i] for i in regime.categories]
    )
    edges = [first - 0.5 for _, first in AGE_BUCKETS] + [np.inf]
    every["age"] = pd.cut(every["age"], edges, labels=[label for label, _ in AGE_BUCKETS])
    tables = []
    for by in ("regime", "age"):
        table = (
            every.groupby(["strategy", by], observed=True)["contribution"]
            .agg(asset_bars="size", return_pct="sum")
            .reset_index()
            .rename(columns={by: "bucket"})
        )
        table.insert(1, "by", by)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out["return_pct"] *= 100.0
    return out

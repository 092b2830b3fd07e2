"""One new bar from the last snapshot: a Backtrader run over the last few bars only.

The strategy and broker state after bar ``D`` is restored into a Cerebro whose
feeds hold each asset's last :data:`~feeds.features.LABEL_DELAY` stored bars
(the lags the strategy reads: yesterday's open and close, the date two bars
back) and the new bar. The restored bars are skipped; on the last of them the
state is put back and the waiting orders are placed again, so the new bar's
opening fills, costs and decisions go through Backtrader's broker exactly as
in the backtest (:func:`strategies.engine.configure_broker`). The work per bar
is the same after ten bars or ten years.

The new bar's features come from the carried EWM state and the last stored
bars (:mod:`backtests.paper.feature_state`).
"""

from __future__ import annotations

import warnings

import backtrader as bt
import numpy as np
import pandas as pd

from metabt.backtests.paper.feature_state import PRICES, TRAIL, FeatureState
from metabt.backtests.paper.simulate import (
    LedgerStrategy,
    Replay,
    Resume,
    ledger_rows,
    new_recorder,
)
from metabt.backtests.paper.snapshot import SnapshotError, decode, encode
from metabt.backtests.paper.sources import Bar
from metabt.feeds.btfeed import VOL_LINE, feature_feed_class
from metabt.feeds.features import FeatureSpec
from metabt.strategies.engine import CostSpec, configure_broker


def seal(state: dict, arrays: dict, features: dict[str, FeatureState], day: str) -> bytes:
    """The stored snapshot after bar ``day``: strategy, broker and feature state."""
    full = {**state, "date": day, "features": {a: f.to_dict() for a, f in features.items()}}
    return encode(full, arrays)


def open_snapshot(blob: bytes, spec: FeatureSpec) -> tuple[dict, dict, dict[str, FeatureState]]:
    """Decode a stored snapshot and its feature state (``SnapshotError`` if it does not fit)."""
    state, arrays = decode(blob)
    try:
        features = {a: FeatureState.from_dict(raw, spec) for a, raw in state["features"].items()}
        pd.Timestamp(state["date"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"feature state unreadable ({type(exc).__name__}: {exc})") from None
    return state, arrays, features


def _feed(
    asset: str,
    frame: pd.DataFrame,
    arrays: dict,
    feature: FeatureState,
    bar: Bar,
    spec: FeatureSpec,
) -> bt.feeds.PandasData:
    """The asset's feed: its last stored bars (features from the snapshot) and the new bar."""
    tail = arrays.get(f"asset.{asset}.tail")
    vols = arrays.get(f"asset.{asset}.tail_vol")
    n_feats = len(spec.names)
    if (
        tail is None
        or vols is None
        or tail.ndim != 2
        or tail.shape[1] != n_feats
        or not 1 <= len(tail) <= len(frame)
        or vols.shape != (len(tail),)
    ):
        got = None if tail is None else tail.shape
        raise SnapshotError(f"asset.{asset}.tail is {got}, expected (1..2, {n_feats})")
    recent = frame.iloc[-(TRAIL - 1) :]
    prices_only = recent if tuple(recent.columns) == PRICES else recent[list(PRICES)]
    trail = prices_only.to_numpy(dtype=np.float64)
    index = recent.index[-len(tail) :]
    prices, feats, vol = trail[-len(tail) :], tail, vols
    if asset in bar.rows:
        new = np.array([bar.rows[asset]], dtype=np.float64)
        feature.push(float(new[0, 3]))
        trail = np.vstack([trail, new])
        index = index.insert(len(index), bar.date)
        row, v = feature.row(trail, lambda: recent.index.insert(len(recent), bar.date))
        prices = np.vstack([prices, new])
        feats, vol = np.vstack([tail, row]), np.append(vols, v)
    # What make_feature_feed builds, from the rows at hand: a Backtrader feed of the
    # prices and the vol line, carrying the feature rows as one array (six times faster
    # than handing it a wide table to pick the columns from).
    frame = pd.DataFrame(
        np.hstack([prices, vol[:, None]]),
        columns=[*PRICES, VOL_LINE],
        index=index.rename("date"),
    )
    feed = feature_feed_class(())(dataname=frame, name=asset)
    feed.feature_names = tuple(spec.names)
    feed.feature_array = np.ascontiguousarray(feats, dtype=np.float64)
    feed.vol_array = np.ascontiguousarray(vol, dtype=np.float64)
    return feed


def step(
    blob: bytes,
    frames: dict[str, pd.DataFrame],
    bar: Bar,
    params: dict,
    costs: CostSpec,
    spec: FeatureSpec,
    start: pd.Timestamp,
    run_id: str,
) -> tuple[Replay, bytes]:
    """Trade ``bar`` from the snapshot ``blob`` taken after the last bar of ``frames``.

    Returns the run (its rows are those of ``bar``) and the snapshot after ``bar``.

    Raises
    ------
    SnapshotError
        The snapshot is unreadable, of another version, or does not fit the
        strategy, the assets or the stored bars.
    """
    state, arrays, features = open_snapshot(blob, spec)
    last = pd.Timestamp(state["date"])
    if sorted(features) != sorted(frames):
        raise SnapshotError(f"feature state for {sorted(features)}, expected {sorted(frames)}")
    cerebro = bt.Cerebro(stdstats=False, maxcpus=1)
    n_bars = 0
    for a, f in frames.items():
        feed = _feed(
            a, f.iloc[: f.index.searchsorted(last, "right")], arrays, features[a], bar, spec
        )
        n_bars += len(feed.vol_array)
        cerebro.adddata(feed, name=a)
    # The cash is set from the snapshot on the last restored bar, before the new bar's
    # fills; this starting value only seeds Backtrader's fund-share count (unused here).
    configure_broker(cerebro.broker, costs, 1.0)
    rec = new_recorder()
    day = bar.date.to_pydatetime()
    resume = Resume(bt.date2num(last.to_pydatetime()), state, arrays)
    cerebro.addstrategy(
        LedgerStrategy,
        trade_start=start,
        recorder=rec,
        run_id=run_id,
        capture=frozenset({bt.date2num(day)}),
        resume=resume,
        **params,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strat = cerebro.run()[0]
    key = bar.date.date().isoformat()
    if key not in rec["states"]:
        raise SnapshotError(f"the strategy did not reach {key} from the snapshot of {last.date()}")
    rows = ledger_rows(rec, strat.weights_frame(), strat.events, run_id, start)
    replay = Replay(rows, [str(w.message) for w in caught], rec["states"], n_bars)
    new_state, new_arrays = rec["states"][key]
    return replay, seal(new_state, new_arrays, features, key)

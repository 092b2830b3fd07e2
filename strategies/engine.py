"""Run one Backtrader backtest the same honest way for every strategy.

One function, :func:`run_backtest`, sets up Cerebro with the rules every
comparison in metabt shares: market orders that fill at the next bar's open
(never on the decision bar's close), commission and slippage on, a warm-up
period that is fed but not traded, and daily returns reported from the first
traded day. Strategies are :class:`strategies.base.TargetWeightStrategy`
subclasses.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import backtrader as bt
import numpy as np
import pandas as pd

from metabt.feeds.btfeed import ArrayPandasData
from metabt.feeds.errors import DataError
from metabt.strategies.base import TargetWeightStrategy

REQUIRED_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class CostSpec:
    """Trading costs, in basis points of traded value.

    Both default to 5 bp per side. Zero costs must be asked for explicitly
    (``CostSpec(0.0, 0.0)``); comparisons should never run without them.

    Parameters
    ----------
    commission_bps : float
        Commission as a percentage of the traded value (5.0 = 0.05 %).
    slippage_bps : float
        Adverse move of the fill price: buys fill at ``open * (1 + s)``,
        sells at ``open * (1 - s)``. Always applied in full, even when the
        slipped price lies outside the bar's high/low, so costs are never
        understated on bars that open at their high or low.
    """

    commission_bps: float = 5.0
    slippage_bps: float = 5.0

    def __post_init__(self) -> None:
        for name in ("commission_bps", "slippage_bps"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"CostSpec.{name} must be a finite number >= 0, got {value!r}")


@dataclass
class BacktestResult:
    """What one backtest produced.

    Attributes
    ----------
    returns : pd.Series
        Daily simple returns of portfolio value (after costs), tz-naive
        DatetimeIndex named ``date``, from ``trade_start`` on.
    weights : pd.DataFrame
        Long format ``date, asset, weight``: the target weight decided at the
        close of that bar (it is held from the next bar's open).
    trades : pd.DataFrame
        Filled orders ``date, asset, size, price, value, commission``; ``date``
        is the fill bar, ``size``/``value`` negative for sells.
    n_rejected : int
        Orders the broker refused for lack of cash; each is re-ordered on the
        next bar. A warning is issued when it is non-zero.
    bars_per_second : float
        Bars of all feeds (warm-up included) per second of ``cerebro.run``.
    events : list[dict]
        Whatever the strategy appended to ``self.events`` (e.g. adaptations).
    cash : float
        The starting value of the account (``returns`` compound from it).
    """

    returns: pd.Series
    weights: pd.DataFrame
    trades: pd.DataFrame
    n_rejected: int
    bars_per_second: float
    events: list[dict] = field(default_factory=list)
    cash: float = 1_000_000.0


def default_feed(symbol: str, frame: pd.DataFrame) -> bt.feeds.PandasData:
    """A plain OHLCV Backtrader feed over a canonical frame."""
    return ArrayPandasData(dataname=frame, name=symbol)


def _check_frame(symbol: str, frame: pd.DataFrame) -> None:
    # PandasData accepts unsorted or duplicate dates and NaN prices without a
    # word and then produces wrong numbers, so refuse them here.
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is not None:
        raise DataError(
            f"{symbol}: index must be a tz-naive DatetimeIndex; load it with feeds.loaders"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{symbol}: missing columns {missing}; expected {list(REQUIRED_COLUMNS)}")
    if not frame.index.is_monotonic_increasing or frame.index.has_duplicates:
        raise DataError(
            f"{symbol}: dates must be sorted and unique; use frame.sort_index() and "
            "drop duplicated dates"
        )
    bad = frame[list(REQUIRED_COLUMNS[:4])].isna().any(axis=1)
    if bad.any():
        raise DataError(
            f"{symbol}: NaN price on {frame.index[bad][0].date()}; "
            "drop or fill those rows with df.dropna()"
        )


def configure_broker(broker: bt.brokers.BackBroker, costs: CostSpec, cash: float) -> None:
    """The broker rules every metabt run shares: next-open fills, commission and slippage.

    One function for the backtest and the paper loop's one-bar runs, so both fill
    the same orders at the same prices with the same costs.
    """
    broker.setcash(float(cash))
    broker.set_coc(False)  # fill at the next open, never at the decision bar's close
    broker.set_coo(False)
    # Orders are sized at the decision close but checked at the fill: a
    # submission-time check against the stale close could reject a buy that the
    # sells submitted just before it will fund.
    broker.set_checksubmit(False)
    broker.setcommission(
        commission=costs.commission_bps / 1e4,
        commtype=bt.CommInfoBase.COMM_PERC,
        percabs=True,
        stocklike=True,
    )
    if costs.slippage_bps:
        broker.set_slippage_perc(
            costs.slippage_bps / 1e4,
            slip_open=True,
            slip_limit=True,
            slip_match=True,
            slip_out=True,
        )


def run_backtest(
    frames: dict[str, pd.DataFrame],
    strategy_cls: type[TargetWeightStrategy],
    params: dict,
    costs: CostSpec,
    trade_start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    cash: float = 1_000_000,
    feed_factory: Callable[[str, pd.DataFrame], bt.feeds.DataBase] | None = None,
    runonce: bool = True,
    preload: bool = True,
) -> BacktestResult:
    """Backtest ``strategy_cls`` on ``frames`` with next-open fills and costs.

    Parameters
    ----------
    frames : dict[str, pd.DataFrame]
        Canonical bar frames keyed by symbol (tz-naive ``date`` index, columns
        ``open, high, low, close, volume``). Bars before ``trade_start`` are
        fed to warm indicators up but never traded.
    strategy_cls : type[TargetWeightStrategy]
        The strategy to run.
    params : dict
        Strategy params; ``trade_start`` is set by this function.
    costs : CostSpec
        Commission and slippage; required so that zero costs are a choice.
    trade_start : pd.Timestamp, optional
        First day on which the strategy may decide and order. Its first order
        fills at the following bar's open. Returns start on this day.
    end : pd.Timestamp, optional
        Exclusive end: bars at or after it are not loaded at all.
    cash : float
        Starting portfolio value.
    feed_factory : callable, optional
        ``feed_factory(symbol, frame) -> bt data feed``; defaults to
        :func:`default_feed`. Use it to add feature lines to the feed.
    runonce, preload : bool
        Cerebro's engine modes; results do not depend on them.

    Returns
    -------
    BacktestResult
    """
    if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, TargetWeightStrategy)):
        raise TypeError(f"strategy_cls must subclass TargetWeightStrategy, got {strategy_cls!r}")
    if not frames:
        raise ValueError("frames is empty: pass at least one symbol")
    if "trade_start" in params:
        raise ValueError("pass trade_start to run_backtest, not inside params")
    feed_factory = feed_factory or default_feed
    trade_start = None if trade_start is None else pd.Timestamp(trade_start).normalize()

    cerebro = bt.Cerebro(runonce=runonce, preload=preload, stdstats=False, maxcpus=1)
    n_bars, last_bars = 0, {}
    for symbol, frame in frames.items():
        _check_frame(symbol, frame)
        if end is not None:
            frame = frame.loc[frame.index < pd.Timestamp(end)]
        if frame.empty:
            raise DataError(f"{symbol}: no bars before end={end}")
        n_bars += len(frame)
        last_bars[symbol] = frame.index[-1]
        cerebro.adddata(feed_factory(symbol, frame), name=symbol)

    if len(set(last_bars.values())) > 1:
        early = min(last_bars, key=lambda symbol: last_bars[symbol])
        warnings.warn(
            f"feeds end on different days ({early} on {last_bars[early].date()}, latest on "
            f"{max(last_bars.values()).date()}): after its last bar an asset's position is "
            "valued at its last close and its orders never fill; cut the frames to a common end",
            stacklevel=2,
        )

    configure_broker(cerebro.broker, costs, cash)

    cerebro.addstrategy(strategy_cls, trade_start=trade_start, **params)
    # Not the PyFolio analyzer: it returns a UTC index that breaks QuantStats.
    cerebro.addanalyzer(bt.analyzers.TimeReturn, timeframe=bt.TimeFrame.Days, _name="timereturn")

    t0 = time.perf_counter()
    strat = cerebro.run()[0]
    seconds = time.perf_counter() - t0

    raw = strat.analyzers.timereturn.get_analysis()
    returns = pd.Series(
        list(raw.values()),
        index=pd.DatetimeIndex(list(raw.keys())),
        dtype="float64",
        name="returns",
    )
    returns.index = returns.index.normalize()
    returns.index.name = "date"
    if trade_start is not None:
        returns = returns.loc[returns.index >= trade_start]

    weights = strat.weights_frame()
    first_bar = returns.index[0] if len(returns) and trade_start is not None else None
    if first_bar is not None and (weights.empty or weights["date"].iloc[0] > first_bar):
        ready = "never" if weights.empty else f"only on {weights['date'].iloc[0].date()}"
        warnings.warn(
            f"{strategy_cls.__name__}: indicators became ready {ready}, after the first "
            f"trading day {first_bar.date()}; give more warm-up bars before trade_start",
            stacklevel=2,
        )
    if strat.n_rejected:
        warnings.warn(
            f"{strategy_cls.__name__}: {strat.n_rejected} orders rejected for lack of cash "
            "(re-ordered on the next bar); raise cash_buffer to avoid it",
            stacklevel=2,
        )
    return BacktestResult(
        returns=returns,
        weights=weights,
        trades=strat.trades_frame(),
        n_rejected=strat.n_rejected,
        bars_per_second=n_bars / seconds if seconds > 0 else float("inf"),
        events=list(strat.events),
        cash=float(cash),
    )

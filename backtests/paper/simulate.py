"""One code path for backtest and paper trading: the backtest's strategy, recording what it does.

:class:`LedgerStrategy` is :class:`MetaAdaptiveStrategy` plus a recorder: the
orders the base class places (with their ledger ids), the broker's fills, each
bar's cash and positions, and on request the strategy's and broker's state
after a bar (the paper loop's snapshot, :mod:`backtests.paper.snapshot`). It
does not change one decision, which the test against a plain ``run_backtest``
checks.

:func:`simulate` replays every stored bar through
:func:`strategies.engine.run_backtest` with the strategy params the backtest
uses and the paper start as ``trade_start``: the paper loop's first bar (the
warm-up is fed once) and the check of a state without snapshots. Later bars
start from the snapshot (:mod:`backtests.paper.step`), fed the same way with
``resume``.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass

import backtrader as bt
import pandas as pd

from metabt.backtests.paper.ledger import Rows, sort_rows
from metabt.backtests.paper.snapshot import (
    SnapshotError,
    broker_state,
    restore_broker,
    restore_strategy,
    strategy_state,
)
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

log = logging.getLogger(__name__)

DEFAULT_CASH = 1_000_000.0
_TERMINAL = {
    bt.Order.Completed: "filled",
    bt.Order.Margin: "rejected",
    bt.Order.Rejected: "rejected",
    bt.Order.Canceled: "canceled",
    bt.Order.Expired: "expired",
}


@dataclass(frozen=True)
class Resume:
    """Where a short run picks up: the last restored bar (a backtrader date number) and the
    decoded snapshot state and arrays taken after it."""

    num: float
    state: dict
    arrays: dict


class LedgerStrategy(MetaAdaptiveStrategy):
    """MetaAdaptiveStrategy that writes what it does into ``recorder`` (a dict of lists).

    Params:
        recorder (dict): receives ``orders``, ``fills``, ``statuses`` and
            ``snapshots`` rows, times as backtrader floats, and in ``states`` the
            strategy and broker state after each bar of ``capture``.
        run_id (str): prefix of the order ids.
        capture (frozenset[float]): bars (backtrader date numbers) to keep the state of.
        resume (Resume | None): skip the bars up to ``resume.num`` and restore the
            strategy and broker there (a one-bar run of the paper loop).
    """

    params: tuple[tuple[str, object], ...] = (
        ("recorder", None),
        ("run_id", ""),
        ("capture", frozenset()),
        ("resume", None),
    )

    def __init__(self) -> None:
        super().__init__()
        self._order_ids: dict[int, str] = {}
        self._seqs: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._days: dict[float, str] = {}

    def next(self) -> None:
        resume = self.p.resume
        if resume is not None and self.datetime[0] <= resume.num:
            if self.datetime[0] == resume.num:  # the bars before only fill the feed's lags
                self._restore(resume)
            return
        if self.trading:
            # Before super().next(): the broker has filled this bar's opening orders
            # and values the book at this close; the new orders only fill tomorrow.
            self.p.recorder["snapshots"].append(
                (
                    self.datetime[0],
                    self.broker.getcash(),
                    self.broker.getvalue(),
                    [
                        (d._name, float(self.getposition(d).size), float(d.close[0]))
                        for d in self.datas
                    ],
                )
            )
        super().next()
        if self.datetime[0] in self.p.capture:
            arrays: dict = {}
            state = {
                "strategy": strategy_state(self, arrays),
                "broker": broker_state(self.broker, self._order_ids),
            }
            self.p.recorder["states"][_day(self.datetime[0], self._days)] = (state, arrays)

    def _restore(self, resume: Resume) -> None:
        try:
            restore_strategy(self, resume.state["strategy"], resume.arrays)
            self._order_ids.update(restore_broker(self, resume.state["broker"]))
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            # A field missing or of the wrong kind: the snapshot was not written by this code.
            raise SnapshotError(f"state unreadable ({type(exc).__name__}: {exc})") from None

    def order_target_percent(
        self, data: bt.LineSeries = None, target: float = 0.0, **kwargs: object
    ) -> bt.Order | None:
        order = super().order_target_percent(data=data, target=target, **kwargs)
        if order is not None:
            day = _day(self.datetime[0], self._days)
            seq = self._seqs[(data._name, day)]
            self._seqs[(data._name, day)] += 1
            oid = self._order_ids[order.ref] = order_id(self.p.run_id, data._name, day, seq)
            self.p.recorder["orders"].append(
                (
                    self.datetime[0],
                    data._name,
                    float(target),
                    oid,
                    seq,
                    float(order.created.size),
                    float(order.created.price),
                )
            )
        return order

    def notify_order(self, order: bt.Order) -> None:
        super().notify_order(order)
        rec, oid = self.p.recorder, self._order_ids[order.ref]
        for bit in order.executed.iterpending():
            rec["fills"].append(
                (bit.dt, order.data._name, oid, float(bit.size), float(bit.price), float(bit.comm))
            )
        if order.status in _TERMINAL:
            rec["statuses"].append((self.datetime[0], oid, _TERMINAL[order.status]))


def _day(num: float, cache: dict[float, str]) -> str:
    if num not in cache:
        cache[num] = bt.num2date(num).date().isoformat()
    return cache[num]


def order_id(run_id: str, asset: str, date: str, seq: int) -> str:
    """The id of the ``seq``-th order for ``asset`` decided on ``date`` in run ``run_id``."""
    return f"{run_id}:{asset}:{date}:{seq}"


def new_recorder() -> dict:
    return {"orders": [], "fills": [], "statuses": [], "snapshots": [], "states": {}}


def ledger_rows(
    rec: dict, weights: pd.DataFrame, events: list[dict], run_id: str, start: pd.Timestamp
) -> Rows:
    """The ledger rows of what a :class:`LedgerStrategy` run recorded."""
    days: dict[float, str] = {}
    weight_of = {
        (d.date().isoformat(), a): float(w)
        for d, a, w in weights[["date", "asset", "weight"]].itertuples(index=False)
    }
    rows: Rows = {
        name: []
        for name in (
            "orders",
            "fills",
            "order_status",
            "positions",
            "targets",
            "account",
            "adaptations",
        )
    }
    for t, asset, target, oid, seq, size, price in rec["orders"]:
        day = _day(t, days)
        rows["orders"].append(
            (day, asset, seq, oid, run_id, weight_of[(day, asset)], target, size, price)
        )
    bits: defaultdict[str, int] = defaultdict(int)
    for t, asset, oid, size, price, comm in rec["fills"]:
        rows["fills"].append(
            (_day(t, days), asset, f"{oid}:f{bits[oid]}", oid, size, price, size * price, comm)
        )
        bits[oid] += 1
    for t, oid, status in rec["statuses"]:
        rows["order_status"].append((_day(t, days), oid, status))
    for t, cash, value, held in rec["snapshots"]:
        day = _day(t, days)
        rows["account"].append((day, float(cash), float(value)))
        rows["positions"].extend((day, a, size, close, size * close) for a, size, close in held)
    rows["targets"] = [(d, a, w) for (d, a), w in weight_of.items()]
    ev_seq: defaultdict[tuple[str, str], int] = defaultdict(int)
    for ev in events:
        day = pd.Timestamp(ev["date"]).date().isoformat()
        if pd.Timestamp(day) < start:  # warm-up adaptations are not part of the paper run
            continue
        if ev["trigger"] == "alarm":
            # A regime alarm only moves the window's start; it has no losses (NaN, which
            # the table's NOT NULL columns refuse), and the adaptation it leads to is logged.
            continue
        key = (day, ev["asset"])
        rows["adaptations"].append(
            (
                day,
                ev["asset"],
                ev_seq[key],
                ev["trigger"],
                int(ev["window"]),
                float(ev["loss_before"]),
                float(ev["loss_after"]),
            )
        )
        ev_seq[key] += 1
    return sort_rows(rows)


@dataclass
class Replay:
    """What one Backtrader run of the paper strategy gave."""

    rows: Rows
    messages: list[str]
    states: dict[str, tuple[dict, dict]]  # date -> (state, arrays) after that bar
    bars_fed: int


def simulate(
    frames: dict[str, pd.DataFrame],
    params: dict,
    costs: CostSpec,
    features: FeatureSpec,
    start: pd.Timestamp,
    run_id: str,
    cash: float = DEFAULT_CASH,
    capture_dates: tuple[pd.Timestamp, ...] = (),
) -> Replay:
    """Ledger rows of every bar from ``start`` on, for the bars in ``frames``.

    Parameters
    ----------
    frames : dict of DataFrame
        Every stored bar (warm-up history and live bars), canonical layout.
    params : dict
        MetaAdaptiveStrategy params (``backtests.runner.meta_adaptive_params``).
    costs : CostSpec
        Commission and slippage, as in the backtest.
    features : FeatureSpec
        The feature lines of the feed (the model's spec).
    start : pd.Timestamp
        First paper-trading bar (the backtest's ``trade_start``).
    run_id : str
        Prefix of every order id.
    cash : float
        Starting cash.

    capture_dates : tuple of Timestamp
        Bars after which to keep the strategy's and broker's state.

    Returns
    -------
    Replay
        Ledger rows per table (see :data:`backtests.paper.ledger.LEDGER`), the
        text of the warnings the engine issued (mismatched feed ends, rejections),
        the states captured and how many bars were fed.
    """
    rec = new_recorder()
    capture = frozenset(bt.date2num(pd.Timestamp(d).to_pydatetime()) for d in capture_dates)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_backtest(
            frames,
            LedgerStrategy,
            {**params, "recorder": rec, "run_id": run_id, "capture": capture},
            costs,
            trade_start=start,
            cash=cash,
            feed_factory=lambda s, f: make_feature_feed(s, f, features),
        )
    rows = ledger_rows(rec, result.weights, result.events, run_id, start)
    return Replay(
        rows, [str(w.message) for w in caught], rec["states"], sum(map(len, frames.values()))
    )


def rows_on(rows: Rows, date: str) -> Rows:
    """The rows dated ``date`` (what one bar adds to the ledger)."""
    return {table: [r for r in items if r[0] == date] for table, items in rows.items()}


def rows_upto(rows: Rows, date: str) -> Rows:
    """The rows dated on or before ``date``."""
    return {table: [r for r in items if r[0] <= date] for table, items in rows.items()}

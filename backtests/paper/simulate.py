"""One code path for backtest and paper trading: replay the stored bars through the backtest.

For each new closed bar the paper loop runs :class:`MetaAdaptiveStrategy`
through :func:`strategies.engine.run_backtest` over every bar it has stored,
with the strategy params the backtest uses and the paper start as
``trade_start``. The engine is causal (a decision at bar ``t`` reads bars
``<= t``; orders fill at the next bar's open with the configured commission and
slippage), so the rows of bar ``t`` are exactly what an uninterrupted backtest
over the same bars gives, and resuming after a crash needs no pickled strategy
state: replaying the stored bars rebuilds the detectors and adapted weights.

:class:`LedgerStrategy` only *records*: the orders the base class places, the
broker's fills and each bar's cash and positions. It does not change one
decision, which the test against a plain ``run_backtest`` checks.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict

import backtrader as bt
import pandas as pd

from metabt.backtests.paper.ledger import Rows, sort_rows
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec
from metabt.strategies.engine import BacktestResult, CostSpec, run_backtest
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


class LedgerStrategy(MetaAdaptiveStrategy):
    """MetaAdaptiveStrategy that writes what it does into ``recorder`` (a dict of lists).

    Params:
        recorder (dict): receives ``orders``, ``fills``, ``statuses`` and
            ``snapshots`` rows, times as backtrader floats.
    """

    params = (("recorder", None),)

    def next(self) -> None:
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

    def order_target_percent(
        self, data: bt.LineSeries = None, target: float = 0.0, **kwargs: object
    ) -> bt.Order | None:
        order = super().order_target_percent(data=data, target=target, **kwargs)
        if order is not None:
            self.p.recorder["orders"].append(
                (
                    self.datetime[0],
                    data._name,
                    float(target),
                    order.ref,
                    float(order.created.size),
                    float(order.created.price),
                )
            )
        return order

    def notify_order(self, order: bt.Order) -> None:
        super().notify_order(order)
        rec = self.p.recorder
        for bit in order.executed.iterpending():
            rec["fills"].append(
                (
                    bit.dt,
                    order.data._name,
                    order.ref,
                    float(bit.size),
                    float(bit.price),
                    float(bit.comm),
                )
            )
        if order.status in _TERMINAL:
            rec["statuses"].append((self.datetime[0], order.ref, _TERMINAL[order.status]))


def _day(num: float, cache: dict[float, str]) -> str:
    if num not in cache:
        cache[num] = bt.num2date(num).date().isoformat()
    return cache[num]


def order_id(run_id: str, asset: str, date: str, seq: int) -> str:
    """The id of the ``seq``-th order for ``asset`` decided on ``date`` in run ``run_id``."""
    return f"{run_id}:{asset}:{date}:{seq}"


def _ledger_rows(
    rec: dict[str, list], result: BacktestResult, run_id: str, start: pd.Timestamp
) -> Rows:
    days: dict[float, str] = {}
    weights = {
        (d.date().isoformat(), a): float(w)
        for d, a, w in result.weights[["date", "asset", "weight"]].itertuples(index=False)
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
    ids: dict[int, str] = {}
    seqs: defaultdict[tuple[str, str], int] = defaultdict(int)
    for t, asset, target, ref, size, price in rec["orders"]:
        day = _day(t, days)
        seq = seqs[(asset, day)]
        seqs[(asset, day)] += 1
        ids[ref] = oid = order_id(run_id, asset, day, seq)
        rows["orders"].append(
            (day, asset, seq, oid, run_id, weights[(day, asset)], target, size, price)
        )
    bits: defaultdict[str, int] = defaultdict(int)
    for t, asset, ref, size, price, comm in rec["fills"]:
        oid = ids[ref]
        rows["fills"].append(
            (_day(t, days), asset, f"{oid}:f{bits[oid]}", oid, size, price, size * price, comm)
        )
        bits[oid] += 1
    for t, ref, status in rec["statuses"]:
        rows["order_status"].append((_day(t, days), ids[ref], status))
    for t, cash, value, held in rec["snapshots"]:
        day = _day(t, days)
        rows["account"].append((day, float(cash), float(value)))
        rows["positions"].extend((day, a, size, close, size * close) for a, size, close in held)
    rows["targets"] = [(d, a, w) for (d, a), w in weights.items()]
    ev_seq: defaultdict[tuple[str, str], int] = defaultdict(int)
    for ev in result.events:
        day = pd.Timestamp(ev["date"]).date().isoformat()
        if pd.Timestamp(day) < start:  # warm-up adaptations are not part of the paper run
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


def simulate(
    frames: dict[str, pd.DataFrame],
    params: dict,
    costs: CostSpec,
    features: FeatureSpec,
    start: pd.Timestamp,
    run_id: str,
    cash: float = DEFAULT_CASH,
) -> tuple[Rows, list[str]]:
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

    Returns
    -------
    rows, warnings
        Ledger rows per table (see :data:`backtests.paper.ledger.LEDGER`) and the
        text of the warnings the engine issued (mismatched feed ends, rejections).
    """
    rec: dict[str, list] = {"orders": [], "fills": [], "statuses": [], "snapshots": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_backtest(
            frames,
            LedgerStrategy,
            {**params, "recorder": rec},
            costs,
            trade_start=start,
            cash=cash,
            feed_factory=lambda s, f: make_feature_feed(s, f, features),
        )
    return _ledger_rows(rec, result, run_id, start), [str(w.message) for w in caught]


def rows_on(rows: Rows, date: str) -> Rows:
    """The rows dated ``date`` (what one bar adds to the ledger)."""
    return {table: [r for r in items if r[0] == date] for table, items in rows.items()}


def rows_upto(rows: Rows, date: str) -> Rows:
    """The rows dated on or before ``date``."""
    return {table: [r for r in items if r[0] <= date] for table, items in rows.items()}

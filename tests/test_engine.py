"""The backtest engine: next-open fills, costs, warm-up, no look-ahead, engine modes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import absurd_after, assert_same_upto, cut_at, random_frames, upto

from metabt.feeds.errors import DataError
from metabt.strategies.base import TargetWeightStrategy
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.static import BuyAndHold, Momentum, RsiReversion, SmaCross

COSTS = CostSpec(commission_bps=5.0, slippage_bps=5.0)


class Alternating(TargetWeightStrategy):
    """Long for `period` bars, then short for `period` bars, per asset.

    Assets are staggered by one bar, or with `mirror` flip on the same bar in
    opposite directions (asset i holds sign (-1) ** i).
    """

    params = (("period", 5), ("mirror", False))

    def target_weights(self) -> dict:
        n, out = len(self), {}
        for i, d in enumerate(self.datas):
            if self.p.mirror:
                out[d] = (-1.0) ** i * (1.0 if (n // self.p.period) % 2 == 0 else -1.0)
            else:
                out[d] = 1.0 if ((n + i) // self.p.period) % 2 == 0 else -1.0
        return out


class Recorder(BuyAndHold):
    def next(self) -> None:
        super().next()
        if self.trading and len(self.events) < 3:
            self.events.append({"date": self.datetime.date(0), "asset": self.data._name})


def test_orders_fill_at_next_open_with_full_slippage_and_commission():
    frames = random_frames(n_assets=2, n_bars=120)
    res = run_backtest(frames, Alternating, {}, COSTS)
    assert len(res.trades) > 10 and res.n_rejected == 0
    s, c = COSTS.slippage_bps / 1e4, COSTS.commission_bps / 1e4
    decided = res.weights.pivot(index="date", columns="asset", values="weight")
    outside = 0
    for tr in res.trades.itertuples():
        frame = frames[tr.asset]
        pos = frame.index.get_loc(tr.date)
        # The order was decided at the previous bar, where the target changed.
        before = decided.loc[frame.index[pos - 2], tr.asset] if pos >= 2 else 0.0
        assert decided.loc[frame.index[pos - 1], tr.asset] != before
        open_ = frame["open"].iloc[pos]
        expected = open_ * (1 + s) if tr.size > 0 else open_ * (1 - s)
        assert tr.price == pytest.approx(expected, rel=1e-12)
        assert tr.commission == pytest.approx(abs(tr.value) * c, rel=1e-12)
        outside += not frame["low"].iloc[pos] <= tr.price <= frame["high"].iloc[pos]
    assert outside > 0, "fixture should contain fills whose slipped price leaves the bar"


def test_zero_costs_fill_exactly_at_open_and_costs_reduce_returns():
    frames = random_frames(n_assets=2, n_bars=150, seed=1)
    free = run_backtest(frames, Alternating, {}, CostSpec(0.0, 0.0))
    paid = run_backtest(frames, Alternating, {}, COSTS)
    for tr in free.trades.itertuples():
        assert tr.price == frames[tr.asset].loc[tr.date, "open"]
        assert tr.commission == 0.0
    growth_free = (1 + free.returns).prod()
    growth_paid = (1 + paid.returns).prod()
    assert growth_paid < growth_free
    # Every trading day after the first fill loses something to costs or is equal.
    assert paid.trades["commission"].sum() > 0


def test_no_orders_before_trade_start_and_returns_start_there():
    frames = random_frames(n_bars=200, seed=2)
    start = frames["A0"].index[120]
    res = run_backtest(frames, SmaCross, {"fast": 5, "slow": 20}, COSTS, trade_start=start)
    assert res.returns.index[0] == start
    assert res.returns.iloc[0] == 0.0  # nothing held on the first trading day
    assert res.weights["date"].min() == start
    assert res.trades["date"].min() > start
    assert res.returns.index.tz is None and res.returns.index.name == "date"


STRATS = [
    (SmaCross, {"fast": 5, "slow": 30, "allow_short": True}),
    (Momentum, {"lookback": 20, "allow_short": True}),
    (RsiReversion, {"period": 7, "lower": 35.0, "upper": 65.0, "allow_short": True}),
    (BuyAndHold, {}),
]


@pytest.mark.parametrize("cls,params", STRATS, ids=lambda x: getattr(x, "__name__", ""))
def test_prefix_invariance_no_look_ahead(cls, params):
    frames = random_frames(n_bars=260, seed=3)
    start = frames["A0"].index[60]
    full = run_backtest(frames, cls, params, COSTS, trade_start=start)
    for cut in (100, 180):
        t = frames["A0"].index[cut]
        assert len(upto(full, t)[0]) > 0
        for variant in (cut_at(frames, t), absurd_after(frames, t)):
            other = run_backtest(variant, cls, params, COSTS, trade_start=start)
            assert_same_upto(other, full, t)


@pytest.mark.parametrize("cls,params", STRATS[:3], ids=lambda x: getattr(x, "__name__", ""))
def test_engine_modes_give_identical_results(cls, params):
    frames = random_frames(n_bars=220, seed=4)
    start = frames["A0"].index[50]
    ref = run_backtest(frames, cls, params, COSTS, trade_start=start)
    assert len(ref.trades) > 0
    for runonce, preload in [(False, True), (False, False), (True, False)]:
        res = run_backtest(
            frames, cls, params, COSTS, trade_start=start, runonce=runonce, preload=preload
        )
        pd.testing.assert_frame_equal(res.weights, ref.weights)
        pd.testing.assert_frame_equal(res.trades, ref.trades)
        pd.testing.assert_series_equal(res.returns, ref.returns)


def test_end_is_exclusive_and_not_loaded():
    frames = random_frames(n_bars=120, seed=5)
    end = frames["A0"].index[100]
    res = run_backtest(frames, BuyAndHold, {}, COSTS, end=end)
    assert res.returns.index.max() < end
    assert len(res.returns) == 100


def test_unfunded_orders_are_counted_and_retried_not_dropped():
    f = random_frames(n_assets=1, n_bars=40, seed=6)["A0"]
    close = f["close"].to_numpy()
    # Gap up at bars 1-3, down at bar 4: with no cash buffer, a 100 % buy sized
    # at the close cannot be paid at a higher open (plus costs) until bar 4.
    for i, gap in [(1, 1.005), (2, 1.005), (3, 1.005), (4, 0.99)]:
        f.iloc[i, f.columns.get_loc("open")] = close[i - 1] * gap
    f["high"] = f[["open", "high"]].max(axis=1)
    f["low"] = f[["open", "low"]].min(axis=1)
    with pytest.warns(UserWarning, match="3 orders rejected"):
        res = run_backtest({"A0": f}, BuyAndHold, {"cash_buffer": 0.0}, COSTS)
    assert res.n_rejected == 3
    assert list(res.trades["date"]) == [f.index[4]]  # retried each bar until it filled
    ok = run_backtest({"A0": f}, BuyAndHold, {}, COSTS)
    assert ok.n_rejected == 0 and list(ok.trades["date"]) == [f.index[1]]


def test_sells_are_submitted_before_buys():
    frames = random_frames(n_assets=2, n_bars=80, seed=7)
    res = run_backtest(frames, Alternating, {"period": 4, "mirror": True}, COSTS)
    assert res.n_rejected == 0
    assert res.trades.groupby("date").size().max() == 2
    for _, day in res.trades.groupby("date", sort=False):
        sizes = day["size"].to_numpy()
        assert not np.any((sizes[:-1] > 0) & (sizes[1:] < 0)), "a buy filled before a sell"


def test_warmup_too_short_warns():
    frames = random_frames(n_bars=80, seed=8)
    with pytest.warns(UserWarning, match="warm-up"):
        run_backtest(
            frames, SmaCross, {"fast": 5, "slow": 30}, COSTS, trade_start=frames["A0"].index[10]
        )


def test_ragged_ends_warn():
    frames = random_frames(n_bars=60, seed=9)
    frames["A1"] = frames["A1"].iloc[:50]
    with pytest.warns(UserWarning, match="A1 on"):
        run_backtest(frames, BuyAndHold, {}, COSTS)


def test_events_are_passed_through():
    res = run_backtest(random_frames(n_bars=30), Recorder, {}, COSTS)
    assert [e["asset"] for e in res.events] == ["A0"] * 3


def test_bad_input_is_refused():
    frames = random_frames(n_assets=1, n_bars=30)
    f = frames["A0"]
    with pytest.raises(DataError, match="sorted"):
        run_backtest({"A0": f.iloc[::-1]}, BuyAndHold, {}, COSTS)
    g = f.copy()
    g.iloc[5, g.columns.get_loc("close")] = np.nan
    with pytest.raises(DataError, match="NaN"):
        run_backtest({"A0": g}, BuyAndHold, {}, COSTS)
    with pytest.raises(ValueError):
        CostSpec(commission_bps=-1.0)

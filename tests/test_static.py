"""Static comparators follow their documented rules; in-sample tuning is honest and repeatable."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pandas as pd
import pytest
from conftest import random_frames as shared_random_frames

from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.static import (
    DEFAULT_GRIDS,
    STATIC_STRATEGIES,
    BuyAndHold,
    Momentum,
    RsiReversion,
    SmaCross,
)
from metabt.strategies.tuning import annualised_sharpe, expand_grid, tune_static

COSTS = CostSpec()


# Two assets S0, S1 from 2012 unless a test asks for more.
random_frames = partial(shared_random_frames, n_assets=2, start="2012-01-02", prefix="S")


def decided(res) -> pd.DataFrame:
    return res.weights.pivot(index="date", columns="asset", values="weight")


def test_buy_and_hold_holds_equal_weights_and_trades_once():
    frames = random_frames(n_assets=3)
    res = run_backtest(frames, BuyAndHold, {}, COSTS)
    assert np.allclose(decided(res).to_numpy(), 1 / 3)
    assert sorted(res.trades["asset"]) == ["S0", "S1", "S2"]
    assert (res.trades["size"] > 0).all()


def test_gross_cap_scales_weights_down():
    frames = random_frames(n_assets=3)
    res = run_backtest(frames, BuyAndHold, {"asset_weight": 0.6, "gross_cap": 1.2}, COSTS)
    assert np.allclose(decided(res).to_numpy(), 0.4)  # 3 x 0.6 = 1.8 capped to 1.2


def test_sma_cross_follows_pandas_moving_averages():
    frames = random_frames()
    res = run_backtest(frames, SmaCross, {"fast": 5, "slow": 20, "allow_short": True}, COSTS)
    w = decided(res)
    for sym, f in frames.items():
        fast, slow = f["close"].rolling(5).mean(), f["close"].rolling(20).mean()
        ref = np.where(fast > slow, 0.5, -0.5)[19:]
        assert w.index[0] == f.index[19]  # first decision once the slow SMA exists
        assert np.array_equal(w[sym].to_numpy(), ref)
        assert (w[sym] > 0).any() and (w[sym] < 0).any()


@pytest.mark.parametrize("allow_short", [False, True])
def test_momentum_holds_sign_of_trailing_return(allow_short):
    frames = random_frames(seed=1)
    res = run_backtest(frames, Momentum, {"lookback": 30, "allow_short": allow_short}, COSTS)
    w = decided(res)
    for sym, f in frames.items():
        ret = (f["close"] / f["close"].shift(30) - 1).iloc[30:]
        ref = np.where(ret > 0, 0.5, -0.5 if allow_short else 0.0)
        assert np.array_equal(w[sym].to_numpy(), ref)


def wilder_rsi(close: pd.Series, n: int) -> np.ndarray:
    diff = close.diff().to_numpy()
    up, down = np.clip(diff, 0, None), np.clip(-diff, 0, None)
    out = np.full(len(close), np.nan)
    avg_up, avg_down = math.fsum(up[1 : n + 1]) / n, math.fsum(down[1 : n + 1]) / n
    for i in range(n, len(close)):
        if i > n:
            avg_up = avg_up * (1 - 1 / n) + up[i] / n
            avg_down = avg_down * (1 - 1 / n) + down[i] / n
        out[i] = 100.0 - 100.0 / (1.0 + avg_up / avg_down)
    return out


@pytest.mark.parametrize("allow_short", [False, True])
def test_rsi_reversion_enters_oversold_and_exits_overbought(allow_short):
    frames = random_frames(n_bars=400, seed=2)
    params = {"period": 10, "lower": 35.0, "upper": 65.0, "allow_short": allow_short}
    res = run_backtest(frames, RsiReversion, params, COSTS)
    w = decided(res)
    for sym, f in frames.items():
        rsi, state, ref = wilder_rsi(f["close"], 10), 0.0, []
        for value in rsi[10:]:
            if value < 35.0:
                state = 1.0
            elif value > 65.0:
                state = -1.0 if allow_short else 0.0
            ref.append(state * 0.5)
        assert np.array_equal(w[sym].to_numpy(), np.array(ref))
        assert len(set(ref)) == (3 if allow_short else 2)


def test_default_grids_are_modest_and_every_config_runs_after_a_year_of_warm_up():
    frames = {"S0": random_frames(n_assets=1, n_bars=300)["S0"]}
    start = frames["S0"].index[260]
    for name, cls in STATIC_STRATEGIES.items():
        configs = expand_grid(DEFAULT_GRIDS[name])
        assert 1 <= len(configs) <= 16
        if name == "buy_and_hold":
            assert configs == [{}]
        for params in configs:
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*warm-up")
                res = run_backtest(frames, cls, params, COSTS, trade_start=start)
            assert len(res.weights) == 40


# -- tuning ------------------------------------------------------------------

GRID = {"fast": [5, 10], "slow": [20, 40]}


def _split(frames):
    idx = frames["S0"].index
    return idx[150], idx[300]


def test_tuning_scores_every_config_and_picks_the_in_sample_best():
    frames = random_frames(n_bars=400, seed=3)
    start, end = _split(frames)
    res = tune_static(frames, "sma_cross", GRID, COSTS, start, end, n_jobs=2)
    assert res.n_trials == 4 == len(res.table)
    assert res.table[["fast", "slow"]].to_dict("records") == expand_grid(GRID)
    assert res.best_score == res.table["sharpe"].max()
    # The score is the after-cost Sharpe of a plain backtest on [start, end).
    check = run_backtest(frames, SmaCross, res.best_params, COSTS, trade_start=start, end=end)
    assert check.returns.index[0] == start and check.returns.index[-1] < end
    assert res.scored_from == start
    assert annualised_sharpe(check.returns) == res.best_score


def test_all_configs_are_scored_on_the_same_warm_days():
    frames = random_frames(n_bars=200, seed=7)
    idx = frames["S0"].index
    with pytest.warns(UserWarning, match="scored from"):
        res = tune_static(frames, "sma_cross", GRID, COSTS, idx[10], idx[150], n_jobs=1)
    assert res.scored_from == idx[39]  # the 40-bar SMA's first value
    for row in res.table.itertuples():
        r = run_backtest(
            frames,
            SmaCross,
            {"fast": row.fast, "slow": row.slow},
            COSTS,
            trade_start=idx[10],
            end=idx[150],
        ).returns
        assert row.sharpe == annualised_sharpe(r.loc[idx[39] :])


def test_tuning_never_sees_bars_from_end_on():
    frames = random_frames(n_bars=400, seed=4)
    start, end = _split(frames)
    spoiled = {}
    for sym, f in frames.items():
        g = f.copy()
        late = g.index >= end
        # A crash straight after `end` that any peek would show.
        g.loc[late, ["open", "high", "low", "close"]] = 1.0 + np.arange(late.sum())[:, None]
        spoiled[sym] = g
    a = tune_static(frames, "sma_cross", GRID, COSTS, start, end, n_jobs=2)
    b = tune_static(spoiled, "sma_cross", GRID, COSTS, start, end, n_jobs=2)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.best_params == b.best_params


def test_tuning_is_deterministic_and_independent_of_n_jobs():
    frames = random_frames(n_bars=350, seed=5)
    start, end = _split(frames)
    grid = {"lookback": [10, 20, 40], "allow_short": [False, True]}
    a = tune_static(frames, "momentum", grid, COSTS, start, end, n_jobs=2)
    b = tune_static(frames, "momentum", grid, COSTS, start, end, n_jobs=1)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.best_params == b.best_params and a.n_trials == 6


def test_ties_go_to_the_first_config_in_grid_order():
    frames = random_frames(n_bars=200, seed=6)
    start, end = frames["S0"].index[50], frames["S0"].index[-1]
    # A constant target never crosses any rebalance threshold: identical runs.
    grid = {"rebalance_threshold": [0.2, 0.0, 0.1]}
    res = tune_static(frames, "buy_and_hold", grid, COSTS, start, end, n_jobs=1)
    assert res.table["sharpe"].nunique() == 1
    assert res.best_params == {"rebalance_threshold": 0.2}


def test_tuning_rejects_unknown_names_with_a_hint():
    frames = random_frames(n_bars=200)
    start, end = frames["S0"].index[100], frames["S0"].index[-1]
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        tune_static(frames, "sma_cross", {"fats": [5]}, COSTS, start, end)
    with pytest.raises(ValueError, match="did you mean 'momentum'"):
        tune_static(frames, "momentun", {}, COSTS, start, end)


def test_sharpe_of_a_flat_strategy_is_zero():
    assert annualised_sharpe(pd.Series(np.zeros(50))) == 0.0
    r = pd.Series([0.01, -0.005, 0.002, 0.004])
    assert annualised_sharpe(r) == pytest.approx(r.mean() / r.std() * math.sqrt(252))

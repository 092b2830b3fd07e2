"""Where a strategy earned, by true regime: the split is exact accounting of its returns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metabt.backtests.data import StudyData
from metabt.backtests.outputs import attribution
from metabt.backtests.regime_attribution import (
    AGE_BUCKETS,
    asset_contributions,
    bars_since_change,
    regime_attribution,
)
from metabt.backtests.runner import Segment
from metabt.feeds.synthetic import DEFAULT_REGIMES, SyntheticMarketSpec, make_regime_market
from metabt.feeds.validate import validate_bars
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.static import AutocorrRule, BuyAndHoldVT

NAMES = [r.name for r in DEFAULT_REGIMES]


@pytest.fixture(scope="module")
def lab():
    market = make_regime_market(SyntheticMarketSpec(n_assets=3, n_bars=700, seed=5))
    frames = {s: validate_bars(f, s) for s, f in market.frames.items()}
    start = frames["SYN0"].index[300]
    results = {
        # trades every day, long and short, in every regime
        "autocorr": run_backtest(frames, AutocorrRule, {"window": 20}, CostSpec(), start),
        "buy_and_hold_vt": run_backtest(frames, BuyAndHoldVT, {}, CostSpec(), start),
    }
    return market, frames, results


def test_the_assets_parts_of_each_day_sum_to_its_return(lab):
    _, frames, results = lab
    closes = {s: f["close"] for s, f in frames.items()}
    for result in results.values():
        parts = asset_contributions(result, closes).groupby("date")["contribution"].sum()
        assert len(result.trades) > 50
        np.testing.assert_allclose(parts.to_numpy(), result.returns.to_numpy(), atol=1e-12)


def _table(lab, names):
    market, frames, results = lab
    closes = {s: f["close"] for s, f in frames.items()}
    rows = [asset_contributions(r, closes).assign(strategy=n) for n, r in results.items()]
    return regime_attribution(pd.concat(rows), market.regimes, names)


def test_every_grouping_adds_up_to_the_strategys_returns(lab):
    _, frames, results = lab
    table = _table(lab, NAMES)
    for name, result in results.items():
        total = 100.0 * result.returns.sum()
        for by in ("regime", "age"):
            rows = table[(table["strategy"] == name) & (table["by"] == by)]
            assert rows["return_pct"].sum() == pytest.approx(total, abs=1e-9)
            assert rows["asset_bars"].sum() == len(result.returns) * len(frames)
    # A fixed order: strategies as run, regimes by id, ages youngest first.
    assert list(dict.fromkeys(table["strategy"])) == list(results)
    for name in results:
        mine = table[table["strategy"] == name]
        regimes = list(mine.loc[mine["by"] == "regime", "bucket"])
        assert regimes == sorted(regimes, key=NAMES.index)
        assert list(mine.loc[mine["by"] == "age", "bucket"]) == [b for b, _ in AGE_BUCKETS]


def test_a_bar_is_counted_in_the_regime_it_belongs_to(lab):
    market, _, results = lab
    table = _table(lab, None)
    rows = table[(table["strategy"] == "autocorr") & (table["by"] == "regime")]
    start = results["autocorr"].returns.index[0]
    expected = pd.concat([r.loc[start:] for r in market.regimes.values()]).value_counts()
    got = rows.set_index("bucket")["asset_bars"]
    assert {str(k): int(v) for k, v in expected.items()} == got.to_dict()


def test_a_bar_without_a_true_regime_is_refused_by_name(lab):
    market, frames, results = lab
    closes = {s: f["close"] for s, f in frames.items()}
    rows = asset_contributions(results["autocorr"], closes).assign(strategy="autocorr")
    regimes = dict(market.regimes)
    regimes["SYN1"] = regimes["SYN1"].iloc[:-5]
    with pytest.raises(ValueError, match=r"no true regime for SYN1 on \d{4}-\d\d-\d\d"):
        regime_attribution(rows, regimes, NAMES)


def test_bars_since_change_restarts_at_each_new_regime():
    regime = pd.Series([2, 2, 0, 0, 0, 1, 2], index=pd.bdate_range("2020-01-01", periods=7))
    assert bars_since_change(regime).tolist() == [1, 2, 1, 2, 3, 1, 1]


def test_the_run_folder_table_counts_each_segments_test_bars_once(lab):
    # A walk-forward study has one result per segment; each counts its own test bars only.
    market, frames, results = lab
    dates = results["autocorr"].returns.index
    middle = dates[len(dates) // 2]
    segments = [
        Segment(dates[0], middle, None, results, {}),  # type: ignore[arg-type]
        Segment(middle, None, None, results, {}),  # type: ignore[arg-type]
    ]
    data = StudyData(frames, dict(market.regimes), "synthetic (seed 5)")
    table = attribution(data, segments, NAMES)
    for name, result in results.items():
        rows = table[(table["strategy"] == name) & (table["by"] == "regime")]
        assert rows["asset_bars"].sum() == len(dates) * len(frames)
        assert rows["return_pct"].sum() == pytest.approx(100.0 * result.returns.sum(), abs=1e-9)
        assert set(rows["bucket"]) <= set(NAMES)

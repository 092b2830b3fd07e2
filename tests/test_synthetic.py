"""The synthetic regime market is reproducible and its regime labels match its bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metabt.feeds.errors import DataError
from metabt.feeds.synthetic import (
    DEFAULT_REGIMES,
    REGIMES_FILE,
    RegimeSpec,
    SyntheticMarketSpec,
    make_regime_market,
    read_regimes_csv,
    write_csv_folder,
)

SMALL = SyntheticMarketSpec(n_assets=3, n_bars=600, mean_duration=60, seed=7)


@pytest.fixture(scope="module")
def long_market():
    # Long enough that every regime has ~15k bars: the standard error of a lag-1
    # autocorrelation is then ~0.01, far below the +-0.15 designed effects.
    return make_regime_market(
        SyntheticMarketSpec(n_assets=4, n_bars=16000, mean_duration=150, seed=11)
    )


def _pairs(market, regime_id, column):
    """(r_t, r_{t-1}) log-return pairs where bars t-1, t and t-2 share one regime."""
    rows = []
    for symbol, frame in market.frames.items():
        ids = market.regimes[symbol].to_numpy()
        r = np.diff(np.log(frame[column].to_numpy()))  # r[i] is the return into bar i+1
        same = (ids[2:] == regime_id) & (ids[1:-1] == regime_id) & (ids[:-2] == regime_id)
        rows.append(np.c_[r[1:][same], r[:-1][same]])
    return np.concatenate(rows)


def test_same_seed_gives_identical_market():
    a, b = make_regime_market(SMALL), make_regime_market(SMALL)
    for symbol in a.frames:
        pd.testing.assert_frame_equal(a.frames[symbol], b.frames[symbol], check_exact=True)
        pd.testing.assert_series_equal(a.regimes[symbol], b.regimes[symbol], check_exact=True)


def test_different_seed_gives_different_market():
    a = make_regime_market(SMALL)
    b = make_regime_market(SyntheticMarketSpec(n_assets=3, n_bars=600, mean_duration=60, seed=8))
    assert not np.allclose(a.frames["SYN0"]["Close"], b.frames["SYN0"]["Close"])
    assert any(not a.regimes[s].equals(b.regimes[s]) for s in a.regimes)


def test_layout_and_ohlc_invariants():
    market = make_regime_market(SMALL)
    assert list(market.frames) == ["SYN0", "SYN1", "SYN2"]
    for symbol, f in market.frames.items():
        assert list(f.columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
        assert isinstance(f.index, pd.DatetimeIndex) and f.index.name == "Date"
        assert f.index.tz is None and f.index.is_monotonic_increasing and f.index.is_unique
        assert (f.index.day_of_week < 5).all()
        assert f.index[0] == pd.Timestamp("2005-01-03") and len(f) == 600
        assert (f[["Open", "High", "Low", "Close"]] > 0).all().all()
        assert (f["High"] >= f[["Open", "Close"]].max(axis=1)).all()
        assert (f["Low"] <= f[["Open", "Close"]].min(axis=1)).all()
        assert (f["Adj Close"] == f["Close"]).all()
        assert f["Volume"].dtype == np.int64 and (f["Volume"] > 0).all()
        assert np.isfinite(f.to_numpy(dtype=float)).all()
        regime = market.regimes[symbol]
        assert regime.index.equals(f.index)
        assert set(regime.unique()) <= set(range(len(DEFAULT_REGIMES)))


@pytest.mark.parametrize("regime_id", range(len(DEFAULT_REGIMES)))
def test_regime_labels_match_autocorrelation_and_vol(long_market, regime_id):
    design = DEFAULT_REGIMES[regime_id]
    for column in ("Close", "Open"):  # the AR structure must survive into next-open fills
        pairs = _pairs(long_market, regime_id, column)
        assert len(pairs) > 5000
        rho = np.corrcoef(pairs.T)[0, 1]
        assert np.sign(rho) == np.sign(design.ar)
        assert abs(rho - design.ar) < 0.05, (column, rho, design.ar)
        vol = pairs[:, 0].std()
        assert abs(vol / design.vol - 1.0) < 0.08, (column, vol, design.vol)


def test_open_is_previous_close_plus_a_small_gap(long_market):
    # A next-open fill must trade near the close the decision saw, not at a price
    # that already contains the coming day's move.
    spec = long_market.spec
    for symbol, frame in long_market.frames.items():
        gap = np.log(frame["Open"].to_numpy()[1:] / frame["Close"].to_numpy()[:-1])
        vol = np.array([r.vol for r in spec.regimes])[long_market.regimes[symbol].to_numpy()[1:]]
        assert abs(np.std(gap / vol) / spec.gap_vol - 1.0) < 0.1


def test_realised_vol_ranks_regimes_like_the_design(long_market):
    vols = [_pairs(long_market, k, "Close")[:, 0].std() for k in range(len(DEFAULT_REGIMES))]
    assert np.argsort(vols).tolist() == np.argsort([r.vol for r in DEFAULT_REGIMES]).tolist()


def test_mean_regime_duration_matches_spec(long_market):
    runs = []
    for ids in long_market.regimes.values():
        cuts = np.flatnonzero(np.diff(ids.to_numpy()) != 0)
        runs.extend(np.diff(cuts))  # complete runs only
    assert abs(np.mean(runs) / 150 - 1.0) < 0.2


def test_change_points_are_the_first_bars_of_new_regimes():
    market = make_regime_market(SMALL)
    for symbol, ids in market.regimes.items():
        points = market.change_points(symbol)
        assert points, "600 bars with mean duration 60 should switch at least once"
        for when in points:
            pos = ids.index.get_loc(when)
            assert ids.iloc[pos] != ids.iloc[pos - 1]
        assert len(points) == int((ids.diff().fillna(0) != 0).sum())
    with pytest.raises(DataError, match="unknown symbol"):
        market.change_points("SPY")


def test_schedule_sets_every_assets_regimes_exactly():
    spec = SyntheticMarketSpec(
        n_assets=2,
        n_bars=300,
        seed=3,
        schedule=((0, "trend_calm"), (100, "revert_volatile"), (250, "trend_calm")),
    )
    market = make_regime_market(spec)
    expected = np.r_[np.zeros(100), np.full(150, 3), np.zeros(50)]
    for symbol in market.frames:
        np.testing.assert_array_equal(market.regimes[symbol].to_numpy(), expected)
        assert market.change_points(symbol) == [market.frames[symbol].index[i] for i in (100, 250)]


def test_common_factor_sets_cross_asset_correlation():
    def mean_corr(correlation):
        spec = SyntheticMarketSpec(n_assets=4, n_bars=3000, seed=5, correlation=correlation)
        m = make_regime_market(spec)
        r = pd.DataFrame({s: np.log(f["Close"]).diff() for s, f in m.frames.items()}).corr()
        return r.to_numpy()[np.triu_indices(4, 1)].mean()

    assert abs(mean_corr(0.0)) < 0.05
    assert mean_corr(0.6) > mean_corr(0.3) > 0.1


def test_adding_assets_keeps_existing_paths():
    few = make_regime_market(SyntheticMarketSpec(n_assets=2, n_bars=400, seed=9, correlation=0.0))
    more = make_regime_market(SyntheticMarketSpec(n_assets=5, n_bars=400, seed=9, correlation=0.0))
    for symbol in few.frames:
        pd.testing.assert_frame_equal(few.frames[symbol], more.frames[symbol])


def test_written_csv_folder_reads_back_identically(tmp_path):
    market = make_regime_market(SMALL)
    folder = write_csv_folder(market, tmp_path / "syn")
    assert sorted(p.name for p in folder.iterdir()) == [
        "SYN0.csv",
        "SYN1.csv",
        "SYN2.csv",
        REGIMES_FILE,
    ]
    for symbol, frame in market.frames.items():
        text = (folder / f"{symbol}.csv").read_text().splitlines()[0]
        assert text == "Date,Open,High,Low,Close,Adj Close,Volume"
        back = pd.read_csv(folder / f"{symbol}.csv", index_col="Date", parse_dates=["Date"])
        pd.testing.assert_frame_equal(back, frame, check_exact=True, check_freq=False)
    regimes = read_regimes_csv(folder)
    assert list(regimes) == list(market.regimes)
    for symbol, ids in market.regimes.items():
        np.testing.assert_array_equal(regimes[symbol].to_numpy(), ids.to_numpy())
        assert regimes[symbol].index.equals(ids.index.rename("date"))
    table = pd.read_csv(folder / REGIMES_FILE)
    assert list(table.columns) == ["date", "symbol", "regime", "regime_name"]
    assert set(table["regime_name"]) <= {r.name for r in DEFAULT_REGIMES}


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"n_assets": 0}, "n_assets"),
        ({"correlation": 1.0}, "correlation"),
        ({"mean_duration": 0.5}, "mean_duration"),
        (
            {"regimes": (RegimeSpec("a", ar=1.2, vol=0.01), RegimeSpec("b", ar=0.0, vol=0.01))},
            "regimes",
        ),
        (
            {"regimes": (RegimeSpec("a", ar=0.1, vol=0.0), RegimeSpec("b", ar=0.0, vol=0.01))},
            "regimes",
        ),
        ({"schedule": ((5, "trend_calm"),)}, "schedule"),
        ({"schedule": ((0, "sideways"),)}, "schedule"),
    ],
)
def test_bad_spec_names_the_field(kwargs, key):
    with pytest.raises(DataError, match=f"SyntheticMarketSpec.{key}"):
        SyntheticMarketSpec(**kwargs)

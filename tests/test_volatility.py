"""The volatility forecasters: causal, fitted on the training period only, and the
meta-learned one adapts in numpy exactly as it was trained in torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from arch import arch_model
from rich.console import Console

from metabt.backtests.config import ConfigError, load_config, parse_config
from metabt.backtests.study import run_study
from metabt.backtests.vol_scores import accuracy, monthly_risk, paired_difference
from metabt.backtests.volatility import _check_heldout
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec, trailing_vol
from metabt.feeds.loaders import load_sample
from metabt.feeds.synthetic import SyntheticMarketSpec, make_regime_market
from metabt.feeds.tasks import TaskSpec
from metabt.feeds.validate import validate_bars
from metabt.feeds.vol_features import (
    VolFeatureSpec,
    reference_variance,
    variance_proxy,
    vol_features,
)
from metabt.metamodels.adapt import adapt
from metabt.metamodels.model import TrainConfig
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy
from metabt.metamodels.vol_model import (
    VolModel,
    VolObjective,
    fast_adapt_vol,
    load_vol_model,
    numpy_vol_loss_and_grad,
    save_vol_model,
    train_vol_model,
)
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import AdaptivePolicy, MetaAdaptiveStrategy
from metabt.strategies.static import BuyAndHoldVT
from metabt.strategies.vol_estimators import (
    Schedule,
    ewm_variance,
    fit_garch,
    forecast_variances,
    garch_path,
    garch_variance,
    meta_variance,
)

SPEC = VolFeatureSpec()
F = len(SPEC.names)
TASKS = TaskSpec(min_support=10, max_support=60, min_query=1, max_query=20)
# Nine weights: a large outer step and few meta-steps are enough for the mechanics.
QUICK = TrainConfig(
    algorithm="maml",
    meta_steps=100,
    tasks_per_step=32,
    outer_lr=0.03,
    eval_every=10,
    val_tasks=128,
    seed=0,
)
CALM, WILD = "trend_calm", "revert_volatile"  # 0.8% and 2.5% daily vol
SWITCH_EVERY = 150


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def switching() -> tuple[dict[str, pd.DataFrame], list[int]]:
    """Assets whose volatility switches between 0.8% and 2.5% a day every 150 bars."""
    n_bars = 2400
    changes = list(range(0, n_bars, SWITCH_EVERY))
    schedule = tuple((b, CALM if i % 2 == 0 else WILD) for i, b in enumerate(changes))
    market = make_regime_market(
        SyntheticMarketSpec(n_assets=6, n_bars=n_bars, schedule=schedule, seed=5)
    )
    frames = {s: validate_bars(f, f"synthetic:{s}") for s, f in market.frames.items()}
    return frames, changes[1:]


@pytest.fixture(scope="module")
def trained(switching) -> tuple[VolModel, pd.Timestamp]:
    frames, changes = switching
    split = frames["SYN0"].index[1500]
    index = frames["SYN0"].index
    known = {s: [index[c] for c in changes if index[c] < split] for s in frames}
    return train_vol_model(frames, SPEC, TASKS, QUICK, None, split, known), split


def _random_window(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.7, (n, F))
    y = rng.chisquare(1, n) * np.exp(rng.normal(0, 0.3, n))
    params = {"w0": rng.normal(0, 0.3, (F, 1)), "b0": rng.normal(0, 0.2, (1,))}
    return x, y, params


@pytest.mark.parametrize("per_weight", [False, True])
def test_numpy_adaptation_equals_the_torch_reference(per_weight):
    x, y, params = _random_window(1)
    lr = {"w0": np.full((F, 1), 0.05), "b0": np.array([0.3])} if per_weight else 0.2
    theta = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    torch_lr = {k: torch.tensor(v) for k, v in lr.items()} if per_weight else lr
    ref = adapt(
        theta,
        torch.tensor(x),
        torch.tensor(y),
        5,
        torch_lr,
        PolicySpec(n_features=F, hidden=()),
        VolObjective(),
    )
    fast = fast_adapt_vol(params, x, y, 5, lr)
    for k in params:
        np.testing.assert_allclose(fast[k], ref[k].numpy(), atol=1e-6, rtol=0)
    # the adaptation moved the weights: the comparison is not of two copies of the init
    assert np.abs(fast["b0"] - params["b0"]).max() > 1e-3
    torch_loss = VolObjective().window_loss(theta, torch.tensor(x), torch.tensor(y))
    assert numpy_vol_loss_and_grad(params, x, y)[0] == pytest.approx(float(torch_loss), abs=1e-9)


def test_zero_weights_forecast_exactly_the_ewm_estimator(switching):
    frame = switching[0]["SYN0"]
    zero = VolModel({"w0": np.zeros((F, 1)), "b0": np.zeros(1)}, 0.1, 0, SPEC, TASKS)
    meta = meta_variance(frame, zero)
    ok = meta.notna()
    assert ok.sum() > 2000
    np.testing.assert_allclose(meta[ok], ewm_variance(frame)[ok], rtol=1e-12)


@pytest.mark.parametrize("estimator", ["ewm", "garch", "gjr_garch", "har", "meta"])
def test_the_forecast_at_t_uses_bars_up_to_t_only(switching, trained, estimator):
    frames, _ = switching
    model, split = trained
    frame = frames["SYN1"]
    t = 1700  # after the split and after the first re-fit point (refit_every=100)
    corrupt = frame.copy()
    rng = np.random.default_rng(0)
    scale = np.exp(np.cumsum(rng.normal(0, 0.05, len(frame) - t - 1)))
    corrupt.iloc[t + 1 :, :4] = frame.iloc[t + 1 :, :4].mul(scale, axis=0).to_numpy()
    schedule = Schedule(split, refit_every=100)
    kw = {"schedule": schedule, "model": model}
    full = forecast_variances({"A": frame}, estimator, **kw)["A"]
    bent = forecast_variances({"A": corrupt}, estimator, **kw)["A"]
    cut = forecast_variances({"A": frame.iloc[: t + 1]}, estimator, **kw)["A"]
    np.testing.assert_allclose(bent.iloc[: t + 1], full.iloc[: t + 1], rtol=1e-10)
    np.testing.assert_allclose(cut, full.iloc[: t + 1], rtol=1e-10)
    # the later bars do move later forecasts: the check above can fail
    assert not np.allclose(bent.iloc[t + 2 :], full.iloc[t + 2 :])


def test_garch_baselines_are_fitted_on_the_training_period_only(switching):
    frame = switching[0]["SYN2"]
    split = frame.index[1500]
    r = np.log(frame["close"]).diff().to_numpy()
    # Triple every move after the split: a fit that saw those bars would change.
    wild = frame.copy()
    close = frame["close"]
    tripled = close.iloc[1500] * np.exp(3 * np.log(close).diff().iloc[1501:].cumsum())
    wild.iloc[1501:, :4] = frame.iloc[1501:, :4].mul(tripled / close.iloc[1501:], axis=0)
    for asymmetric in (False, True):
        train_fit = fit_garch(r[:1500], asymmetric)
        got = garch_variance(wild, Schedule(split, refit_every=0), asymmetric)
        r_wild = np.log(wild["close"]).diff().to_numpy()
        np.testing.assert_allclose(got, garch_path(r_wild, [(0, train_fit)]), rtol=1e-10)
        refit = fit_garch(r_wild[:2000], asymmetric)
        assert refit["alpha"] != pytest.approx(train_fit["alpha"], rel=1e-3)


def test_adapted_forecaster_tracks_a_vol_switch_within_10_bars_faster_than_ewm(switching, trained):
    frames, changes = switching
    model, split = trained
    first_test = frames["SYN0"].index.searchsorted(split)
    # "Tracks the new level within 10 bars": the forecast made 10 bars into the new
    # regime has covered at least two thirds of the way, in log vol, from the old level
    # to the new one (median over switches); EWM with its 20-bar half-life has not.
    gap = np.log(0.025 / 0.008)
    covered: dict[str, list[float]] = {"meta": [], "ewm": []}
    for frame in frames.values():
        forecasts = {
            "meta": np.sqrt(meta_variance(frame, model).to_numpy()),
            "ewm": np.sqrt(ewm_variance(frame).to_numpy()),
        }
        for c in (c for c in changes if c > first_test + 30):
            new = 0.008 if (c // SWITCH_EVERY) % 2 == 0 else 0.025
            for name, vol in forecasts.items():
                covered[name].append(1.0 - abs(np.log(vol[c + 10] / new)) / gap)
    meta, ewm = np.median(covered["meta"]), np.median(covered["ewm"])
    assert len(covered["meta"]) >= 20
    assert meta >= 2 / 3, f"meta covered {meta:.0%} of the way to the new level in 10 bars"
    assert ewm < 2 / 3 and meta > ewm, f"meta {meta:.0%} vs ewm {ewm:.0%}"


def test_vol_forecaster_checkpoint_round_trip(tmp_path, trained):
    model, _ = trained
    save_vol_model(model, tmp_path / "vol", {"seed": 0})
    back = load_vol_model(tmp_path / "vol")
    for k in model.params:
        np.testing.assert_allclose(back.params[k], model.params[k], rtol=1e-6)
    assert back.feature_spec == model.feature_spec and back.inner_steps == model.inner_steps
    assert back.train_period == model.train_period
    x = vol_features(_frame(), SPEC).dropna().to_numpy()[:30]
    np.testing.assert_allclose(back.log_ratio(x), model.log_ratio(x), atol=1e-5)


def _frame() -> pd.DataFrame:
    market = make_regime_market(SyntheticMarketSpec(n_assets=1, n_bars=300, seed=9))
    return validate_bars(market.frames["SYN0"], "synthetic:SYN0")


def test_vol_forecast_setting_sizes_the_vol_targeted_positions():
    frame = _frame()
    forecast = {"SYN0": pd.Series(0.02, index=frame.index)}
    res = run_backtest(
        {"SYN0": frame},
        BuyAndHoldVT,
        {"vol_target": 0.01, "vol_forecast": forecast},
        CostSpec(),
    )
    # weight = vol_target / forecast vol, whatever the EWM estimate says
    np.testing.assert_allclose(res.weights["weight"], 0.5)
    plain = run_backtest({"SYN0": frame}, BuyAndHoldVT, {"vol_target": 0.01}, CostSpec())
    assert plain.weights["weight"].std() > 0.01


def test_accuracy_scores_a_perfect_forecast_as_zero_qlike():
    rng = np.random.default_rng(3)
    f = np.exp(rng.normal(-9, 0.5, 5000))
    exact = accuracy(f, f)
    assert exact["qlike"] == pytest.approx(0.0, abs=1e-12) and exact["mz_r2"] == pytest.approx(1.0)
    noisy = accuracy(f, f * rng.chisquare(1, 5000))
    assert noisy["qlike"] > 0.5 and noisy["mz_r2"] < 0.5
    assert accuracy(f * 2, f * rng.chisquare(1, 5000))["qlike"] > noisy["qlike"]


def test_risk_of_a_true_vol_forecast_is_on_target_on_average():
    rng = np.random.default_rng(4)
    index = pd.bdate_range("2010-01-01", periods=2000)
    vol = np.where(np.arange(2000) % 400 < 200, 0.005, 0.02)
    close = 100 * np.exp(np.cumsum(np.r_[0.0, (vol[:-1] * rng.standard_normal(1999))]))
    risk = monthly_risk(pd.Series(vol**2, index=index), pd.DataFrame({"close": close}, index=index))
    assert abs(risk.mean() - 1.0) < 0.05
    lagging = monthly_risk(
        pd.Series(0.01**2, index=index), pd.DataFrame({"close": close}, index=index)
    )
    assert abs(lagging - 1).mean() > 2 * abs(risk - 1).mean()


def test_unknown_heldout_symbol_is_refused_in_one_line():
    config = parse_config(
        {"data": {"split": "2012-01-03"}, "study": "volatility", "volatility": {"heldout": ["QQQ"]}}
    )
    with pytest.raises(ConfigError, match="volatility.heldout names 'QQQ'.*data.symbols"):
        _check_heldout(config, ["SPY", "TLT"])


def test_the_estimator_setting_changes_the_meta_strategys_sizing_not_its_decisions():

    features = FeatureSpec()
    frames = {s: f.loc["2008-01-01":"2009-06-30"] for s, f in load_sample(["SPY", "TLT"]).items()}
    spec = PolicySpec(n_features=len(features.names))
    pol = AdaptivePolicy(
        spec, ObjectiveSpec(), to_numpy(init_params(spec, 0)), 0.5, 5, features.names
    )
    doubled = {s: 2 * trailing_vol(f, features) for s, f in frames.items()}

    def run(**extra):
        return run_backtest(
            frames,
            MetaAdaptiveStrategy,
            {"policy": pol, "min_window": 20, "gross_cap": 10.0, **extra},
            CostSpec(),
            trade_start=pd.Timestamp("2008-09-02"),
            feed_factory=lambda s, f: make_feature_feed(s, f, features),
        )

    plain, sized = run(), run(vol_forecast=doubled)
    np.testing.assert_allclose(sized.weights["weight"], plain.weights["weight"] / 2, rtol=1e-9)
    assert (plain.weights["weight"].abs() > 0.01).any()
    assert pd.DataFrame(sized.events).equals(pd.DataFrame(plain.events))


def test_paired_difference_interval_covers_zero_for_equal_forecasts_only():
    rng = np.random.default_rng(6)
    a = rng.chisquare(1, 2000)
    same = paired_difference(a, a + rng.normal(0, 0.1, 2000), 20)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    worse = paired_difference(a + 0.2, a, 20)
    assert worse["diff"] == pytest.approx(0.2) and worse["ci95"][0] > 0


@pytest.mark.parametrize("asymmetric", [False, True])
def test_garch_path_is_archs_own_filter_with_the_fitted_parameters(switching, asymmetric):
    frame = switching[0]["SYN3"]
    r = np.log(frame["close"]).diff().to_numpy()[1:1200]
    p = fit_garch(r, asymmetric)
    model = arch_model(r * 100, mean="Zero", vol="GARCH", p=1, o=int(asymmetric), q=1)
    fixed = [p["omega"] * 1e4, p["alpha"], *([p["gamma"]] if asymmetric else []), p["beta"]]
    sigma2 = (model.fix(fixed).conditional_volatility / 100) ** 2
    # ours at t forecasts bar t+1; arch's at t+1 was made from bars <= t. The start
    # values differ (backcasts), and their effect has died out after 300 bars.
    np.testing.assert_allclose(garch_path(r, [(0, p)])[300:-1], sigma2[301:], rtol=1e-9)


@pytest.mark.parametrize("proxy", ["squared", "parkinson"])
def test_the_target_of_bar_t_is_the_next_bars_variance_over_the_reference(proxy):
    frame = _frame()
    spec = VolFeatureSpec(proxy=proxy)
    _, y, _ = spec.task_rows(frame)
    expected = variance_proxy(frame, proxy).shift(-1) / reference_variance(frame, spec)
    np.testing.assert_allclose(y[:-1], expected.to_numpy()[:-1], rtol=1e-6)
    assert np.isnan(y[-1])  # the last bar's next bar is unknown
    if proxy == "parkinson":
        high_low = np.log(frame["high"] / frame["low"]).to_numpy()
        np.testing.assert_allclose(
            variance_proxy(frame, proxy), high_low**2 / (4 * np.log(2)), rtol=1e-12
        )


def test_volatility_study_writes_every_estimators_numbers(tmp_path):
    config = load_config(Path(__file__).parent / "data" / "tiny_volatility.toml")
    out = tmp_path / "run"
    run_study(config, out, progress=False, console=Console(quiet=True))
    result = json.loads((out / "volatility.json").read_text())
    for name in ("ewm", "garch", "gjr_garch", "har", "meta"):
        for key in ("qlike_all", "qlike_after_change", "qlike_heldout_after_change", "mz_r2"):
            assert np.isfinite(result[name][key]), (name, key)
    # the held-out asset never reached meta-training; the forecaster is saved and loadable
    assert result["assets"] == ["SPY", "XLE"] and result["heldout"] == ["TLT"]
    assert load_vol_model(out / "model_vol").train_period[1] <= "2008-01-02"
    assert set(result["backtests"]) == {"buy_and_hold_vt@meta"}
    assert load_config(out / "config.toml") == config

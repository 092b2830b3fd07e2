"""MetaAdaptiveStrategy: no look-ahead, engine modes agree, zero steps means no adaptation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import absurd_after, assert_same_upto, cut_at, upto

from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec
from metabt.feeds.loaders import load_sample
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy
from metabt.strategies.adaptive_policy import AdaptivePolicy
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

SPEC = FeatureSpec()
COSTS = CostSpec()


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    sample = load_sample(["SPY", "TLT", "XLE"])
    return {s: f.loc["2007-06-01":"2009-12-31"] for s, f in sample.items()}


def policy(steps: int = 5, seed: int = 0) -> AdaptivePolicy:
    spec = PolicySpec(n_features=len(SPEC.names))
    return AdaptivePolicy(
        spec, ObjectiveSpec(), to_numpy(init_params(spec, seed)), 0.5, steps, SPEC.names
    )


def run(frames, trade_start, **params):
    params = {
        "policy": policy(),
        "min_window": 30,
        "max_window": 90,
        "readapt_every": 5,
        "calendar_window": 60,
        **params,
    }
    return run_backtest(
        frames,
        MetaAdaptiveStrategy,
        params,
        COSTS,
        trade_start=trade_start,
        feed_factory=lambda s, f: make_feature_feed(s, f, SPEC),
        runonce=params.pop("runonce", True),
        preload=params.pop("preload", True),
    )


@pytest.mark.parametrize(
    "trigger, detector",
    # bocpd_ar runs as one vectorised bank; cusum as a bank of per-asset detectors.
    [("regime", "bocpd_ar"), ("regime", "cusum"), ("regime", "loss"), ("calendar", "bocpd_ar")],
)
def test_positions_orders_and_adaptations_up_to_t_ignore_the_future(frames, trigger, detector):
    start = frames["SPY"].index[150]
    full = run(frames, start, trigger=trigger, detector=detector)
    assert len(full.events) > 3, "the test needs adaptations to mean anything"
    if detector == "cusum":
        assert any(e["trigger"] == "alarm" for e in full.events), "cusum must move a window"
    for cut in (300, 480):
        t = frames["SPY"].index[cut]
        expected = upto(full, t)
        assert len(expected[0]) > 0
        for variant in (cut_at(frames, t), absurd_after(frames, t)):
            assert_same_upto(run(variant, start, trigger=trigger, detector=detector), full, t)


def test_runonce_and_preload_modes_agree(frames):
    start = frames["SPY"].index[150]
    ref = run(frames, start)
    for runonce, preload in [(False, True), (False, False)]:
        res = run(frames, start, runonce=runonce, preload=preload)
        pd.testing.assert_frame_equal(res.weights, ref.weights)
        pd.testing.assert_frame_equal(res.trades, ref.trades)
        assert res.events == ref.events


def test_zero_adaptation_steps_is_exactly_the_no_adaptation_ablation(frames):
    start = frames["SPY"].index[150]
    zero = run(frames, start, policy=policy(steps=0), trigger="regime")
    frozen = run(frames, start, policy=policy(steps=5), trigger="never")
    adaptations = [e for e in zero.events if e["trigger"] != "alarm"]
    assert len(adaptations) > 0 and len(frozen.events) == 0
    assert all(e["loss_before"] == e["loss_after"] for e in adaptations)
    pd.testing.assert_frame_equal(zero.weights, frozen.weights)
    pd.testing.assert_frame_equal(zero.trades, frozen.trades)


def test_adaptation_lowers_the_support_loss_and_respects_windows(frames):
    res = run(frames, frames["SPY"].index[150], trigger="calendar")
    events = pd.DataFrame(res.events)
    assert (events["window"].between(30, 60)).all()
    assert (events["loss_after"] < events["loss_before"]).mean() > 0.9


def test_long_only_never_shorts(frames):
    res = run(frames, frames["SPY"].index[150], long_only=True)
    assert (res.weights["weight"] >= 0).all()
    assert (res.weights["weight"] > 0).any()


def test_oracle_moves_the_window_start_on_the_given_dates(frames):
    dates = [frames["TLT"].index[200], frames["TLT"].index[400]]
    res = run(frames, frames["SPY"].index[150], trigger="oracle", known_changes={"TLT": dates})
    alarms = [e for e in res.events if e["trigger"] == "alarm"]
    assert [pd.Timestamp(e["date"]) for e in alarms] == dates
    assert all(e["asset"] == "TLT" for e in alarms)


def test_bad_params_are_refused(frames):
    with pytest.raises(ValueError, match="trigger"):
        run(frames, None, trigger="weekly")
    with pytest.raises(ValueError, match="min_window"):
        run(frames, None, min_window=100, max_window=50)
    with pytest.raises(ValueError, match="policy"):
        run(frames, None, policy=None)


def test_policy_is_not_mutated_by_adaptation(frames):
    pol = policy()
    before = {k: v.copy() for k, v in pol.params.items()}
    run(frames, frames["SPY"].index[150], policy=pol, trigger="calendar")
    for k, v in before.items():
        np.testing.assert_array_equal(pol.params[k], v)


def test_features_are_read_by_name_not_by_column_position(frames):
    import dataclasses

    base = policy()
    order = list(reversed(range(len(SPEC.names))))
    # The same network with its inputs listed in the reverse order must trade the same.
    flipped = dataclasses.replace(
        base,
        params={**base.params, "w0": base.params["w0"][order]},
        feature_names=tuple(SPEC.names[i] for i in order),
    )
    start = frames["SPY"].index[150]
    want, got = run(frames, start), run(frames, start, policy=flipped)
    assert len(want.weights) > 100
    pd.testing.assert_frame_equal(got.weights, want.weights, rtol=1e-9)
    missing = dataclasses.replace(base, feature_names=(*SPEC.names[:-1], "not_a_feature"))
    with pytest.raises(ValueError, match="not_a_feature"):
        run(frames, start, policy=missing)


@pytest.mark.parametrize("trigger", ["regime", "calendar"])
def test_warm_up_computes_only_the_adaptations_in_force_when_trading_starts(frames, trigger):
    # Trading from the last bar (what `metabt serve` runs): every earlier bar is warm-up,
    # so at most one queued adaptation per asset is computed, plus the last bar's own,
    # and the last bar's weights are those of the run that traded all along.
    last = frames["SPY"].index[-1]
    full = run(frames, frames["SPY"].index[150], trigger=trigger)
    short = run(frames, last, trigger=trigger)
    scheduled = [e for e in full.events if e["trigger"] != "alarm"]
    computed = [e for e in short.events if e["trigger"] != "alarm"]
    assert len(scheduled) > 20 * len(frames)
    assert 0 < len(computed) <= 2 * len(frames)
    assert all(e in scheduled for e in computed)  # the same adaptations, to the last digit
    pd.testing.assert_frame_equal(
        short.weights.reset_index(drop=True),
        full.weights[full.weights["date"] == last].reset_index(drop=True),
    )

"""The re-adaptation schedule: which bars each adaptation uses, and when.

Guards the rules the README documents: a bar's label is used only from two bars
later on and equals the task builder's; after a regime change (true or
detected) the strategy trades its fallback (by default the unadapted initial
weights) until ``min_window`` labels of the new regime exist, then re-adapts
every ``readapt_every`` bars on the labelled bars since the change (at most
``max_window``); the calendar ablation always uses the last ``calendar_window``
labelled bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest

from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec, compute_features, compute_labels, trailing_vol
from metabt.feeds.loaders import load_sample
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy
from metabt.strategies import detectors
from metabt.strategies.adaptive_policy import AdaptivePolicy
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import FALLBACKS, MetaAdaptiveStrategy

SPEC = FeatureSpec()
MIN, MAX, EVERY, CAL = 20, 70, 5, 40


@dataclass(frozen=True)
class RecordingPolicy(AdaptivePolicy):
    """An AdaptivePolicy that keeps every window it is asked to adapt on."""

    calls: list = field(default_factory=list, compare=False)

    def adapt(self, x, y, inv_vol=None, when=None):
        self.calls.append((np.array(x), np.array(y), np.array(inv_vol)))
        return super().adapt(x, y, inv_vol, when)


def recording_policy() -> RecordingPolicy:
    spec = PolicySpec(n_features=len(SPEC.names))
    return RecordingPolicy(
        spec, ObjectiveSpec(), to_numpy(init_params(spec, 0)), 0.3, 3, SPEC.names
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_sample(["SPY"])["SPY"].loc["2006-01-01":"2008-06-30"]


class ParamLog(MetaAdaptiveStrategy):
    """MetaAdaptiveStrategy that logs, per date, the weights it traded, the position and the
    adaptation it reports in force."""

    params = (("log", None),)  # type: ignore[assignment]  # backtrader merges them

    def target_weights(self) -> dict:
        positions = super().target_weights()
        d = self.datas[0]
        weights = {k: v.copy() for k, v in self.asset_params(d)[0].items()}
        self.p.log[self.datetime.date(0)] = (weights, positions.get(d), self._state[d].in_force)
        return positions


def run(frame: pd.DataFrame, pol: AdaptivePolicy, strategy=MetaAdaptiveStrategy, **params):
    params = {
        "policy": pol,
        "min_window": MIN,
        "max_window": MAX,
        "readapt_every": EVERY,
        "calendar_window": CAL,
        **params,
    }
    return run_backtest(
        {"SPY": frame},
        strategy,
        params,
        CostSpec(),
        trade_start=frame.index[SPEC.warmup + 10],
        feed_factory=lambda s, f: make_feature_feed(s, f, SPEC),
    )


def adaptations(result) -> pd.DataFrame:
    events = pd.DataFrame(result.events)
    return events.loc[events["trigger"] != "alarm"].reset_index(drop=True)


def test_each_adaptation_uses_the_task_builders_pairs_known_two_bars_earlier(frame):
    pol = recording_policy()
    result = run(frame, pol, trigger="calendar")
    events = adaptations(result)
    assert len(events) == len(pol.calls) > 20
    feats = compute_features(frame, SPEC).to_numpy()
    labels = compute_labels(frame, SPEC).to_numpy()
    inv_vol = 1.0 / trailing_vol(frame, SPEC).to_numpy()
    dates = frame.index
    for (x, y, a), (_, event) in zip(pol.calls, events.iterrows()):
        t = dates.get_loc(pd.Timestamp(event["date"]))
        first = dates.get_loc(pd.Timestamp(event["start"]))
        last = first + len(y) - 1
        # the newest label used at bar t is bar t-2's (open t-1 -> open t), never later
        assert last == t - 2
        np.testing.assert_allclose(x, feats[first : last + 1], rtol=0, atol=1e-12)
        np.testing.assert_allclose(y, labels[first : last + 1], rtol=1e-12)
        np.testing.assert_allclose(a, inv_vol[first : last + 1], rtol=1e-12)


def test_calendar_windows_are_the_last_calendar_window_bars_every_readapt_every(frame):
    events = adaptations(run(frame, recording_policy(), trigger="calendar"))
    # the first once MIN labels exist, growing by EVERY until CAL are there
    assert list(events["window"].iloc[:5]) == [
        MIN,
        MIN + EVERY,
        MIN + 2 * EVERY,
        MIN + 3 * EVERY,
        CAL,
    ]
    assert (events["window"].iloc[4:] == CAL).all()
    gaps = np.diff([frame.index.get_loc(pd.Timestamp(d)) for d in events["date"]])
    assert (gaps == EVERY).all()


@pytest.mark.parametrize("change_bar", [300, 420])
def test_after_a_true_change_windows_hold_only_new_regime_bars(frame, change_bar):
    change = frame.index[change_bar]
    result = run(frame, recording_policy(), trigger="oracle", known_changes={"SPY": [change]})
    events = adaptations(result)
    after = events.loc[pd.to_datetime(events["date"]) >= change]
    first = after.iloc[0]
    t = frame.index.get_loc(pd.Timestamp(first["date"]))
    # the fallback ends exactly when min_window labels of the new regime exist:
    # bars change .. t-2 are labelled at t, so t = change + MIN + 1
    assert t == change_bar + MIN + 1
    assert first["window"] == MIN
    for _, event in after.iterrows():
        start = pd.Timestamp(event["start"])
        assert start >= change  # no old-regime bar in any window after the change
        t = frame.index.get_loc(pd.Timestamp(event["date"]))
        assert event["window"] == min(t - 2 - change_bar + 1, MAX)
    # and in between, the unadapted initial weights traded
    weights = result.weights.set_index("date")["weight"]
    frozen = run(frame, recording_policy(), trigger="never").weights.set_index("date")["weight"]
    span = weights.index[(weights.index >= change) & (weights.index < pd.Timestamp(first["date"]))]
    assert len(span) == MIN + 1
    pd.testing.assert_series_equal(weights.loc[span], frozen.loc[span])


def same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fallback", FALLBACKS)
def test_the_fallback_trades_until_the_new_regime_has_min_window_labels(frame, fallback):
    change_bar, log = 300, {}
    pol = recording_policy()
    run(
        frame,
        pol,
        strategy=ParamLog,
        log=log,
        trigger="oracle",
        known_changes={"SPY": [frame.index[change_bar]]},
        fallback=fallback,
    )
    day = [t.date() for t in frame.index]
    old, _, old_event = log[day[change_bar - 1]]  # adapted to the old regime
    assert not same(old, pol.params) and old_event["date"] < day[change_bar]
    for t in range(change_bar, change_bar + MIN + 1):  # the new regime's first adaptation is
        weights, position, event = log[day[t]]  # at change_bar + MIN + 1 (see the test above)
        assert same(weights, old if fallback == "previous" else pol.params), t
        assert (position == 0.0) == (fallback == "flat"), t
        assert event is (old_event if fallback == "previous" else None), t
    weights, position, event = log[day[change_bar + MIN + 1]]
    assert not same(weights, old) and not same(weights, pol.params)
    assert position != 0.0
    assert event["date"] == day[change_bar + MIN + 1] and event["window"] == MIN


def test_the_never_adapted_ablation_trades_its_initial_weights_whatever_the_fallback(frame):
    # meta_frozen shares the study's [strategy] settings: a flat fallback must not flatten it
    weights = {
        fallback: run(frame, recording_policy(), trigger="never", fallback=fallback).weights
        for fallback in FALLBACKS
    }
    assert (weights["initial"]["weight"].abs() > 0).mean() > 0.5
    for fallback in ("flat", "previous"):
        pd.testing.assert_frame_equal(weights[fallback], weights["initial"])


def test_an_unknown_fallback_is_refused(frame):
    with pytest.raises(ValueError, match="fallback must be one of"):
        run(frame, recording_policy(), fallback="sideways")


class Scripted:
    """A detector that fires on given update numbers with given run lengths."""

    input_kind = "return"

    def __init__(self, script: dict[int, int]) -> None:
        self.script, self.n, self._run = script, 0, 0

    def update(self, x: float) -> bool:
        self.n += 1
        self._run += 1
        if self.n in self.script:
            self._run = self.script[self.n]
            return True
        return False

    @property
    def run_length(self) -> int:
        return self._run

    change_probability = 0.0

    def reset(self) -> None:
        self.n = 0


def test_a_detector_alarm_starts_the_window_at_its_estimated_change(frame, monkeypatch):
    # update n is fed the return of bar n (bar 0 has none), so an alarm at update 350
    # with run length 12 dates the change at bar 350 - 12 + 1 = 339.
    monkeypatch.setitem(
        detectors.DETECTORS,
        "scripted",
        type(
            "ScriptedFactory",
            (),
            {
                "from_settings": staticmethod(lambda: Scripted({350: 12})),
                "Settings": type("S", (), {"__dataclass_fields__": {}}),
            },
        ),
    )
    result = run(frame, recording_policy(), trigger="regime", detector="scripted")
    events = pd.DataFrame(result.events)
    alarm = events.loc[events["trigger"] == "alarm"].iloc[0]
    assert frame.index.get_loc(pd.Timestamp(alarm["date"])) == 350
    after = adaptations(result)
    after = after.loc[pd.to_datetime(after["date"]) > pd.Timestamp(alarm["date"])]
    first = after.iloc[0]
    assert frame.index.get_loc(pd.Timestamp(first["start"])) == 339
    assert frame.index.get_loc(pd.Timestamp(first["date"])) == 339 + MIN + 1

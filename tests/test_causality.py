"""No look-ahead in features and tasks: truncating or corrupting the future changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from metabt.feeds.features import FeatureSpec, compute_features, trailing_vol
from metabt.feeds.tasks import TaskSampler, TaskSpec

SPEC = FeatureSpec()


def corrupt_after(frame: pd.DataFrame, cut: int, value: float) -> pd.DataFrame:
    out = frame.copy()
    out.iloc[cut + 1 :] = value
    return out


def assert_prefix_invariant(
    fn: Callable[[pd.DataFrame], pd.DataFrame], frame: pd.DataFrame, n_cuts: int = 20, seed: int = 0
) -> None:
    """``fn`` up to bar t must not depend on anything after t (truncated, NaN or absurd)."""
    full = fn(frame)
    rng = np.random.default_rng(seed)
    for cut in rng.choice(np.arange(SPEC.warmup, len(frame) - 2), size=n_cuts, replace=False):
        expected = full.iloc[: cut + 1]
        for variant in (
            frame.iloc[: cut + 1],
            corrupt_after(frame, cut, np.nan),
            corrupt_after(frame, cut, 1e9),
        ):
            got = fn(variant).iloc[: cut + 1]
            pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_features_are_prefix_invariant(spy):
    assert_prefix_invariant(lambda f: compute_features(f, SPEC), spy)
    assert_prefix_invariant(lambda f: trailing_vol(f, SPEC).to_frame(), spy)


def test_a_feature_that_peeks_one_bar_ahead_is_caught(spy):
    def peeking(frame: pd.DataFrame) -> pd.DataFrame:
        out = compute_features(frame, SPEC)
        out["trend"] = np.log(frame["close"].shift(-1) / frame["close"])
        return out

    with pytest.raises(AssertionError):
        assert_prefix_invariant(peeking, spy)


def test_features_are_defined_after_warmup_and_finite(spy):
    feats = compute_features(spy, SPEC)
    assert feats.iloc[: SPEC.warmup].isna().all().all()
    assert np.isfinite(feats.iloc[SPEC.warmup :].to_numpy()).all()


def fixed(support: int, query: int) -> TaskSpec:
    return TaskSpec(min_support=support, max_support=support, min_query=query, max_query=query)


def tasks_until(frame: pd.DataFrame, end: object) -> dict[str, np.ndarray]:
    changes = {"SPY": list(frame.index[[300, 420, 555]])}
    sampler = TaskSampler(
        {"SPY": frame},
        SPEC,
        TaskSpec(min_support=10, max_support=40, min_query=3, max_query=10),
        end=end,
        changes=changes,
    )
    fixed_batch = sampler.all_tasks()
    drawn = sampler.sample(300, np.random.default_rng(0))
    return {
        "sx": fixed_batch.support_x,
        "sy": fixed_batch.support_y,
        "qx": fixed_batch.query_x,
        "qy": fixed_batch.query_y,
        "anchors": fixed_batch.anchors,
        **{
            f"drawn_{k}": getattr(drawn, k)
            for k in (
                "support_x",
                "support_y",
                "support_inv_vol",
                "support_mask",
                "query_x",
                "query_y",
                "query_inv_vol",
                "query_mask",
                "anchors",
            )
        },
    }


@pytest.mark.parametrize("variant", ["truncated", "nan", "absurd"])
def test_tasks_bounded_by_end_never_use_later_bars(spy, variant):
    end = spy.index[600]
    reference = tasks_until(spy, end)
    cut = 599  # last bar before `end`
    changed = {
        "truncated": spy.iloc[: cut + 1],
        "nan": corrupt_after(spy, cut, np.nan),
        "absurd": corrupt_after(spy, cut, 1e9),
    }[variant]
    got = tasks_until(changed, end)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert np.isfinite(reference["qy"]).all()


def test_support_labels_are_known_at_the_anchor_and_query_follows(spy):
    spec = fixed(30, 10)
    sampler = TaskSampler({"SPY": spy}, SPEC, spec)
    batch = sampler.all_tasks(stride=97)
    feats = compute_features(spy, SPEC).to_numpy(np.float32)
    dates = spy.index.to_numpy()
    for i, anchor in enumerate(batch.anchors):
        t = int(np.searchsorted(dates, anchor))
        # the last support row is bar t-2: its label (open t-1 -> open t) is known at t
        np.testing.assert_array_equal(batch.support_x[i, -1], feats[t - 2])
        np.testing.assert_array_equal(batch.query_x[i, 0], feats[t])


def test_sampler_respects_start_and_end(spy):
    start, end = spy.index[300], spy.index[700]
    sampler = TaskSampler({"SPY": spy}, SPEC, fixed(40, 10), start, end)
    batch = sampler.all_tasks()
    dates = spy.index
    first_anchor = dates.get_loc(pd.Timestamp(batch.anchors.min()))
    last_anchor = dates.get_loc(pd.Timestamp(batch.anchors.max()))
    assert first_anchor - 40 - 1 == 300  # first support bar is `start`
    assert last_anchor + 10 - 1 + 2 == 699  # last query label's open is the last bar before `end`


def test_change_anchored_supports_start_at_the_change_and_labels_stay_known(spy):
    changes = {"SPY": list(spy.index[[400, 700, 1000]])}
    spec = TaskSpec(min_support=20, max_support=60, min_query=5, max_query=10, change_share=1.0)
    batch = TaskSampler({"SPY": spy}, SPEC, spec, changes=changes).sample(
        200, np.random.default_rng(3)
    )
    feats = compute_features(spy, SPEC).to_numpy(np.float32)
    dates = spy.index.to_numpy()
    starts = {400, 700, 1000}
    for i, anchor in enumerate(batch.anchors):
        t = int(np.searchsorted(dates, anchor))
        n = int(batch.support_mask[i].sum())
        assert spec.min_support <= n <= spec.max_support
        # support = bars t-n-1 .. t-2: it starts exactly at a change, all labels known at t
        assert t - n - 1 in starts
        window = batch.window(i)
        np.testing.assert_array_equal(window["support_x"], feats[t - n - 1 : t - 1])
        np.testing.assert_array_equal(window["query_x"][0], feats[t])
        # padding comes first and is masked out
        assert batch.support_mask[i, : spec.max_support - n].sum() == 0


def test_bar_shape_false_drops_exactly_the_four_bar_shape_inputs(spy):
    lean = FeatureSpec(bar_shape=False)
    assert set(SPEC.names) - set(lean.names) == {"vol_ratio", "trend", "range_z", "volume_z"}
    assert set(lean.names) < set(SPEC.names)
    pd.testing.assert_frame_equal(
        compute_features(spy, lean), compute_features(spy, SPEC)[list(lean.names)]
    )
    assert_prefix_invariant(lambda f: compute_features(f, lean), spy, n_cuts=5)

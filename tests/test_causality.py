"""No look-ahead in features and tasks: truncating or corrupting the future changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from feeds.features import FeatureSpec, compute_features, trailing_vol
from feeds.tasks import TaskSampler, TaskSpec

SPEC = FeatureSpec()


def corrupt_after(frame: pd.DataFrame, cut: int, value: float) -> pd.DataFrame:
    out = frame.copy()
    out.iloc[cut + 1:] = value
    return out


def assert_prefix_invariant(fn: Callable[[pd.DataFrame], pd.DataFrame], frame: pd.DataFrame,
                            n_cuts: int = 20, seed: int = 0) -> None:
    """``fn`` up to bar t must not depend on anything after t (truncated, NaN or absurd)."""
    full = fn(frame)
    rng = np.random.default_rng(seed)
    for cut in rng.choice(np.arange(SPEC.warmup, len(frame) - 2), size=n_cuts, replace=False):
        expected = full.iloc[: cut + 1]
        for variant in (frame.iloc[: cut + 1], corrupt_after(frame, cut, np.nan),
                        corrupt_after(frame, cut, 1e9)):
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
    assert np.isfinite(feats.iloc[SPEC.warmup:].to_numpy()).all()


def tasks_until(frame: pd.DataFrame, end: object) -> dict[str, np.ndarray]:
    batch = TaskSampler({"SPY": frame}, SPEC, TaskSpec(support=30, query=10), end=end).all_tasks()
    return {"sx": batch.support_x, "sy": batch.support_y, "qx": batch.query_x,
            "qy": batch.query_y, "anchors": batch.anchors}


@pytest.mark.parametrize("variant", ["truncated", "nan", "absurd"])
def test_tasks_bounded_by_end_never_use_later_bars(spy, variant):
    end = spy.index[600]
    reference = tasks_until(spy, end)
    cut = 599  # last bar before `end`
    changed = {"truncated": spy.iloc[: cut + 1], "nan": corrupt_after(spy, cut, np.nan),
               "absurd": corrupt_after(spy, cut, 1e9)}[variant]
    got = tasks_until(changed, end)
    for key, value in reference.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert np.isfinite(reference["qy"]).all()


def test_support_labels_are_known_at_the_anchor_and_query_follows(spy):
    spec = TaskSpec(support=30, query=10)
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
    sampler = TaskSampler({"SPY": spy}, SPEC, TaskSpec(support=40, query=10), start, end)
    batch = sampler.all_tasks()
    dates = spy.index
    first_anchor = dates.get_loc(pd.Timestamp(batch.anchors.min()))
    last_anchor = dates.get_loc(pd.Timestamp(batch.anchors.max()))
    assert first_anchor - 40 - 1 == 300  # first support bar is `start`
    assert last_anchor + 10 - 1 + 2 == 699  # last query label's open is the last bar before `end`

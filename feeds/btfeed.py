"""Backtrader feeds that carry metabt's features as extra lines.

Strategies read ``data.ret_1[0]``, ``data.vol[0]`` ... from the feed instead of
recomputing features per bar, and the feature values are exactly the ones the
meta-learner was trained on (same functions, see :mod:`feeds.features`).
"""

from __future__ import annotations

from functools import lru_cache

import backtrader as bt
import pandas as pd

from feeds.features import FeatureSpec, compute_features, trailing_vol

VOL_LINE = "vol"


@lru_cache(maxsize=None)
def feature_feed_class(names: tuple[str, ...]) -> type[bt.feeds.PandasData]:
    """A ``PandasData`` subclass with one extra line per feature name plus ``vol``.

    Backtrader declares lines at class level, so a feature set needs its own
    class; it is built once per distinct tuple of names and cached.
    """
    extra = tuple(names) + (VOL_LINE,)
    attrs = {
        "lines": extra,
        # -1: Backtrader finds the column by its name in the DataFrame.
        "params": tuple((name, -1) for name in extra),
        "datafields": bt.feeds.PandasData.datafields + list(extra),
    }
    return type("FeatureData", (bt.feeds.PandasData,), attrs)


def feature_frame(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The canonical bars joined with their features and trailing vol."""
    feats = compute_features(frame, spec)
    out = frame.join(feats)
    out[VOL_LINE] = trailing_vol(frame, spec)
    return out


def make_feature_feed(symbol: str, frame: pd.DataFrame, spec: FeatureSpec,
                      **kwargs: object) -> bt.feeds.PandasData:
    """A Backtrader data feed of ``frame`` with the features of ``spec`` as lines."""
    cls = feature_feed_class(spec.names)
    return cls(dataname=feature_frame(frame, spec), name=symbol, **kwargs)

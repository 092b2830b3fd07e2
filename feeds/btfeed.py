"""Backtrader feeds that carry metabt's features (as an array per asset, optionally as lines).

Strategies read each bar's features from the feed (``data.feature_array[i]``, or the
optional lines ``data.ret_1[0]`` ...) instead of recomputing them per bar, and the
feature values are exactly the ones the meta-learner was trained on (same
functions, see :mod:`feeds.features`).
"""

from __future__ import annotations

from functools import cache

import backtrader as bt
import numpy as np
import pandas as pd

from metabt.feeds.features import FeatureSpec, compute_features, trailing_vol

VOL_LINE = "vol"


class ArrayPandasData(bt.feeds.PandasData):
    """``PandasData`` that reads each bar from numpy-backed lists.

    Backtrader's own ``_load`` fetches every value with ``DataFrame.iloc``,
    which is about half of a multi-asset backtest's run time; copying the
    columns out once at ``start`` gives the same bars, much faster.
    """

    def start(self) -> None:
        super().start()
        frame = self.p.dataname
        self._columns = [
            (getattr(self.lines, alias), frame.iloc[:, col].to_numpy(dtype=float).tolist())
            for alias in self.getlinealiases()
            if alias != "datetime" and (col := self._colmapping[alias]) is not None
        ]
        self._dtnums = [bt.date2num(ts.to_pydatetime()) for ts in frame.index]

    def _load(self) -> bool:
        self._idx += 1
        if self._idx >= len(self._dtnums):
            return False
        for line, values in self._columns:
            line[0] = values[self._idx]
        self.lines.datetime[0] = self._dtnums[self._idx]
        return True


@cache
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
        "datafields": ArrayPandasData.datafields + list(extra),
    }
    return type("FeatureData", (ArrayPandasData,), attrs)


def feature_frame(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The canonical bars joined with their features and trailing vol."""
    feats = compute_features(frame, spec)
    out = frame.join(feats)
    out[VOL_LINE] = trailing_vol(frame, spec)
    return out


def make_feature_feed(
    symbol: str,
    frame: pd.DataFrame,
    spec: FeatureSpec,
    feature_lines: bool = False,
    table: pd.DataFrame | None = None,
    **kwargs: object,
) -> bt.feeds.PandasData:
    """A Backtrader data feed of ``frame`` that carries the features of ``spec``.

    The features travel as ``feed.feature_array`` (``(bars, features)``, float64,
    row ``i`` = the feed's ``i``-th bar, columns ``feed.feature_names``) and the
    trailing vol as ``feed.vol_array``:
    a strategy reads a whole row with one index instead of one line per feature.
    Backtrader advances every line of every feed on every bar, so the fifteen feature
    lines would cost more than the strategy itself; ``feature_lines=True`` adds them
    anyway (``data.ret_1[0]`` ..., e.g. to plot them). The ``vol`` line is always there.

    Parameters
    ----------
    table : DataFrame, optional
        ``feature_frame(frame, spec)`` computed beforehand (e.g. once per asset for
        every strategy of a study); it must have ``frame``'s dates.
    """
    if table is None:
        table = feature_frame(frame, spec)
    elif not table.index.equals(frame.index):
        raise ValueError(f"{symbol}: the precomputed feature table does not have the bars' dates")
    cls = feature_feed_class(spec.names if feature_lines else ())
    feed = cls(dataname=table, name=symbol, **kwargs)
    feed.feature_names = tuple(spec.names)
    feed.feature_array = np.ascontiguousarray(table[list(spec.names)].to_numpy(dtype=np.float64))
    feed.vol_array = table[VOL_LINE].to_numpy(dtype=np.float64)
    return feed

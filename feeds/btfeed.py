"""Backtrader feeds that carry metabt's features (as an array per asset, optionally as lines).

Strategies read each bar's features from the feed (``data.feature_array[i]``, or the
optional lines ``data.ret_1[0]`` ...) instead of recomputing them per bar, and the
feature values are exactly the ones the meta-learner was trained on (same
functions, see :mod:`feeds.features`).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd

from metabt.feeds.features import FeatureSpec, compute_features, trailing_vol
from metabt.feeds.loaders import load_csv
from metabt.feeds.validate import CANONICAL_COLUMNS, validate_bars

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
        values = frame.to_numpy(dtype=float)  # one copy of the table, not one per column
        self._columns = [
            (getattr(self.lines, alias), values[:, col].tolist())
            for alias in self.getlinealiases()
            if alias != "datetime" and (col := self._colmapping[alias]) is not None
        ]
        self._dtnums = [bt.date2num(ts) for ts in frame.index.to_pydatetime()]

    def _load(self) -> bool:
        self._idx += 1
        if self._idx >= len(self._dtnums):
            return False
        for line, values in self._columns:
            line[0] = values[self._idx]
        self.lines.datetime[0] = self._dtnums[self._idx]
        return True


# The feature names are spelled in the class name, joined by this separator, so that a
# process that never built the class (a worker of cerebro.optstrategy) can rebuild it
# from the name when it unpickles a feed (see __getattr__ below).
_CLASS_PREFIX, _SEP = "FeatureData", "__"


@cache
def feature_feed_class(names: tuple[str, ...]) -> type[bt.feeds.PandasData]:
    """A ``PandasData`` subclass with one extra line per feature name plus ``vol``.

    Backtrader declares lines at class level, so a feature set needs its own
    class; it is built once per distinct tuple of names and cached. It is
    registered in this module under a name that spells the features, so its
    feeds pickle (``cerebro.optstrategy`` with several processes).
    """
    if any(_SEP in n or not n.isidentifier() for n in names):
        raise ValueError(f"feature names must be identifiers without {_SEP!r}: {names}")
    extra = tuple(names) + (VOL_LINE,)
    qualname = _SEP.join((_CLASS_PREFIX, *names))
    attrs = {
        "lines": extra,
        # -1: Backtrader finds the column by its name in the DataFrame.
        "params": tuple((name, -1) for name in extra),
        "datafields": ArrayPandasData.datafields + list(extra),
        "__module__": __name__,
        "__qualname__": qualname,
    }
    cls = type(qualname, (ArrayPandasData,), attrs)
    globals()[qualname] = cls
    return cls


def __getattr__(name: str) -> type[bt.feeds.PandasData]:
    # Unpickling a feed in a fresh process looks its class up here by name.
    prefix, *names = name.split(_SEP)
    if prefix != _CLASS_PREFIX or not names:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return feature_feed_class(tuple(names))


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


def _bars_of_feed(data: bt.feeds.DataBase) -> pd.DataFrame:
    """Every bar of a Backtrader feed (CSV, Pandas, ...) as a canonical frame.

    A feed reads its source only inside a Cerebro, so it is run once through an
    empty strategy; the preloaded lines then hold every bar.
    """
    cerebro = bt.Cerebro(stdstats=False, preload=True, runonce=True)
    cerebro.adddata(data)
    cerebro.addstrategy(bt.Strategy)
    cerebro.run()
    lines = data.lines
    return pd.DataFrame(
        {name: list(getattr(lines, name).array) for name in CANONICAL_COLUMNS},
        index=pd.DatetimeIndex(
            [bt.num2date(t) for t in lines.datetime.array], name="date"
        ).normalize(),
    )


def feature_feed(
    data: str | Path | pd.DataFrame | bt.feeds.DataBase,
    spec: FeatureSpec | object,
    name: str | None = None,
    feature_lines: bool = True,
    **kwargs: object,
) -> bt.feeds.PandasData:
    """A Backtrader feed of ``data`` with the feature lines a policy reads.

    Parameters
    ----------
    data : path, DataFrame or Backtrader data feed
        A ``SYMBOL.csv`` in Yahoo layout (prices adjusted by ``Adj Close``); a
        DataFrame with a DatetimeIndex and ``open, high, low, close, volume`` columns
        (or Yahoo's ``Open, ..., Volume``); or any Backtrader feed, whose bars are
        read once here. All are validated as ``metabt data validate`` does
        (``DataError`` naming the row otherwise).
    spec : FeatureSpec or policy
        The features to add; a policy (``metabt.load_policy``) gives its own.
    name : str, optional
        The asset's name in results; defaults to the file's stem or the feed's name.
    feature_lines : bool, optional
        Carry each feature as a line (to plot or read them); the strategy itself reads
        ``feed.feature_array``, so ``False`` runs faster.
    **kwargs
        Passed to the feed (``fromdate``, ``todate``, ...).
    """
    spec = getattr(spec, "feature_spec", spec)
    if not isinstance(spec, FeatureSpec):
        raise TypeError("spec must be a FeatureSpec or a policy with a feature_spec")
    if isinstance(data, (str, Path)):
        name = name or Path(data).stem
        frame = load_csv(data)
    else:
        if isinstance(data, bt.feeds.DataBase):
            name = name or data._name or data.p.name
            data = _bars_of_feed(data)
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a CSV path, a DataFrame or a Backtrader feed: {data!r}")
        # The checks every CSV gets (dates, OHLC, jumps, gaps), on the Yahoo column names.
        raw = data.rename(columns={c: c.capitalize() for c in CANONICAL_COLUMNS})
        frame = validate_bars(raw, f"{name or 'DataFrame'} (feature_feed)")
    if not name:
        raise ValueError("name the asset: feature_feed(data, policy, name='SPY')")
    return make_feature_feed(name, frame, spec, feature_lines=feature_lines, **kwargs)

"""The features of one new bar, from a bounded trailing window plus carried EWM state.

The backtest computes every feature over the whole history
(:func:`feeds.features.compute_features`). Most features look back a bounded
number of bars (rolling windows of at most ``max(horizons)`` bars), but the
EWMs (the trailing vol, the slow vol, the MACD averages) remember every bar
since the first. So the paper loop keeps, per asset:

* the EWMs' exact state, advanced one bar at a time by the recursion pandas
  runs (:class:`EwmState`; a test checks it gives pandas' values to the bit);
* nothing else: the rolling features (windows of at most ``max(horizons)``
  bars) are recomputed over the last :data:`TRAIL` stored bars.

While the whole history fits in :data:`TRAIL` bars they are recomputed by the
backtest's own code (``compute_features``) and equal its values to the bit.
After that, by :func:`last_row` (numpy, one row): pandas' rolling sums carry
rounding from the first bar on, so the two differ in the last digits (at most
2.5e-11 in a feature over the eight bundled ETFs, up to 23 years each: nil next
to the features' scale of 1). The EWMs, and so the vol that sizes every order,
stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metabt.feeds.features import (
    CLIP,
    VOL_FLOOR,
    FeatureSpec,
    compute_features,
    ewm_means,
    trailing_vol,
)

#: Bars the rolling features are recomputed over (more than any window they use).
TRAIL = 512
PRICES = ("open", "high", "low", "close", "volume")


@dataclass
class EwmState:
    """pandas' exponentially weighted mean (``ignore_na=False``), one value at a time.

    The same operations in the same order as pandas' ``ewm`` kernel, so each
    value is the one pandas computes over the whole series.
    """

    alpha: float
    adjust: bool
    min_periods: int
    weighted: float = math.nan
    old_wt: float = 1.0
    nobs: int = 0
    started: bool = False

    @classmethod
    def halflife(cls, halflife: float, min_periods: int) -> EwmState:
        decay = 1 - np.exp(np.log(0.5) / halflife)
        return cls(_alpha(float(1 / decay - 1)), True, min_periods)

    @classmethod
    def span(cls, span: int) -> EwmState:
        return cls(_alpha(float((span - 1) / 2)), False, 0)

    def push(self, cur: float) -> float:
        """Add one value; the mean known after it (NaN before ``min_periods`` values)."""
        observed = cur == cur
        if not self.started:
            self.started, self.weighted, self.nobs = True, cur, int(observed)
        else:
            self.nobs += int(observed)
            if self.weighted == self.weighted:
                self.old_wt *= 1.0 - self.alpha
                if observed:
                    if self.weighted != cur:
                        new_wt = 1.0 if self.adjust else self.alpha
                        self.weighted = self.old_wt * self.weighted + new_wt * cur
                        self.weighted /= self.old_wt + new_wt
                    self.old_wt = self.old_wt + 1.0 if self.adjust else 1.0
            elif observed:
                self.weighted = cur
        return self.weighted if self.nobs >= max(self.min_periods, 1) else math.nan

    def to_list(self) -> list[float]:
        return [self.weighted, self.old_wt, float(self.nobs), float(self.started)]

    def load(self, values: list[float]) -> None:
        self.weighted, self.old_wt = float(values[0]), float(values[1])
        self.nobs, self.started = int(values[2]), bool(values[3])


def _alpha(com: float) -> float:
    return 1.0 / (1.0 + com)


def new_ewms(spec: FeatureSpec) -> dict[str, EwmState]:
    """Fresh states for every EWM of :func:`feeds.features.ewm_means`."""
    out = {
        "vol": EwmState.halflife(spec.vol_halflife, 1),
        "long_vol": EwmState.halflife(spec.long_vol_halflife, 1),
    }
    for span in sorted({s for pair in spec.macd for s in pair}):
        out[f"ema_{span}"] = EwmState.span(span)
    return out


class FeatureState:
    """One asset's carried feature state: EWMs, bars seen, the last close."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.ewms = new_ewms(spec)
        self.n_bars = 0
        self.last_close = math.nan
        self.values: dict[str, float] = {}

    def push(self, close: float) -> None:
        """Advance every EWM by the bar with this close."""
        # np.log as the backtest takes it (log_returns): same rounding as pandas' diff of logs.
        r = float(np.log(close) - np.log(self.last_close)) if self.n_bars else math.nan
        sq = r**2
        for name, state in self.ewms.items():
            self.values[name] = state.push(close if name.startswith("ema_") else sq)
        self.last_close = close
        self.n_bars += 1

    @classmethod
    def from_history(cls, frame: pd.DataFrame, spec: FeatureSpec) -> FeatureState:
        state = cls(spec)
        for close in frame["close"].to_numpy(dtype=float).tolist():
            state.push(close)
        return state

    def row(
        self, bars: np.ndarray, dates: Callable[[], pd.DatetimeIndex]
    ) -> tuple[np.ndarray, float]:
        """Features and vol of the last of ``bars`` (the bar just pushed).

        ``bars`` (``open, high, low, close, volume``) holds the last stored bars
        and this one; ``dates()`` gives their dates, asked for only while the
        history is short enough for pandas; the EWMs come from the carried state. While the
        whole history fits in ``bars`` the rest is ``compute_features`` over it,
        the backtest's own computation; after that, :func:`last_row` (numpy, the
        same formulas for one row).
        """
        if self.n_bars > len(bars):
            return last_row(bars, self.values, self.spec)
        trail = pd.DataFrame(bars, columns=list(PRICES), index=dates())
        ewms = ewm_means(trail, self.spec)
        for name, series in ewms.items():
            series.iloc[-1] = self.values[name]
        feats = compute_features(trail, self.spec, ewms).iloc[-1].to_numpy(dtype=np.float64)
        if self.n_bars <= self.spec.warmup:  # as compute_features blanks the first rows
            feats = np.full_like(feats, np.nan)
        vol = float(trailing_vol(trail, self.spec, ewms).iloc[-1])
        return feats, vol

    def to_dict(self) -> dict:
        return {
            "n_bars": self.n_bars,
            "last_close": self.last_close,
            "ewms": {k: v.to_list() for k, v in self.ewms.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict, spec: FeatureSpec) -> FeatureState:
        state = cls(spec)
        if sorted(raw["ewms"]) != sorted(state.ewms):
            raise ValueError(f"EWMs {sorted(raw['ewms'])}, expected {sorted(state.ewms)}")
        state.n_bars, state.last_close = int(raw["n_bars"]), float(raw["last_close"])
        for name, values in raw["ewms"].items():
            state.ewms[name].load(values)
        return state


# Both helpers below spell out what np.std and np.corrcoef compute, with a dot product
# instead of their generic machinery: each is called twice per asset and bar, and the
# library versions took half of last_row's time. The values agree to rounding.


def _z(x: np.ndarray) -> float:
    """The last value's rolling z-score (``feeds.features._rolling_z``) over ``x``."""
    dev = x - x.mean()
    sd = math.sqrt(float(dev @ dev) / (len(x) - 1))
    return 0.0 if not sd > 0 else min(CLIP, max(-CLIP, float(dev[-1]) / sd))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b``; 0 when either is flat (as pandas' fillna)."""
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    if not denom > 0:
        return 0.0
    return min(1.0, max(-1.0, float(da @ db) / denom))


def _clip(x: float) -> float:
    return min(CLIP, max(-CLIP, x))


def last_row(
    bars: np.ndarray, ewm: dict[str, float], spec: FeatureSpec
) -> tuple[np.ndarray, float]:
    """``compute_features``' last row from the last bars (``open .. volume`` columns, more rows
    than ``spec.warmup``) and the EWMs at that row: the same formulas, one row, no pandas."""
    high, low, close, volume = bars[:, 1], bars[:, 2], bars[:, 3], bars[:, 4]
    log_close = np.log(close)
    r = np.diff(log_close)
    vol = max(math.sqrt(ewm["vol"]), VOL_FLOOR)
    out = {f"ret_{k}": _clip(r[-k] / vol) for k in range(1, spec.lags + 1)}
    out["vol_ratio"] = math.log(vol / max(math.sqrt(ewm["long_vol"]), VOL_FLOOR))
    tw = spec.trend_window
    out["trend"] = _clip((log_close[-1] - log_close[-tw:].mean()) / (vol * math.sqrt(tw)))
    out["range_z"] = _z(np.log(high / low)[-spec.volume_window :])
    out["volume_z"] = _z(np.log1p(volume)[-spec.volume_window :])
    for h in spec.horizons:
        out[f"mom_{h}"] = _clip(float(r[-h:].sum()) / (vol * math.sqrt(h)))
    for fast, slow in spec.macd:
        gap = ewm[f"ema_{fast}"] - ewm[f"ema_{slow}"]
        out[f"macd_{fast}_{slow}"] = _clip(gap / (close[-1] * vol))
    for w in spec.autocorr_windows:
        out[f"ac_{w}"] = _corr(r[-w:], r[-w - 1 : -1])
    if spec.vol_level:
        out["log_vol"] = math.log(vol / 0.01)
    return np.array([out[name] for name in spec.names], dtype=np.float64), vol

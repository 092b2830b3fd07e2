"""The features of one new bar, from a bounded trailing window plus carried EWM state.

The backtest computes every feature over the whole history
(:func:`feeds.features.compute_features`). Most features look back a bounded
number of bars (rolling windows of at most ``max(horizons)`` bars), but the
EWMs (the trailing vol, the slow vol, the MACD averages) remember every bar
since the first. So the paper loop keeps, per asset:

* the EWMs' exact state, advanced one bar at a time by the recursion pandas
  runs (:class:`EwmState`; a test checks it gives pandas' values to the bit);
* nothing else: the rolling features are recomputed by the same pandas code
  over the last :data:`TRAIL` stored bars.

The rolling features then equal the backtest's exactly while the history is at
most :data:`TRAIL` bars, and after that up to pandas' running-sum rounding
(about 1e-15 relative; the test on ten years of the bundled data measures it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metabt.feeds.features import FeatureSpec, compute_features, ewm_means, trailing_vol

#: Bars the rolling features are recomputed over (more than any window they use).
TRAIL = 512


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

    def row(self, trail: pd.DataFrame) -> tuple[np.ndarray, float]:
        """Features and vol of ``trail``'s last bar (the bar just pushed).

        ``trail`` holds the last stored bars and this one; the EWMs come from
        the carried state, everything else from ``compute_features`` over it.
        """
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

"""Causal inputs and targets of the meta-learned volatility forecaster.

Everything is measured against the **reference variance** ``v_t``: the EWM mean of
squared close-to-close log returns with the trading features' half-life (20 bars),
i.e. ``feeds.features.trailing_vol(frame) ** 2``, the estimator every vol-targeted
strategy here used so far. The forecaster predicts ``log(sigma^2_{t+1} / v_t)`` from
the log ratios of faster and slower variance estimates to ``v_t``; with all its
weights at zero it *is* the EWM estimator, so what meta-learning adds is measured
against exactly the baseline it replaces.

The target of bar ``t`` is the variance proxy of the *next* bar ``t+1`` divided by
``v_t``: the squared close-to-close log return, or the Parkinson (1980) high-low
range ``ln(H/L)^2 / (4 ln 2)``, less noisy but blind to overnight gaps. It is known
at bar ``t+1``; the task builder only uses it from ``t + LABEL_DELAY`` on, like the
trading labels. Every input at bar ``t`` uses bars ``<= t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metabt.feeds.features import CLIP, VOL_FLOOR, FeatureSpec, log_returns

PROXIES = ("squared", "parkinson")
VAR_FLOOR = VOL_FLOOR**2
_PARKINSON = 1.0 / (4.0 * math.log(2.0))


@dataclass(frozen=True)
class VolFeatureSpec:
    """What the volatility forecaster sees at each bar.

    Params:
        ewm_halflives: half-lives in bars of EWM variances, each an input
            ``log(ewm_h / v)`` (fast ones react to a change, slow ones anchor the level).
        har_windows: bars of plain rolling means of squared returns (HAR-RV's
            weekly and monthly components), inputs ``log(mean_w / v)``.
        range_halflife: half-life in bars of an EWM of the Parkinson range variance,
            input ``log(range / v)``; 0 leaves it out.
        signed_return: add the last return divided by ``sqrt(v)`` (falls raise
            volatility more than rises: the leverage effect GJR-GARCH models).
        proxy: the target's variance proxy, ``"squared"`` or ``"parkinson"``.
        ref_halflife: half-life in bars of the reference variance ``v``; the trading
            features' ``vol_halflife``, so zero weights reproduce the EWM sizing.
    """

    ewm_halflives: tuple[float, ...] = (2.0, 5.0, 60.0)
    har_windows: tuple[int, ...] = (5, 22)
    range_halflife: float = 5.0
    signed_return: bool = True
    proxy: str = "squared"
    ref_halflife: float = FeatureSpec().vol_halflife

    def __post_init__(self) -> None:
        object.__setattr__(self, "ewm_halflives", tuple(float(h) for h in self.ewm_halflives))
        object.__setattr__(self, "har_windows", tuple(int(w) for w in self.har_windows))
        if any(h <= 0 for h in self.ewm_halflives) or self.ref_halflife <= 0:
            raise ValueError("volatility half-lives must be > 0 bars")
        if any(w < 2 for w in self.har_windows):
            raise ValueError(f"volatility.har_windows must be >= 2 bars, got {self.har_windows}")
        if self.range_halflife < 0:
            raise ValueError(f"volatility.range_halflife must be >= 0, got {self.range_halflife}")
        if self.proxy not in PROXIES:
            raise ValueError(f"volatility.proxy must be one of {PROXIES}, got {self.proxy!r}")
        if not self.names:
            raise ValueError("the volatility forecaster needs at least one input")

    @property
    def names(self) -> tuple[str, ...]:
        return (
            tuple(f"ewm_{h:g}" for h in self.ewm_halflives)
            + tuple(f"har_{w}" for w in self.har_windows)
            + (("range",) if self.range_halflife > 0 else ())
            + (("ret",) if self.signed_return else ())
        )

    @property
    def warmup(self) -> int:
        """Bars before every input is defined and its slowest EWM has mostly settled."""
        slow = max((*self.ewm_halflives, self.ref_halflife, self.range_halflife))
        return int(max(2 * math.ceil(slow), max(self.har_windows, default=0) + 1))

    def task_rows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, 1)`` per bar for ``feeds.tasks.TaskSampler`` (float32, NaN before warm-up)."""
        x = vol_features(frame, self).to_numpy(np.float32)
        y = vol_targets(frame, self).to_numpy(np.float32)
        return x, y, np.ones(len(frame), np.float32)


def reference_variance(frame: pd.DataFrame, spec: VolFeatureSpec) -> pd.Series:
    """``v_t``: EWM mean of squared log returns known at bar ``t`` (floored)."""
    r2 = log_returns(frame) ** 2
    return r2.ewm(halflife=spec.ref_halflife, min_periods=1).mean().clip(lower=VAR_FLOOR)


def range_variance(frame: pd.DataFrame) -> pd.Series:
    """Parkinson's one-bar variance estimate ``ln(high / low)^2 / (4 ln 2)``."""
    return np.log(frame["high"] / frame["low"]) ** 2 * _PARKINSON


def variance_proxy(frame: pd.DataFrame, proxy: str) -> pd.Series:
    """The realised-variance proxy of each bar itself (NaN on the first bar for ``squared``)."""
    if proxy == "parkinson":
        return range_variance(frame)
    return log_returns(frame) ** 2


def vol_features(frame: pd.DataFrame, spec: VolFeatureSpec) -> pd.DataFrame:
    """Inputs of every bar, NaN during the first ``spec.warmup`` bars."""
    r = log_returns(frame)
    r2 = r**2
    v = reference_variance(frame, spec)
    cols: dict[str, pd.Series] = {}

    def ratio(s: pd.Series) -> pd.Series:
        return np.log(s.clip(lower=VAR_FLOOR) / v).clip(-CLIP, CLIP)

    for h in spec.ewm_halflives:
        cols[f"ewm_{h:g}"] = ratio(r2.ewm(halflife=h, min_periods=1).mean())
    for w in spec.har_windows:
        cols[f"har_{w}"] = ratio(r2.rolling(w, min_periods=w).mean())
    if spec.range_halflife > 0:
        cols["range"] = ratio(
            range_variance(frame).ewm(halflife=spec.range_halflife, min_periods=1).mean()
        )
    if spec.signed_return:
        cols["ret"] = (r / np.sqrt(v)).clip(-CLIP, CLIP)
    out = pd.DataFrame(cols, index=frame.index)[list(spec.names)].astype(float)
    out.iloc[: spec.warmup] = np.nan
    return out


def vol_targets(frame: pd.DataFrame, spec: VolFeatureSpec) -> pd.Series:
    """``proxy[t+1] / v_t``: looks one bar ahead by construction (NaN on the last bar)."""
    proxy = variance_proxy(frame, spec.proxy).shift(-1)
    return (proxy / reference_variance(frame, spec)).rename("vol_target")

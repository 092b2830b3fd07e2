"""Causal per-bar features and the labels the policy is trained on.

One set of pure functions serves meta-training, the backtest feed and the
paper-trading loop, so what was trained is what trades. Every feature at bar
``t`` is a function of bars ``<= t`` only (a test truncates the data after
``t`` and checks nothing up to ``t`` moves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# The label of bar t is the return of a position decided at t's close and
# filled at the next open: open[t+1] -> open[t+2]. It is known at bar t + 2.
LABEL_DELAY = 2
# Floor for the trailing vol (daily, in log-return units): keeps the scaled
# features finite on flat stretches such as synthetic or halted series.
VOL_FLOOR = 1e-4
# Scaled returns and z-scores are clipped so one bad print cannot dominate a
# short adaptation window.
CLIP = 6.0


@dataclass(frozen=True)
class FeatureSpec:
    """What the policy sees at each bar.

    Params:
        lags: number of past close-to-close log returns, each divided by the trailing vol.
        vol_halflife: EWM half-life in bars of the trailing daily vol.
        long_vol_halflife: EWM half-life in bars of the slow vol in ``vol_ratio``.
        trend_window: bars of the moving average in ``trend``.
        volume_window: bars of the rolling window of the range and volume z-scores.
        horizons: bars of the multi-bar returns ``mom_h`` (sum of log returns over h bars
            divided by ``vol * sqrt(h)``: trend inputs in units of their own noise).
        macd: (fast, slow) EWM spans in bars of the MACD signals ``macd_f_s``, each the
            difference of two EWMs of the close divided by ``close * vol`` (Baz et al. 2015).
        autocorr_windows: bars of the rolling lag-1 autocorrelations ``ac_w`` of the log
            returns: the input that tells trending from mean-reverting regimes.
        vol_level: add ``log_vol``, the log of the trailing vol relative to 1 % a day
            (calm and volatile regimes, and how much a unit of turnover costs in vol).
        bar_shape: add ``vol_ratio``, ``trend``, ``range_z`` and ``volume_z`` (vol
            regime, distance from the moving average, bar range and volume z-scores);
            False leaves the lags and the inputs listed above.
    """

    lags: int = 5
    vol_halflife: float = 20.0
    long_vol_halflife: float = 120.0
    trend_window: int = 50
    volume_window: int = 20
    horizons: tuple[int, ...] = (5, 21, 63, 126, 252)
    macd: tuple[tuple[int, int], ...] = ((8, 24), (16, 48), (32, 96))
    autocorr_windows: tuple[int, ...] = (20, 60)
    vol_level: bool = True
    bar_shape: bool = True

    def __post_init__(self) -> None:
        for name in ("lags", "trend_window", "volume_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"features.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("vol_halflife", "long_vol_halflife"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"features.{name} must be > 0, got {getattr(self, name)}")
        object.__setattr__(self, "horizons", tuple(int(h) for h in self.horizons))
        object.__setattr__(self, "macd", tuple((int(f), int(s)) for f, s in self.macd))
        object.__setattr__(self, "autocorr_windows", tuple(int(w) for w in self.autocorr_windows))
        if any(h < 2 for h in self.horizons):
            raise ValueError(
                f"features.horizons must be >= 2 bars (ret_1 is a lag), got {list(self.horizons)}"
            )
        if any(not 1 <= f < s for f, s in self.macd):
            raise ValueError(
                f"features.macd pairs must be [fast, slow] with 1 <= fast < slow, "
                f"got {[list(p) for p in self.macd]}"
            )
        if any(w < 3 for w in self.autocorr_windows):
            raise ValueError(
                f"features.autocorr_windows must be >= 3 bars, got {list(self.autocorr_windows)}"
            )

    @property
    def names(self) -> tuple[str, ...]:
        lags = tuple(f"ret_{k}" for k in range(1, self.lags + 1))
        extra = (
            tuple(f"mom_{h}" for h in self.horizons)
            + tuple(f"macd_{f}_{s}" for f, s in self.macd)
            + tuple(f"ac_{w}" for w in self.autocorr_windows)
            + (("log_vol",) if self.vol_level else ())
        )
        shape = ("vol_ratio", "trend", "range_z", "volume_z") if self.bar_shape else ()
        return lags + shape + extra

    @property
    def warmup(self) -> int:
        """Bars before the first row where every feature is defined and settled."""
        slowest_ewm = max([2 * np.ceil(self.vol_halflife)] + [2 * s for _, s in self.macd])
        return int(
            max(
                self.lags + 1,
                self.trend_window,
                self.volume_window + 1,
                slowest_ewm,
                max(self.horizons, default=0) + 1,
                max(self.autocorr_windows, default=0) + 2,
            )
        )


def log_returns(frame: pd.DataFrame) -> pd.Series:
    """Close-to-close log returns (NaN on the first bar)."""
    return np.log(frame["close"]).diff()


def ewm_means(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, pd.Series]:
    """The exponentially weighted means the features use, by name.

    ``vol`` and ``long_vol`` are EWMs of squared log returns (``adjust=True``),
    ``ema_<span>`` EWMs of the close (``adjust=False``). They remember every bar
    since the first, so the paper loop carries their state from bar to bar
    (:mod:`backtests.paper.feature_state`) and passes them back in here.
    """
    sq = log_returns(frame) ** 2
    out = {
        "vol": sq.ewm(halflife=spec.vol_halflife, min_periods=1).mean(),
        "long_vol": sq.ewm(halflife=spec.long_vol_halflife, min_periods=1).mean(),
    }
    for span in sorted({s for pair in spec.macd for s in pair}):
        out[f"ema_{span}"] = frame["close"].ewm(span=span, adjust=False).mean()
    return out


def trailing_vol(
    frame: pd.DataFrame, spec: FeatureSpec, ewms: dict[str, pd.Series] | None = None
) -> pd.Series:
    """Daily vol known at each bar: EWM root-mean-square of log returns, floored."""
    if ewms is None:
        ewms = {
            "vol": (log_returns(frame) ** 2).ewm(halflife=spec.vol_halflife, min_periods=1).mean()
        }
    return _clip(np.sqrt(ewms["vol"]), VOL_FLOOR, np.inf)


def _clip(x: pd.Series, lower: float = -CLIP, upper: float = CLIP) -> pd.Series:
    """``x.clip(lower, upper)`` in numpy: the same values (NaN stays NaN), ~15x faster."""
    values = np.clip(x.to_numpy(dtype=np.float64), lower, upper)
    return pd.Series(values, index=x.index, name=x.name)


def _rolling_z(x: pd.Series, window: int) -> pd.Series:
    mean = x.rolling(window, min_periods=window).mean()
    std = x.rolling(window, min_periods=window).std()
    z = (x - mean) / std.where(std > 0)
    return _clip(z.fillna(0.0).where(mean.notna()))


def compute_features(
    frame: pd.DataFrame, spec: FeatureSpec, ewms: dict[str, pd.Series] | None = None
) -> pd.DataFrame:
    """Feature rows for every bar, NaN during the first ``spec.warmup`` bars.

    ``ewms`` (as :func:`ewm_means` returns them) replaces the EWMs computed from
    ``frame`` alone: the paper loop passes the ones carried over the whole history.
    """
    ewms = ewm_means(frame, spec) if ewms is None else ewms
    r = log_returns(frame)
    vol = trailing_vol(frame, spec, ewms)
    cols: dict[str, pd.Series] = {}
    for k in range(1, spec.lags + 1):
        cols[f"ret_{k}"] = _clip(r.shift(k - 1) / vol)
    long_vol = np.sqrt(ewms["long_vol"])
    cols["vol_ratio"] = np.log(vol / _clip(long_vol, VOL_FLOOR, np.inf))
    log_close = np.log(frame["close"])
    ma = log_close.rolling(spec.trend_window, min_periods=spec.trend_window).mean()
    cols["trend"] = _clip((log_close - ma) / (vol * np.sqrt(spec.trend_window)))
    cols["range_z"] = _rolling_z(np.log(frame["high"] / frame["low"]), spec.volume_window)
    cols["volume_z"] = _rolling_z(np.log1p(frame["volume"]), spec.volume_window)
    for h in spec.horizons:
        cols[f"mom_{h}"] = _clip(r.rolling(h, min_periods=h).sum() / (vol * np.sqrt(h)))
    close = frame["close"]
    for fast, slow in spec.macd:
        gap = ewms[f"ema_{fast}"] - ewms[f"ema_{slow}"]
        cols[f"macd_{fast}_{slow}"] = _clip(gap / (close * vol))
    for w in spec.autocorr_windows:
        cols[f"ac_{w}"] = r.rolling(w, min_periods=w).corr(r.shift(1)).fillna(0.0)
    if spec.vol_level:
        cols["log_vol"] = np.log(vol / 0.01)
    out = pd.DataFrame(cols, index=frame.index)[list(spec.names)].astype(float)
    out.iloc[: spec.warmup] = np.nan
    return out


def label_from_opens(
    open_next: np.ndarray | float, open_after: np.ndarray | float, vol: np.ndarray | float
) -> np.ndarray | float:
    """Vol-scaled return of a position held from one open to the next."""
    return (np.asarray(open_after) / np.asarray(open_next) - 1.0) / np.asarray(vol)


def compute_labels(frame: pd.DataFrame, spec: FeatureSpec) -> pd.Series:
    """``y_t = (open[t+2] / open[t+1] - 1) / vol[t]``; NaN for the last two bars.

    These look ahead by construction: use them only where the task builder
    checks that every label used is known at the decision time.
    """
    opens = frame["open"]
    y = label_from_opens(
        opens.shift(-1).to_numpy(), opens.shift(-2).to_numpy(), trailing_vol(frame, spec).to_numpy()
    )
    return pd.Series(y, index=frame.index, name="label")

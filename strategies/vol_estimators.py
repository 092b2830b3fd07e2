"""Volatility estimators for volatility targeting: EWM, GARCH(1,1), GJR-GARCH, HAR-RV, meta.

Each gives, for every bar ``t`` of one asset, the forecast of the next bar's daily
variance made at ``t``'s close from bars ``<= t`` (the prefix-invariance test truncates
the bars after ``t`` and checks nothing up to ``t`` moves):

``ewm``
    The EWM mean of squared log returns, 20-bar half-life: the estimator every
    vol-targeted strategy used so far (``feeds.features.trailing_vol`` squared).
``garch`` / ``gjr_garch``
    GARCH(1,1) and GJR-GARCH(1,1,1) (falls add ``gamma * r^2``), fitted by maximum
    likelihood with ``arch`` on the bars before ``split`` only, then run forward with
    those parameters; every ``refit_every`` bars after ``split`` they are re-fitted on
    all bars before that date (an expanding walk-forward), never on later ones.
``har``
    HAR-RV (Corsi 2009): OLS of the next bar's variance proxy on its last value and its
    5- and 22-bar means, fitted and re-fitted on the same schedule.
``meta``
    The meta-learned forecaster (:mod:`metamodels.vol_model`), re-adapted every
    ``readapt_every`` bars on the labelled bars since the regime change an online
    detector last reported (the ``bocpd`` detector watches the returns for volatility
    changes); until ``min_window`` such bars exist it forecasts with the meta-learned
    initial weights.
``meta_frozen``
    The ablation: the meta-learned initial weights, never adapted.

:func:`forecast_vols` returns them as daily **volatility** series, the form
``TargetWeightStrategy(vol_forecast=...)`` sizes positions by.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from metabt.feeds.features import LABEL_DELAY, log_returns
from metabt.feeds.vol_features import (
    VAR_FLOOR,
    VolFeatureSpec,
    reference_variance,
    variance_proxy,
    vol_features,
    vol_targets,
)
from metabt.strategies.detectors import make_detector

if TYPE_CHECKING:  # the forecaster needs torch; the estimators' names and settings do not
    from metabt.metamodels.vol_model import VolModel

ESTIMATORS = ("ewm", "garch", "gjr_garch", "har", "meta", "meta_frozen")
# Fewest bars before the split a GARCH or HAR fit may use (a year of daily bars).
MIN_FIT_BARS = 250
# arch fits better-conditioned likelihoods on percent returns.
_PCT = 100.0


@dataclass(frozen=True)
class Schedule:
    """When the fitted baselines (GARCH, GJR-GARCH, HAR) are fitted and re-fitted.

    Params:
        split: first bar of the test period; the first fit sees only bars before it.
        refit_every: bars between re-fits after ``split`` (each on every bar before
            its date); 0 fits once, on the training period.
    """

    split: pd.Timestamp
    refit_every: int = 252

    def fit_points(self, index: pd.DatetimeIndex) -> list[int]:
        """Positions ``i`` in ``index``: the fit used from bar ``i`` on sees bars ``< i``."""
        first = int(index.searchsorted(self.split))
        if first < MIN_FIT_BARS:
            raise ValueError(
                f"GARCH and HAR are fitted on the bars before the split {self.split.date()}, "
                f"and there are {first}; give at least {MIN_FIT_BARS} bars before it"
            )
        if self.refit_every <= 0:
            return [first]
        return list(range(first, len(index), self.refit_every)) or [first]


def ewm_variance(frame: pd.DataFrame, spec: VolFeatureSpec | None = None) -> pd.Series:
    """The EWM estimator (the reference variance of the meta forecaster)."""
    return reference_variance(frame, spec or VolFeatureSpec())


# -- GARCH / GJR-GARCH --------------------------------------------------------------
def fit_garch(returns: np.ndarray, asymmetric: bool) -> dict[str, float]:
    """``omega, alpha, gamma, beta`` (return units) fitted by ``arch`` on ``returns``."""
    from arch import arch_model  # heavy import, only for studies that use it

    r = np.asarray(returns, dtype=float)
    r = r[np.isfinite(r)] * _PCT
    model = arch_model(r, mean="Zero", vol="GARCH", p=1, o=int(asymmetric), q=1, rescale=False)
    with warnings.catch_warnings():
        # A convergence warning on a short window is not an error: the estimate is kept.
        warnings.simplefilter("ignore")
        res = model.fit(disp="off", show_warning=False)
    p = res.params
    return {
        "omega": float(p["omega"]) / _PCT**2,
        "alpha": float(p["alpha[1]"]),
        "gamma": float(p["gamma[1]"]) if asymmetric else 0.0,
        "beta": float(p["beta[1]"]),
        "backcast": float(np.mean(r[: min(len(r), 75)] ** 2)) / _PCT**2,
    }


def garch_path(r: np.ndarray, fits: list[tuple[int, dict[str, float]]]) -> np.ndarray:
    """``s2[t]``: the variance forecast for bar ``t+1`` made at ``t``.

    ``fits`` lists ``(first bar, parameters)``; each applies from its bar on. The
    recursion ``s2[t] = omega + (alpha + gamma * [r_t < 0]) r_t^2 + beta * s2[t-1]``
    starts from the first fit's backcast variance.
    """
    out = np.full(len(r), np.nan)
    bounds = [b for b, _ in fits[1:]] + [len(r)]
    prev = fits[0][1]["backcast"]
    t = 0
    for (_, p), stop in zip(fits, bounds):
        while t < stop:
            x = r[t] if np.isfinite(r[t]) else 0.0
            shock = (p["alpha"] + (p["gamma"] if x < 0 else 0.0)) * x * x
            prev = p["omega"] + shock + p["beta"] * prev
            out[t] = prev
            t += 1
    return np.maximum(out, VAR_FLOOR)


def garch_variance(frame: pd.DataFrame, schedule: Schedule, asymmetric: bool) -> pd.Series:
    """GARCH(1,1) (or GJR) forecasts, fitted on bars before each fit point only."""
    r = log_returns(frame).to_numpy()
    points = schedule.fit_points(frame.index)
    fits = [(0 if i == 0 else at, fit_garch(r[:at], asymmetric)) for i, at in enumerate(points)]
    return pd.Series(garch_path(r, fits), index=frame.index)


# -- HAR-RV ------------------------------------------------------------------------
def har_design(proxy: pd.Series) -> np.ndarray:
    """Rows ``[1, rv_t, mean_5, mean_22]`` (NaN until 22 bars exist)."""
    return np.column_stack(
        [
            np.ones(len(proxy)),
            proxy.to_numpy(),
            proxy.rolling(5).mean().to_numpy(),
            proxy.rolling(22).mean().to_numpy(),
        ]
    )


def har_variance(frame: pd.DataFrame, schedule: Schedule, proxy: str = "squared") -> pd.Series:
    """HAR-RV forecasts: OLS coefficients from bars before each fit point only."""
    rv = variance_proxy(frame, proxy)
    design = har_design(rv)
    target = rv.shift(-1).to_numpy()
    out = np.full(len(rv), np.nan)
    points = schedule.fit_points(frame.index)
    bounds = points[1:] + [len(rv)]
    for i, (at, stop) in enumerate(zip(points, bounds)):
        # row s is usable when its target (bar s+1) is before the fit point
        rows = np.arange(at - 1)
        ok = rows[np.isfinite(design[rows]).all(1) & np.isfinite(target[rows])]
        coef, *_ = np.linalg.lstsq(design[ok], target[ok], rcond=None)
        lo = 0 if i == 0 else at
        # OLS in levels can forecast a variance near or below zero (its daily
        # coefficient is often negative after fat-tailed years): an "insanity
        # filter" floors it at the calmest month the fit saw.
        floor = max(float(np.nanmin(design[ok, 3])), VAR_FLOOR)
        out[lo:stop] = np.maximum(design[lo:stop] @ coef, floor)
    return pd.Series(np.maximum(out, VAR_FLOOR), index=frame.index)


# -- the meta-learned forecaster ---------------------------------------------------
@dataclass(frozen=True)
class MetaVolSchedule:
    """How the meta forecaster re-adapts at trading time.

    Params:
        detector: name of the regime detector on the returns (``strategies.detectors``).
        detector_settings: its settings.
        min_window: fewest labelled bars since the change to adapt on [bars].
        max_window: most labelled bars an adaptation uses [bars].
        readapt_every: bars between re-adaptations [bars].
    """

    detector: str = "bocpd"
    detector_settings: Mapping[str, Any] | None = None
    min_window: int = 10
    max_window: int = 120
    readapt_every: int = 5


def meta_variance(
    frame: pd.DataFrame, model: VolModel, schedule: MetaVolSchedule | None = None
) -> pd.Series:
    """Forecasts of the meta model, re-adapted on the bars since the last detected change.

    The target of bar ``s`` (next bar's proxy) is known at ``s + 1``; like the trading
    labels it is used from ``s + LABEL_DELAY`` on.
    """
    sch = schedule or MetaVolSchedule()
    spec = model.feature_spec
    x = vol_features(frame, spec).to_numpy()
    y = vol_targets(frame, spec).to_numpy()
    v = reference_variance(frame, spec).to_numpy()
    r = log_returns(frame).to_numpy()
    det = make_detector(sch.detector, **dict(sch.detector_settings or {}))
    ready = np.isfinite(x).all(1)  # inputs settle after the warm-up
    first = int(np.argmax(ready)) if ready.any() else len(frame)
    params, adapted, start, since = model.params, False, 0, 0
    out = np.full(len(frame), np.nan)
    for t in range(len(frame)):
        if t > 0 and np.isfinite(r[t]) and det.update(r[t]):
            start, params, adapted = t - int(det.run_length) + 1, model.params, False
        since += 1
        if not adapted or since >= sch.readapt_every:
            hi = t - LABEL_DELAY + 1  # rows [lo, hi) have known targets
            lo = max(start, first, hi - sch.max_window)
            rows = np.arange(lo, max(lo, hi))
            known = rows[np.isfinite(y[rows])]  # a bar with no proxy is skipped
            if len(known) >= sch.min_window:
                params, adapted, since = model.adapt(x[known], y[known]), True, 0
        if ready[t]:
            out[t] = v[t] * np.exp(model.log_ratio(x[t], params))
    return pd.Series(out, index=frame.index)


def forecast_variances(
    frames: Mapping[str, pd.DataFrame],
    estimator: str,
    schedule: Schedule,
    model: VolModel | None = None,
    meta_schedule: MetaVolSchedule | None = None,
    proxy: str = "squared",
) -> dict[str, pd.Series]:
    """Next-bar variance forecasts of ``estimator`` for every asset."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"volatility estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator.startswith("meta") and model is None:
        raise ValueError(f"the {estimator!r} volatility estimator needs a trained VolModel")
    if estimator == "meta_frozen":
        if model is None:  # checked above: every meta estimator needs one
            raise ValueError(f"the {estimator!r} volatility estimator needs a trained VolModel")
        model = dataclasses.replace(model, inner_steps=0)
    out = {}
    for name, frame in frames.items():
        if estimator == "ewm":
            out[name] = ewm_variance(frame, model.feature_spec if model else None)
        elif estimator in ("garch", "gjr_garch"):
            out[name] = garch_variance(frame, schedule, asymmetric=estimator == "gjr_garch")
        elif estimator == "har":
            out[name] = har_variance(frame, schedule, proxy)
        else:
            out[name] = meta_variance(frame, model, meta_schedule)  # type: ignore[arg-type]
    return out


def forecast_vols(
    frames: Mapping[str, pd.DataFrame], estimator: str, **kw: Any
) -> dict[str, pd.Series]:
    """Daily volatility forecasts (square roots of :func:`forecast_variances`)."""
    return {k: np.sqrt(v) for k, v in forecast_variances(frames, estimator, **kw).items()}

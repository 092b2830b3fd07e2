"""Benchmark of the online regime detectors on synthetic returns with known changes.

Two kinds of series, drawn inline with numpy so the numbers depend on nothing
but the seed:

* regime series: Gaussian daily returns whose volatility alternately doubles and
  halves at random points, segments of ``segment`` bars (several hundred), base
  volatility log-uniform in ``vol_range``;
* null series: the same with constant volatility, for false alarms.

Reported per detector (the ``detectors`` block of the bench JSON):

``update_us``
    median wall time of one ``update`` call [microseconds].
``bank8_update_us_per_series``
    median wall time of one bar of a vectorised bank of 8 series (what the
    strategy runs for 8 assets), divided by 8 [microseconds]; only for detectors
    with such a bank (``bocpd_ar``).
``delay_bars``
    mean detection delay of a volatility doubling [bars]: the number of post-change
    bars seen up to and including the alarm (an alarm on the first changed bar
    counts 1), over the doublings detected within ``window`` bars.
``false_alarms_per_1000``
    alarms per 1,000 bars of the null series, start-up bars included; 0.5 is an
    average run length of 2,000 bars between false alarms.

plus ``detected_fraction`` (doublings detected within ``window``),
``halving_delay_bars``, ``halving_detected_fraction`` and
``regime_false_alarms_per_1000`` (alarms on the regime series outside every
detection window: false alarms right after a change, when the detector has just
restarted, are counted there).

The changes a trend / reversion policy cares about are different: the sign of the
returns' autocorrelation flips at constant vol. :func:`bench_ar_flips` measures,
per detector, on AR(1) series whose coefficient alternates between +phi and -phi
(phi drawn in [0.15, 0.25], the synthetic lab's range) at constant vol:

``ar_flip_detect_30`` / ``ar_flip_delay_bars``
    share of flips detected within 30 bars, and the mean delay of those;
``vol_only_detect_30``
    share of pure vol doublings / halvings (constant AR) "detected" within 30 bars:
    changes a vol-scaled policy need not react to (lower is better);
``ar_false_alarms_per_1000``
    alarms per 1,000 bars of constant-AR, constant-vol series.

Each detector gets the input it is built for (``input_kind``): raw returns,
returns divided by the trailing vol, or the standardised per-bar loss of a simple
adapted policy (the sign of the last 60 bars' autocorrelation times the last
return, with the loss reference re-estimated every 5 bars on the 60 bars before).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from metabt.strategies.detectors import (
    DETECTORS,
    Detector,
    DetectorBank,
    make_detector,
    make_detector_bank,
)


def vol_regime_series(
    rng: np.random.Generator,
    n_bars: int,
    segment: tuple[int, int] = (300, 700),
    vol_range: tuple[float, float] = (0.005, 0.03),
    ratio: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian returns whose volatility alternately rises and falls by ``ratio``.

    Returns
    -------
    returns : ndarray of shape (n_bars,)
    changes : int ndarray, index of the first bar of each new regime
    ups : bool ndarray, True where that change multiplies volatility by ``ratio``
    """
    lengths = []
    total = 0
    while total < n_bars:
        lengths.append(int(rng.integers(segment[0], segment[1] + 1)))
        total += lengths[-1]
    base = float(np.exp(rng.uniform(np.log(vol_range[0]), np.log(vol_range[1]))))
    up = bool(rng.integers(2))
    vols, ups = [], []
    vol = base
    for i, length in enumerate(lengths):
        if i:
            vol = vol * ratio if up else vol / ratio
            ups.append(up)
            up = not up
        vols.append(np.full(length, vol))
    sigma = np.concatenate(vols)[:n_bars]
    changes = np.cumsum(lengths)[:-1]
    keep = changes < n_bars
    returns = sigma * rng.standard_normal(n_bars)
    return returns, changes[keep].astype(int), np.array(ups, dtype=bool)[keep]


def run_detector(detector: Detector, returns: Iterable[float]) -> np.ndarray:
    """Feed ``returns`` one by one; return the indices of the bars that raised an alarm."""
    return np.array([i for i, x in enumerate(returns) if detector.update(float(x))], dtype=int)


def detection_delays(
    alarms: np.ndarray, changes: np.ndarray, n_bars: int, window: int
) -> tuple[np.ndarray, int]:
    """Delay of the first alarm within ``window`` bars of each change (NaN if none).

    The window also stops at the next change. The delay counts post-change bars up
    to and including the alarm. Also returns the number of alarms outside every
    window (false alarms).
    """
    delays = np.full(len(changes), np.nan)
    matched = np.zeros(len(alarms), dtype=bool)
    ends = np.append(changes[1:], n_bars)
    for j, (start, end) in enumerate(zip(changes, ends)):
        inside = (alarms >= start) & (alarms < min(start + window, end))
        if inside.any():
            delays[j] = alarms[inside][0] - start + 1
        matched |= inside
    return delays, int((~matched).sum())


def _timed_updates(factory: Callable[[], Detector], returns: np.ndarray) -> np.ndarray:
    det = factory()
    clock = time.perf_counter_ns
    out = np.empty(len(returns))
    for i, x in enumerate(returns.tolist()):
        t0 = clock()
        det.update(x)
        out[i] = clock() - t0
    return out / 1e3


def _timed_bank_updates(name: str, kwargs: dict, inputs: np.ndarray) -> np.ndarray | None:
    """Per-series cost of a vectorised bank over the columns of ``inputs`` (None: no bank)."""
    bank = make_detector_bank(name, inputs.shape[1], **kwargs)
    if isinstance(bank, DetectorBank):
        return None
    clock = time.perf_counter_ns
    active = np.ones(inputs.shape[1], dtype=bool)
    out = np.empty(len(inputs))
    for i, row in enumerate(inputs):
        t0 = clock()
        bank.update(row, active)
        out[i] = clock() - t0
    return out / 1e3 / inputs.shape[1]


def bench_detectors(
    seed: int = 0,
    n_series: int = 40,
    n_bars: int = 4000,
    window: int = 50,
    names: Sequence[str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """Detection delay, false-alarm rate and update cost of each registered detector.

    Parameters
    ----------
    seed : int
        Seeds every series; the result is a function of the arguments only (the
        timings aside).
    n_series : int
        Regime series and null series drawn, each ``n_bars`` long.
    n_bars : int
        Length of each series [bars].
    window : int
        A change counts as detected by the first alarm within this many bars [bars].
    names : sequence of str, optional
        Detectors to run (default: all of ``DETECTORS``).
    settings : dict, optional
        Per-detector keyword settings passed to :func:`make_detector`.

    Returns
    -------
    dict
        ``{"detectors": {name: {"update_us", ["bank8_update_us_per_series",] "delay_bars",
        "false_alarms_per_1000", "detected_fraction", "halving_delay_bars",
        "halving_detected_fraction", "regime_false_alarms_per_1000"}}, "setup": {...}}``
    """
    names = list(names or DETECTORS)
    settings = settings or {}
    rng = np.random.default_rng(seed)
    regime = [vol_regime_series(rng, n_bars) for _ in range(n_series)]
    null = [vol_regime_series(rng, n_bars, segment=(n_bars, n_bars))[0] for _ in range(n_series)]
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        kwargs = settings.get(name, {})

        def factory(name: str = name, kwargs: dict = kwargs) -> Detector:
            return make_detector(name, **kwargs)

        kind = getattr(DETECTORS[name], "input_kind", "return")

        def alarms_on(
            returns: np.ndarray, factory: Callable[[], Detector] = factory, kind: str = kind
        ) -> np.ndarray:
            # Each detector sees what the strategy feeds it (see detector_inputs).
            xs = detector_inputs(kind, returns)
            return run_detector(factory(), xs) + (len(returns) - len(xs))

        up_delays, down_delays = [], []
        n_stray = 0
        for returns, changes, ups in regime:
            delays, stray = detection_delays(alarms_on(returns), changes, n_bars, window)
            n_stray += stray
            up_delays.extend(delays[ups])
            down_delays.extend(delays[~ups])
        cost = np.concatenate(
            [_timed_updates(factory, detector_inputs(kind, returns)) for returns in null[:2]]
        )
        # What the strategy runs: one bank for its 8 assets, one update per bar for all.
        bank_cost = _timed_bank_updates(
            name,
            kwargs,
            np.column_stack([detector_inputs(kind, null[i % len(null)]) for i in range(8)]),
        )
        n_false = 0
        for returns in null:
            n_false += len(alarms_on(returns))
        up, down = np.array(up_delays), np.array(down_delays)
        out[name] = {
            "update_us": round(float(np.median(cost)), 2),
            "delay_bars": round(float(np.nanmean(up)), 2) if np.isfinite(up).any() else None,
            "false_alarms_per_1000": round(1000.0 * n_false / (n_series * n_bars), 3),
            "detected_fraction": round(float(np.isfinite(up).mean()), 3),
            "halving_delay_bars": (
                round(float(np.nanmean(down)), 2) if np.isfinite(down).any() else None
            ),
            "halving_detected_fraction": round(float(np.isfinite(down).mean()), 3),
            "regime_false_alarms_per_1000": round(1000.0 * n_stray / (n_series * n_bars), 3),
        }
        if bank_cost is not None:
            out[name]["bank8_update_us_per_series"] = round(float(np.median(bank_cost)), 2)
    return {
        "detectors": out,
        "setup": {
            "seed": seed,
            "n_series": n_series,
            "n_bars": n_bars,
            "window": window,
            "segment_bars": [300, 700],
            "vol_range": [0.005, 0.03],
            "vol_ratio": 2.0,
        },
    }


FLIP_WINDOW = 30


def ar_series(
    rng: np.random.Generator,
    n_bars: int,
    flip: bool,
    vol_change: bool,
    segment: tuple[int, int] = (300, 700),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns with AR(1) regimes: the sign of phi flips (``flip``) and/or vol doubles /
    halves (``vol_change``) at each change; neither gives a no-change series.

    Returns
    -------
    returns : ndarray of shape (n_bars,)
    changes : int ndarray, index of the first bar of each new regime
    phi : ndarray of shape (n_bars,), the AR coefficient in force at each bar
    """
    lengths, total = [], 0
    while total < n_bars:
        lengths.append(int(rng.integers(segment[0], segment[1] + 1)))
        total += lengths[-1]
    if not (flip or vol_change):
        lengths = [n_bars]
    phi = float(rng.uniform(0.15, 0.25)) * (1 if rng.integers(2) else -1)
    vol = float(np.exp(rng.uniform(np.log(0.005), np.log(0.03))))
    phis, vols = [], []
    for i, length in enumerate(lengths):
        if i and flip:
            phi = -phi
        if i and vol_change:
            vol = vol * 2.0 if i % 2 else vol / 2.0
        phis.append(np.full(length, phi))
        vols.append(np.full(length, vol))
    phi_t, vol_t = np.concatenate(phis)[:n_bars], np.concatenate(vols)[:n_bars]
    eps = rng.standard_normal(n_bars)
    z = np.empty(n_bars)
    prev = 0.0
    for t in range(n_bars):
        prev = phi_t[t] * prev + np.sqrt(1.0 - phi_t[t] ** 2) * eps[t]
        z[t] = prev
    changes = np.cumsum(lengths)[:-1]
    return z * vol_t, changes[changes < n_bars].astype(int), phi_t


def detector_inputs(kind: str, returns: np.ndarray, halflife: float = 20.0) -> np.ndarray:
    """What a detector of ``input_kind`` sees for these returns (see module docstring)."""
    if kind == "return":
        return returns
    decay = 0.5 ** (1.0 / halflife)
    total, weight, vol = 0.0, 0.0, np.empty(len(returns))
    for t, r in enumerate(returns):
        total, weight = r * r + decay * total, 1.0 + decay * weight
        vol[t] = max(np.sqrt(total / weight), 1e-4)
    z = np.empty(len(returns))
    z[0] = 0.0
    z[1:] = returns[1:] / vol[:-1]
    if kind == "scaled_return":
        return z[1:]
    # kind == "loss": the policy's standardised excess loss on each new bar
    out = np.zeros(len(z))
    mean, sd, sign = 0.0, 1.0, 0.0
    for t in range(62, len(z)):
        if t % 5 == 0 or t == 62:
            past = z[t - 61 : t - 1]
            ac = np.corrcoef(past[1:], past[:-1])[0, 1]
            pos = np.sign(ac) * np.sign(past[:-1])
            losses = -pos * past[1:]
            mean, sd = float(losses.mean()), max(float(losses.std()), 1e-6)
            sign = np.sign(ac)
        out[t] = (-sign * np.sign(z[t - 1]) * z[t] - mean) / sd
    return out[62:]


def bench_ar_flips(
    seed: int = 0, n_series: int = 30, n_bars: int = 3000, names: Sequence[str] | None = None
) -> dict[str, dict[str, float | None]]:
    """AR-sign-flip detection, vol-only sensitivity and false alarms of every detector."""
    names = list(names or DETECTORS)
    rng = np.random.default_rng(seed)
    kinds = {"flip": (True, False), "vol": (False, True), "null": (False, False)}
    series = {
        k: [ar_series(rng, n_bars, *flags) for _ in range(n_series)] for k, flags in kinds.items()
    }
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        kind = getattr(DETECTORS[name], "input_kind", "return")
        result: dict[str, float | None] = {}
        for label, runs in series.items():
            delays: list[float] = []
            false_alarms, bars = 0, 0
            for returns, changes, _ in runs:
                xs = detector_inputs(kind, returns)
                shift = len(returns) - len(xs)  # bars the input needs before its first value
                alarms = run_detector(make_detector(name), xs) + shift
                if label == "null":
                    false_alarms += len(alarms)
                    bars += len(xs)
                    continue
                d, _ = detection_delays(alarms, changes[changes > shift], len(returns), FLIP_WINDOW)
                delays.extend(d)
            d = np.array(delays)
            if label == "flip":
                result["ar_flip_detect_30"] = round(float(np.isfinite(d).mean()), 3)
                result["ar_flip_delay_bars"] = (
                    round(float(np.nanmean(d)), 2) if np.isfinite(d).any() else None
                )
            elif label == "vol":
                result["vol_only_detect_30"] = round(float(np.isfinite(d).mean()), 3)
            else:
                result["ar_false_alarms_per_1000"] = round(1000.0 * false_alarms / bars, 3)
        out[name] = result
    return out

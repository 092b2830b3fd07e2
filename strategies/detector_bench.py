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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from strategies.detectors import DETECTORS, Detector, make_detector


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
        ``{"detectors": {name: {"update_us", "delay_bars", "false_alarms_per_1000",
        "detected_fraction", "halving_delay_bars", "halving_detected_fraction",
        "regime_false_alarms_per_1000"}}, "setup": {...}}``
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

        up_delays, down_delays = [], []
        n_stray = 0
        for returns, changes, ups in regime:
            delays, stray = detection_delays(
                run_detector(factory(), returns), changes, n_bars, window
            )
            n_stray += stray
            up_delays.extend(delays[ups])
            down_delays.extend(delays[~ups])
        cost = np.concatenate([_timed_updates(factory, returns) for returns in null[:2]])
        n_false = 0
        for returns in null:
            n_false += len(run_detector(factory(), returns))
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
    return {
        "detectors": out,
        "setup": {"seed": seed, "n_series": n_series, "n_bars": n_bars, "window": window,
                  "segment_bars": [300, 700], "vol_range": [0.005, 0.03], "vol_ratio": 2.0},
    }

"""How fast could ANY detector see an autocorrelation flip? The known-change CUSUM bound.

The detector bench (:func:`strategies.detector_bench.bench_ar_flips`) asks each
detector to catch, within 30 bars, a flip of an AR(1) coefficient from +phi to
-phi at constant vol, while raising at most one false alarm per 1,000 quiet bars.
This module measures the best that is possible on the very same series.

Page's CUSUM on the exact log-likelihood ratio of "the coefficient is now -phi"
against "it is still phi", told the true phi and the true vol, is the optimal
detector of that change (Lorden 1971, Moustakides 1986: no detector with the same
false-alarm rate has a shorter worst-case delay). Real detectors know neither phi
nor when it will flip, so they can only do worse. The information in each bar is
small: one bar of the flipped process carries on average ``2 phi^2 / (1 - phi^2)``
nats of evidence against the old one (0.05-0.13 for phi in [0.15, 0.25]), while a
false-alarm rate of 1 in 1,000 bars needs about ``log(1000) = 6.9`` nats: 50-150
bars at the average rate, so only the lucky stretches are caught within 30.

:func:`ar_flip_bound` calibrates the CUSUM threshold on the bench's no-change
series (the lowest threshold with at most ``max_false_alarms`` per 1,000 bars)
and reports the share of flips it catches within 30 bars at that threshold:
the ``ar_flip_bound`` block of ``metabt bench --json``.
"""

from __future__ import annotations

import numpy as np

from metabt.strategies.detector_bench import FLIP_WINDOW, ar_series, detection_delays

#: Thresholds tried, in nats of accumulated evidence.
THRESHOLDS = tuple(np.round(np.arange(1.0, 12.01, 0.25), 2))


def flip_llr(prev: np.ndarray, now: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Log-likelihood ratio of one bar under coefficient ``-phi`` against ``phi``.

    ``prev`` and ``now`` are consecutive values of the series in units of its
    stationary standard deviation, so that ``now = phi prev + sqrt(1 - phi^2) e``:
    ``log N(now; -phi prev, 1 - phi^2) - log N(now; phi prev, 1 - phi^2)``. Its
    expectation is ``-2 phi^2 / (1 - phi^2)`` under ``phi`` and the opposite after
    the flip.
    """
    return -2.0 * phi * prev * now / (1.0 - phi * phi)


def known_change_cusum(z: np.ndarray, phi: np.ndarray, threshold: float) -> np.ndarray:
    """Alarm bars of Page's CUSUM told the true coefficient ``phi[t]`` of every bar.

    It watches for a flip of the coefficient in force at its last restart. After
    an alarm it restarts watching the coefficient then in force (after a flip,
    the new one; after a false alarm, the same), as the optimal detector of a
    known change does.
    """
    # Evidence of each bar against the coefficient really in force; while a flip
    # is undetected the detector still watches the old one, and the sign turns.
    evidence_now = flip_llr(z[:-1], z[1:], phi[1:]).tolist()
    in_force = phi.tolist()
    alarms = []
    watched = in_force[0]
    total = 0.0
    for t, step in enumerate(evidence_now, start=1):
        total = max(0.0, total + (step if watched == in_force[t] else -step))
        if total > threshold:
            alarms.append(t)
            total, watched = 0.0, in_force[t]
    return np.array(alarms, dtype=int)


def ar_flip_bound(
    seed: int = 0, n_series: int = 30, n_bars: int = 3000, max_false_alarms: float = 1.0
) -> dict[str, float | None]:
    """The optimal detector's ``ar_flip_detect_30`` at the bench's false-alarm limit.

    The series are those of :func:`strategies.detector_bench.bench_ar_flips` for
    the same ``seed``, ``n_series`` and ``n_bars`` (drawn in the same order).

    Returns
    -------
    dict
        ``threshold`` (nats), ``ar_flip_detect_30``, ``ar_flip_delay_bars`` and
        ``ar_false_alarms_per_1000`` at the lowest threshold whose false alarms
        on the no-change series are at most ``max_false_alarms`` per 1,000 bars.
    """
    rng = np.random.default_rng(seed)
    flips = [ar_series(rng, n_bars, True, False) for _ in range(n_series)]
    [ar_series(rng, n_bars, False, True) for _ in range(n_series)]  # keep the bench's draws
    quiet = [ar_series(rng, n_bars, False, False) for _ in range(n_series)]

    def standardised(returns: np.ndarray) -> np.ndarray:
        # The vol is constant and known to the bound: divide by the series' own.
        return returns / returns.std()

    def false_alarm_rate(threshold: float) -> float:
        false = sum(len(known_change_cusum(standardised(r), p, threshold)) for r, _, p in quiet)
        return 1000.0 * false / (n_series * n_bars)

    # False alarms fall as the threshold rises: bisect for the lowest one quiet enough.
    low, high = 0, len(THRESHOLDS) - 1
    while low < high:
        mid = (low + high) // 2
        if false_alarm_rate(THRESHOLDS[mid]) <= max_false_alarms:
            high = mid
        else:
            low = mid + 1
    threshold = float(THRESHOLDS[low])
    rate = false_alarm_rate(threshold)
    delays = np.concatenate(
        [
            detection_delays(
                known_change_cusum(standardised(r), p, threshold), c, n_bars, FLIP_WINDOW
            )[0]
            for r, c, p in flips
        ]
    )
    hit = np.isfinite(delays)
    return {
        "threshold": threshold,
        "ar_flip_detect_30": round(float(hit.mean()), 3),
        "ar_flip_delay_bars": round(float(delays[hit].mean()), 2) if hit.any() else None,
        "ar_false_alarms_per_1000": round(rate, 3),
    }

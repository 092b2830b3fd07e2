"""What every online regime detector shares: the :class:`Detector` protocol and small helpers.

The helpers are the input check (a detector only sees finite returns), the one-line settings
check, and :class:`_Scale`, the causal running mean/variance both detectors standardise with.
The detectors themselves live in :mod:`strategies.bocpd` and :mod:`strategies.cusum`; build them
through :func:`strategies.detectors.make_detector`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Detector"]


@runtime_checkable
class Detector(Protocol):
    """What a strategy needs from an online change-point detector."""

    def update(self, x: float) -> bool:
        """Consume one return; True when a change is declared at this observation."""
        ...

    @property
    def change_probability(self) -> float:
        """A number in [0, 1]; higher means a change is more likely (see each class)."""
        ...

    @property
    def run_length(self) -> int:
        """Bars in the current regime, counted from its estimated start."""
        ...

    def reset(self) -> None:
        """Forget everything, as if freshly constructed."""
        ...


def _finite(x: float) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(
            f"detector input must be a finite return, got {x!r}; skip bars that have no return"
        )
    return x


def _check(owner: object, key: str, ok: bool, rule: str) -> None:
    if not ok:
        value = getattr(owner, key)
        raise ValueError(f"{type(owner).__name__}.{key} must be {rule}, got {value!r}")


class _Scale:
    """Causal running mean/variance: an expanding average that turns into an EWM.

    The weight of a new observation is ``max(1/n, 1 - 2**(-1/halflife))``, so the
    first bars are averaged equally (no start-up bias towards a guessed value) and
    later the estimate forgets with the given half-life in bars.
    """

    def __init__(self, halflife: float, prior_var: float) -> None:
        self.floor = 1.0 - 2.0 ** (-1.0 / halflife)
        self.prior_var = prior_var
        self.restart([])

    def restart(self, xs: list[float]) -> None:
        self.n = len(xs)
        self.mean = float(np.mean(xs)) if xs else 0.0
        self.var = float(np.var(xs)) if xs else 0.0

    @property
    def sd(self) -> float:
        # Before two observations there is no spread to measure; a flat series
        # must not divide by zero either.
        var = self.var if self.n >= 2 else self.prior_var
        return math.sqrt(max(var, 1e-20))

    def add(self, x: float) -> None:
        self.n += 1
        w = max(1.0 / self.n, self.floor)
        d = x - self.mean
        self.mean += w * d
        self.var = (1.0 - w) * (self.var + w * d * d)


def check_run_length_settings(s: Any) -> None:
    """The settings every BOCPD shares (hazard, run lengths, alarm rule), checked once."""
    _check(s, "hazard", s.hazard > 1.0, "> 1 (bars)")
    _check(s, "short_run", s.short_run >= 1, ">= 1 (bars)")
    _check(s, "max_run", s.max_run > s.short_run, "> short_run (bars)")
    _check(s, "threshold", 0.0 < s.threshold <= 1.0, "in (0, 1]")
    _check(s, "cooldown", s.cooldown >= 0, ">= 0 (bars)")


class ShortRunRule:
    """The alarm rule of both BOCPD detectors, from their run-length posterior.

    ``change_probability`` (``cp``) is the posterior mass on runs of at most
    ``short_run`` bars. A change is declared when it reaches ``threshold``, at least
    ``cooldown`` bars after the previous alarm, and only after it has fallen below
    ``threshold`` since (hysteresis: one alarm per change, none during the start-up
    bars when every run is short). At an alarm the run length is the most probable
    of the short runs; after that it counts up by one per bar.

    The rule runs ``size`` series side by side (one row of every array each), so a
    bank of detectors decides for all its series in a few numpy operations.
    """

    def __init__(self, short_run: int, threshold: float, cooldown: int, size: int = 1) -> None:
        self.short_run, self.threshold, self.cooldown = short_run, threshold, cooldown
        self.size = size
        self.reset()

    def reset(self) -> None:
        self.cp = np.ones(self.size)
        self.armed = np.zeros(self.size, dtype=bool)
        self.since_alarm = np.full(self.size, self.cooldown, dtype=np.int64)
        self.since_change = np.zeros(self.size, dtype=np.int64)

    def step(self, logp: np.ndarray, n: int, active: np.ndarray | None = None) -> np.ndarray:
        """One bar of the ``active`` rows (all if None).

        ``logp[:, 1:n]`` holds the log posterior of runs 1..n-1, one row per series.
        Returns a bool array, True where an alarm fires.
        """
        k = min(self.short_run, n - 1)
        short = logp[:, 1 : k + 1]
        cp = np.minimum(1.0, np.exp(short).sum(axis=1))
        # Inactive rows keep every value: they are masked out of each update.
        on = True if active is None else active
        self.cp = cp if active is None else np.where(active, cp, self.cp)
        self.since_alarm += on
        self.since_change += on
        fire = self.armed & (cp >= self.threshold) & (self.since_alarm >= self.cooldown) & on
        self.armed = (self.armed | ((cp < self.threshold) & on)) & ~fire
        if fire.any():
            self.since_alarm[fire] = 0
            self.since_change[fire] = 1 + np.argmax(short[fire], axis=1)
        return fire

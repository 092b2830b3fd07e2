"""Online regime detectors: Bayesian online change-point detection and CUSUM.

Both take one daily return at a time (simple or log, any scale: 0.5 %-3 % daily
vol is typical) and answer "did the regime just change?". They are causal (the
answer at bar ``t`` depends on ``x_1..x_t`` only), deterministic, and cheap enough
to run inside ``next()`` of a Backtrader strategy: BOCPD costs O(``max_run``)
numpy work per bar, CUSUM a handful of float operations.

Both detectors implement the :class:`Detector` protocol::

    det = make_detector("bocpd")          # or "cusum"; settings as keywords
    for r in returns:
        if det.update(r):               # True on the bar a change is declared
            window = det.run_length     # bars since the estimated start of the new regime

The detectors live in :mod:`strategies.bocpd` and :mod:`strategies.cusum`, the protocol
and shared helpers in :mod:`strategies.detector_base`; this module holds the registry and
re-exports them, so ``from strategies.detectors import BOCPD`` keeps working.

Defaults were tuned on synthetic Gaussian returns with piecewise-constant
volatility (see ``strategies.detector_bench``), never on market data.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd

from metabt.feeds.did_you_mean import did_you_mean
from metabt.feeds.features import FeatureSpec, log_returns, trailing_vol
from metabt.strategies.bocpd import BOCPD, BOCPDSettings
from metabt.strategies.bocpd_ar import ARBOCPD, ARBOCPDBank, ARBOCPDSettings
from metabt.strategies.cusum import CUSUM, CUSUMSettings
from metabt.strategies.detector_base import Detector
from metabt.strategies.loss_cusum import LossCUSUM, LossCUSUMSettings

__all__ = [
    "ARBOCPD",
    "BOCPD",
    "CUSUM",
    "DETECTORS",
    "ARBOCPDSettings",
    "BOCPDSettings",
    "CUSUMSettings",
    "Detector",
    "DetectorBank",
    "LossCUSUM",
    "LossCUSUMSettings",
    "detect_alarms",
    "detect_changes",
    "make_detector",
    "make_detector_bank",
]


AnyDetector = BOCPD | CUSUM | ARBOCPD | LossCUSUM
# bocpd_ar watches vol-scaled returns for AR changes; loss watches the trading policy's own
# losses (the strategy feeds it); bocpd and cusum watch returns for vol and mean changes.
DETECTORS: dict[str, type[AnyDetector]] = {
    "bocpd": BOCPD,
    "cusum": CUSUM,
    "bocpd_ar": ARBOCPD,
    "loss": LossCUSUM,
}


def _hint(word: str, options: list[str]) -> str:
    suggestion = did_you_mean(word, options)
    return f"; {suggestion}" if suggestion else ""


def make_detector(name: str, **settings: Any) -> AnyDetector:
    """Build a detector by registry name with its settings as keyword arguments.

    Parameters
    ----------
    name : str
        A key of :data:`DETECTORS` (``"bocpd"`` or ``"cusum"``).
    **settings
        Fields of the detector's settings dataclass (``BOCPDSettings`` / ``CUSUMSettings``).

    Raises
    ------
    ValueError
        Unknown detector or setting (with a "did you mean" hint), or an invalid value.
    """
    try:
        cls = DETECTORS[name]
    except KeyError:
        known = sorted(DETECTORS)
        raise ValueError(
            f"unknown detector {name!r}{_hint(str(name), known)} (known: {', '.join(known)})"
        ) from None
    allowed = [f.name for f in fields(cls.Settings)]
    for key in settings:
        if key not in allowed:
            raise ValueError(
                f"unknown setting {key!r} for detector {name!r}{_hint(key, allowed)} "
                f"(allowed: {', '.join(allowed)})"
            )
    return cls.from_settings(**settings)


class DetectorBank:
    """One detector per series behind the interface of :class:`ARBOCPDBank`.

    Detectors with no vectorised bank are updated one series at a time.
    """

    def __init__(self, detectors: list[AnyDetector]) -> None:
        self.detectors = detectors
        self.input_kind = getattr(detectors[0], "input_kind", "return")

    def update(self, x: np.ndarray, active: np.ndarray) -> np.ndarray:
        """One bar of every ``active`` series; True where an alarm fires."""
        return np.array(
            [bool(on) and det.update(v) for det, v, on in zip(self.detectors, x, active)]
        )

    @property
    def run_length(self) -> np.ndarray:
        return np.array([det.run_length for det in self.detectors])


def make_detector_bank(name: str, size: int, **settings: Any) -> ARBOCPDBank | DetectorBank:
    """``size`` detectors of one kind (see :func:`make_detector`), updated together."""
    first = make_detector(name, **settings)
    if isinstance(first, ARBOCPD):
        return ARBOCPDBank(size, first.settings)
    return DetectorBank([first, *(make_detector(name, **settings) for _ in range(size - 1))])


def detect_changes(frame: pd.DataFrame, name: str, **settings: Any) -> list[pd.Timestamp]:
    """Regime starts a detector finds in one asset's bars, each known only at its alarm bar.

    Runs the detector causally over the close-to-close returns (divided by the
    trailing vol of the bar before for a ``scaled_return`` detector) and returns
    the estimated start date of every detected regime. Used to anchor training
    tasks on real data the way the strategy's windows are anchored. A detector
    that watches the policy's own losses has no returns to run on; the AR(1)
    BOCPD stands in for it.
    """
    return [start for start, _ in detect_alarms(frame, name, **settings)]


def detect_alarms(
    frame: pd.DataFrame, name: str, **settings: Any
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``(estimated start, alarm date)`` of every regime the detector finds (see detect_changes).

    The alarm date is the bar whose close made the detector fire: nothing about
    that change is known before it.
    """
    if name == "loss":
        name, settings = "bocpd_ar", {}
    det = make_detector(name, **settings)
    r = log_returns(frame).to_numpy()
    vol = trailing_vol(frame, FeatureSpec()).to_numpy()
    scaled = getattr(det, "input_kind", "return") == "scaled_return"
    found = []
    for t in range(1, len(r)):
        x = r[t] / vol[t - 1] if scaled else r[t]
        if np.isfinite(x) and det.update(x):
            found.append((frame.index[max(0, t - int(det.run_length) + 1)], frame.index[t]))
    return found

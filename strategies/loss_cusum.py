"""The loss detector: "the policy no longer fits", seen in its own realised losses.

After each adaptation the strategy knows the mean and spread of the adapted
policy's per-bar loss on its support window. On every newly labelled bar it
feeds this detector the standardised excess of the realised loss over that
mean. A one-sided CUSUM accumulates the excess; when it crosses ``threshold``
a change is declared, dated at the bar after the statistic last stood at zero.
Unlike a detector on returns it reacts to any change that hurts the policy
(autocorrelation, drift or vol), and to nothing that does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metabt.strategies.detector_base import _check, _finite

__all__ = ["LossCUSUM", "LossCUSUMSettings"]


@dataclass(frozen=True)
class LossCUSUMSettings:
    """Settings of :class:`LossCUSUM` (units in brackets).

    drift : allowance subtracted from each standardised excess loss; the CUSUM only
        grows while the loss runs above its support mean by more than this [sd].
    threshold : alarm level of the CUSUM [sd].
    min_run : bars after an alarm (or the start) before another alarm [bars].
    clip : standardised inputs are winsorised at +-clip [sd]; 0 disables.
    """

    drift: float = 0.25
    threshold: float = 8.0
    min_run: int = 20
    clip: float = 4.0

    def __post_init__(self) -> None:
        _check(self, "drift", self.drift >= 0.0, ">= 0")
        _check(self, "threshold", self.threshold > 0.0, "> 0")
        _check(self, "min_run", self.min_run >= 1, ">= 1 (bars)")
        _check(self, "clip", self.clip >= 0.0, ">= 0 (0 disables)")


class LossCUSUM:
    """One-sided CUSUM on standardised excess losses (``input_kind = "loss"``)."""

    Settings = LossCUSUMSettings
    input_kind = "loss"

    @classmethod
    def from_settings(cls, **settings: Any) -> LossCUSUM:
        """Build from keyword settings (fields of :class:`LossCUSUMSettings`)."""
        return cls(LossCUSUMSettings(**settings))

    def __init__(self, settings: LossCUSUMSettings | None = None) -> None:
        self.settings = settings or LossCUSUMSettings()
        self.reset()

    def reset(self) -> None:
        self._s = 0.0
        self._since_zero = 0
        self._since_alarm = 0
        self._since_change = 0

    def update(self, x: float) -> bool:
        s = self.settings
        x = _finite(x)
        if s.clip:
            x = min(max(x, -s.clip), s.clip)
        self._s = max(0.0, self._s + x - s.drift)
        self._since_zero = 0 if self._s == 0.0 else self._since_zero + 1
        self._since_alarm += 1
        self._since_change += 1
        if self._s >= s.threshold and self._since_alarm >= s.min_run:
            self._since_change = self._since_zero
            self._s, self._since_zero, self._since_alarm = 0.0, 0, 0
            return True
        return False

    @property
    def change_probability(self) -> float:
        """The CUSUM statistic as a share of its threshold, capped at 1."""
        return min(1.0, self._s / self.settings.threshold)

    @property
    def run_length(self) -> int:
        """Bars since the estimated start of the current regime (at an alarm: since the
        statistic last left zero)."""
        return self._since_change

"""BOCPD with a Bayesian AR(1) observation model: changes of autocorrelation, not only of vol.

The regimes that matter to a trend / reversion policy differ in the sign of the
returns' autocorrelation, at any volatility; a detector that models returns as
i.i.d. cannot see such a change. Here each regime is a Bayesian linear
regression of the vol-scaled return on ``[1, previous vol-scaled return]``
with a Normal-Inverse-Gamma prior, so a run's predictive density is a
Student-t whose centre follows the run's own AR coefficient. The run-length
posterior (Adams & MacKay, 2007) is updated in O(``max_run``) numpy work per
bar. Inputs are returns divided by the trailing vol known one bar earlier, so
a volatility change alone shifts little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammaln

from metabt.strategies.detector_base import ShortRunRule, _check, _finite, check_run_length_settings

__all__ = ["ARBOCPD", "ARBOCPDSettings"]


@dataclass(frozen=True)
class ARBOCPDSettings:
    """Settings of :class:`ARBOCPD` (units in brackets).

    hazard : expected regime length [bars]; the constant hazard is ``1/hazard``.
    max_run : run lengths kept [bars]; cost per update is O(max_run).
    short_run : ``k`` [bars]; ``change_probability`` is P(run length <= k).
    threshold : alarm when ``change_probability`` reaches this [probability].
    cooldown : minimum spacing between two alarms [bars].
    coef_prior : prior precision of the intercept and AR coefficient [pseudo-bars]: a new
        regime's AR coefficient is a priori 0 with sd ``1 / sqrt(coef_prior)``.
    noise_prior : ``alpha0`` of the inverse-gamma prior on the residual variance, centred
        on 1 (inputs are vol-scaled) [pseudo-observations / 2].
    clip : inputs are winsorised at +-clip [vol-scaled units]; 0 disables.
    """

    hazard: float = 250.0
    max_run: int = 300
    short_run: int = 30
    threshold: float = 0.5
    cooldown: int = 20
    coef_prior: float = 20.0
    noise_prior: float = 5.0
    clip: float = 4.0

    def __post_init__(self) -> None:
        check_run_length_settings(self)
        for key in ("coef_prior", "noise_prior"):
            _check(self, key, getattr(self, key) > 0.0, "> 0")
        _check(self, "clip", self.clip >= 0.0, ">= 0 (0 disables)")


class ARBOCPD:
    """Bayesian online change-point detection with an AR(1) regression per regime.

    Feed it vol-scaled returns (``input_kind = "scaled_return"``): the strategy
    divides each return by the trailing vol of the bar before. The decision rule
    is that of :class:`strategies.bocpd.BOCPD`: alarm when the posterior mass on
    runs of at most ``short_run`` bars reaches ``threshold`` (with hysteresis and
    a cooldown); ``run_length`` is then the most probable of those short runs.
    """

    Settings = ARBOCPDSettings
    input_kind = "scaled_return"

    @classmethod
    def from_settings(cls, **settings: Any) -> ARBOCPD:
        """Build from keyword settings (fields of :class:`ARBOCPDSettings`)."""
        return cls(ARBOCPDSettings(**settings))

    def __init__(self, settings: ARBOCPDSettings | None = None) -> None:
        self.settings = settings or ARBOCPDSettings()
        self._log_h = -math.log(self.settings.hazard)
        self._log_1mh = math.log1p(-1.0 / self.settings.hazard)
        # A run of i bars has alpha = noise_prior + i / 2 whatever the data, so alpha,
        # the Student-t's degrees of freedom and its gamma-function constant are fixed
        # per slot: computed once here, by the very additions a per-bar update of alpha
        # would make (so every value is identical), instead of on every bar.
        alpha = np.empty(self.settings.max_run)
        alpha[0] = self.settings.noise_prior
        for i in range(1, len(alpha)):
            alpha[i] = alpha[i - 1] + 0.5
        nu = 2.0 * alpha
        self._alpha, self._nu, self._nu_pi = alpha, nu, nu * math.pi
        self._half_nu1 = (nu + 1.0) / 2.0
        self._t_const = gammaln(self._half_nu1) - gammaln(nu / 2.0)
        self.reset()

    def reset(self) -> None:
        s = self.settings
        m = s.max_run
        # Per run length: precision matrix [[l11, l12], [l12, l22]] of (intercept,
        # AR coef), the precision-weighted mean h = L m, alpha, beta. Slot 0 = prior.
        self._l11, self._l12, self._l22 = (
            np.full(m, s.coef_prior),
            np.zeros(m),
            np.full(m, s.coef_prior),
        )
        self._h1, self._h2 = np.zeros(m), np.zeros(m)
        self._beta = np.full(m, s.noise_prior)  # prior residual variance 1
        self._logp = np.full(m, -np.inf)
        self._logp[0] = 0.0
        self._n = 1
        self._prev: float | None = None
        self._rule = ShortRunRule(s.short_run, s.threshold, s.cooldown)

    def _set_prior(self, i: int) -> None:
        s = self.settings
        self._l11[i] = self._l22[i] = s.coef_prior
        self._l12[i] = self._h1[i] = self._h2[i] = 0.0
        self._beta[i] = s.noise_prior

    def update(self, x: float) -> bool:
        s = self.settings
        x = _finite(x)
        if s.clip:
            x = min(max(x, -s.clip), s.clip)
        if self._prev is None:  # the first input only becomes the regressor
            self._prev = x
            self._rule.since_change += 1
            return False
        z, n = self._prev, self._n
        l11, l12, l22 = self._l11[:n], self._l12[:n], self._l22[:n]
        h1, h2 = self._h1[:n], self._h2[:n]
        alpha, beta = self._alpha[:n], self._beta[:n]
        det = l11 * l22 - l12 * l12
        m1, m2 = (l22 * h1 - l12 * h2) / det, (l11 * h2 - l12 * h1) / det
        # phi' L^-1 phi for phi = [1, z]
        quad = (l22 - 2.0 * l12 * z + l11 * z * z) / det
        mean = m1 + m2 * z
        scale2 = beta / alpha * (1.0 + quad)
        lpred = (
            self._t_const[:n]
            - 0.5 * np.log(self._nu_pi[:n] * scale2)
            - self._half_nu1[:n] * np.log1p((x - mean) ** 2 / (self._nu[:n] * scale2))
        )
        top_n = min(n + 1, s.max_run)
        new = np.full(s.max_run, -np.inf)
        new[1:top_n] = (self._logp[:n] + lpred)[: top_n - 1] + self._log_1mh
        new[1] = np.logaddexp(new[1], self._log_h + lpred[0])
        top = new[1:top_n].max()
        new[1:top_n] -= top + math.log(np.exp(new[1:top_n] - top).sum())
        self._logp = new
        # Conjugate update of every run, shifted one slot; slot 0 gets the prior again.
        quad_old = m1 * h1 + m2 * h2  # m' L m
        n11, n12, n22 = l11 + 1.0, l12 + z, l22 + z * z
        g1, g2 = h1 + x, h2 + z * x
        ndet = n11 * n22 - n12 * n12
        nm1, nm2 = (n22 * g1 - n12 * g2) / ndet, (n11 * g2 - n12 * g1) / ndet
        quad_new = nm1 * g1 + nm2 * g2
        for arr, value in (
            (self._l11, n11),
            (self._l12, n12),
            (self._l22, n22),
            (self._h1, g1),
            (self._h2, g2),
            (self._beta, beta + 0.5 * (x * x + quad_old - quad_new)),
        ):
            arr[1:top_n] = value[: top_n - 1]
        self._set_prior(0)
        self._n = top_n
        self._prev = x

        return self._rule.step(self._logp, top_n)

    @property
    def change_probability(self) -> float:
        """P(the regime started within the last ``short_run`` bars)."""
        return self._rule.cp

    @property
    def run_length(self) -> int:
        """Bars since the start of the regime estimated at the last alarm (since reset if none)."""
        return self._rule.since_change

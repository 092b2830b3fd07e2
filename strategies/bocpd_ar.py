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

__all__ = ["ARBOCPD", "ARBOCPDBank", "ARBOCPDSettings"]


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


class ARBOCPDBank:
    """The AR(1) BOCPD of ``size`` series at once: one numpy pass per bar serves all.

    A strategy trading eight assets runs eight detectors; their per-bar updates are
    the same arithmetic on different rows, so they are done as one update of
    ``(size, max_run)`` arrays instead of eight small ones (numpy's per-call cost,
    not the arithmetic, is most of an update). Row ``i`` of every result is
    exactly what a lone :class:`ARBOCPD` fed series ``i`` computes.
    """

    input_kind = "scaled_return"

    def __init__(self, size: int, settings: ARBOCPDSettings | None = None) -> None:
        self.settings = s = settings or ARBOCPDSettings()
        self.size = size
        self._log_h = -math.log(s.hazard)
        self._log_1mh = math.log1p(-1.0 / s.hazard)
        # A run of i bars has alpha = noise_prior + i / 2 whatever the data, so alpha,
        # the Student-t's degrees of freedom and its constants are fixed per slot and
        # computed once here instead of on every bar.
        alpha = s.noise_prior + 0.5 * np.arange(s.max_run)
        nu = 2.0 * alpha
        self._inv_alpha, self._nu = 1.0 / alpha, nu
        self._half_nu1 = (nu + 1.0) / 2.0
        self._t_const = gammaln(self._half_nu1) - gammaln(nu / 2.0) - 0.5 * np.log(nu * math.pi)
        # A new run's posterior (rows as in reset): coefficients 0, S = I / coef_prior, beta.
        inv = 1.0 / s.coef_prior
        self._prior = np.array([0.0, 0.0, inv, 0.0, inv, s.noise_prior])[:, None]
        self.reset()

    def reset(self) -> None:
        s = self.settings
        # One array holds every run's posterior, so shifting the runs one slot per bar
        # is one copy: rows m1, m2 (posterior mean of intercept and AR coefficient),
        # s11, s12, s22 (their covariance over beta / alpha), beta. Slot 0 = the prior.
        # Every series spans all max_run slots from the start: slots no run has reached
        # yet hold the prior and log probability -inf, so they change no sum or max.
        self._post = np.repeat(self._prior[:, None, :], self.size, axis=1)
        self._post = np.ascontiguousarray(np.broadcast_to(self._post, (6, self.size, s.max_run)))
        self._logp = np.full((self.size, s.max_run), -np.inf)
        self._logp[:, 0] = 0.0
        self._prev = np.zeros(self.size)
        self._has_prev = np.zeros(self.size, dtype=bool)
        self.rule = ShortRunRule(s.short_run, s.threshold, s.cooldown, self.size)

    def update(self, x: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """One bar of every ``active`` series (all if None); True where an alarm fires.

        ``x`` holds one finite vol-scaled return per series (inactive rows are ignored).
        """
        s = self.settings
        x = np.asarray(x, dtype=np.float64)
        if active is None:
            active = np.ones(self.size, dtype=bool)
        if s.clip:
            x = np.clip(x, -s.clip, s.clip)
        step = active
        if not self._has_prev.all():
            # A series' first input only becomes its regressor.
            first = active & ~self._has_prev
            step = active & self._has_prev
            self._prev[first] = x[first]
            self._has_prev |= first
            self.rule.since_change += first
            if not step.any():
                return np.zeros(self.size, dtype=bool)
        every = bool(step.all())
        old = None if every else (self._post[:, ~step].copy(), self._logp[~step].copy())
        post = self._post
        m1, m2, s11, s12, s22, beta = post
        z, xc = self._prev[:, None], x[:, None]
        # Student-t predictive of x given regressors phi = [1, z], for every run.
        s1, s2 = s11 + s12 * z, s12 + s22 * z  # S phi
        d = 1.0 + s1 + s2 * z  # 1 + phi' S phi
        e = xc - m1 - m2 * z
        e2 = e * e
        scale2 = beta * self._inv_alpha * d
        lpred = (
            self._t_const
            - 0.5 * np.log(scale2)
            - self._half_nu1 * np.log1p(e2 / (self._nu * scale2))
        )
        # Run-length posterior: every run grows by one; a new run starts at this bar.
        grown = self._logp + lpred
        new = np.empty_like(grown)
        new[:, 0] = -np.inf
        new[:, 1:] = grown[:, :-1] + self._log_1mh
        new[:, 1] = np.logaddexp(new[:, 1], self._log_h + lpred[:, 0])
        top = new[:, 1:].max(axis=1, keepdims=True)
        new[:, 1:] -= top + np.log(np.exp(new[:, 1:] - top).sum(axis=1, keepdims=True))
        # Conjugate (recursive least squares) update of every run, then the shift.
        k1, k2 = s1 / d, s2 / d
        m1 += k1 * e
        m2 += k2 * e
        s11 -= s1 * k1
        s12 -= s1 * k2
        s22 -= s2 * k2
        beta += 0.5 * e2 / d
        post[:, :, 1:] = post[:, :, :-1]
        post[:, :, :1] = self._prior[:, None, :]
        self._logp = new
        if old is not None:
            post[:, ~step], self._logp[~step] = old
        if every:
            self._prev[:] = x
        else:
            self._prev[step] = x[step]
        return self.rule.step(self._logp, s.max_run, None if every else step)

    @property
    def change_probability(self) -> np.ndarray:
        """P(the regime started within the last ``short_run`` bars), per series."""
        return self.rule.cp

    @property
    def run_length(self) -> np.ndarray:
        """Bars since the regime start estimated at the last alarm, per series."""
        return self.rule.since_change


class ARBOCPD:
    """Bayesian online change-point detection with an AR(1) regression per regime.

    Feed it vol-scaled returns (``input_kind = "scaled_return"``): the strategy
    divides each return by the trailing vol of the bar before. The decision rule
    is that of :class:`strategies.bocpd.BOCPD`: alarm when the posterior mass on
    runs of at most ``short_run`` bars reaches ``threshold`` (with hysteresis and
    a cooldown); ``run_length`` is then the most probable of those short runs.
    One series is a bank of one (:class:`ARBOCPDBank`).
    """

    Settings = ARBOCPDSettings
    input_kind = "scaled_return"

    @classmethod
    def from_settings(cls, **settings: Any) -> ARBOCPD:
        """Build from keyword settings (fields of :class:`ARBOCPDSettings`)."""
        return cls(ARBOCPDSettings(**settings))

    def __init__(self, settings: ARBOCPDSettings | None = None) -> None:
        self._bank = ARBOCPDBank(1, settings)
        self.settings = self._bank.settings

    def reset(self) -> None:
        self._bank.reset()

    def update(self, x: float) -> bool:
        return bool(self._bank.update(np.array([_finite(x)]))[0])

    @property
    def change_probability(self) -> float:
        """P(the regime started within the last ``short_run`` bars)."""
        return float(self._bank.change_probability[0])

    @property
    def run_length(self) -> int:
        """Bars since the start of the regime estimated at the last alarm (since reset if none)."""
        return int(self._bank.run_length[0])

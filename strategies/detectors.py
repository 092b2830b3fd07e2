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

Defaults were tuned on synthetic Gaussian returns with piecewise-constant
volatility (see ``strategies.detector_bench``), never on market data.
"""

from __future__ import annotations

import difflib
import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BOCPD",
    "CUSUM",
    "DETECTORS",
    "BOCPDSettings",
    "CUSUMSettings",
    "Detector",
    "make_detector",
]


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


# --------------------------------------------------------------------------- BOCPD


@dataclass(frozen=True)
class BOCPDSettings:
    """Settings of :class:`BOCPD` (units in brackets).

    hazard : expected regime length [bars]; the constant hazard is ``1/hazard``.
    max_run : run lengths kept [bars]; cost per update is O(max_run). Mass on longer
        runs is dropped and the rest renormalised.
    short_run : ``k`` [bars]; ``change_probability`` is P(regime began within the last k bars).
    threshold : alarm when ``change_probability`` reaches this [probability].
    cooldown : minimum spacing between two alarms [bars].
    prior_strength : ``alpha0`` of the Normal-Gamma prior [pseudo-observations / 2]; the
        prior variance of a new regime is centred on the slow running variance.
    mean_prior : ``kappa0`` [pseudo-observations]; how many bars the prior mean of 0 is worth.
    halflife : half-life of the slow running variance used for the prior scale and for
        winsorising [bars].
    clip : inputs beyond ``clip`` running standard deviations are winsorised, so a single
        crash day is not a regime on its own [sd]; 0 disables.
    prior_vol : daily volatility assumed before any data [return units].

    The defaults were chosen on the synthetic bench (Gaussian returns, vol doubling
    and halving every 300-700 bars): mean delay about 10 bars for a doubling with
    about 0.4 false alarms per 1,000 bars.
    """

    hazard: float = 1000.0
    max_run: int = 300
    short_run: int = 40
    threshold: float = 0.4
    cooldown: int = 20
    prior_strength: float = 1.0
    mean_prior: float = 100.0
    halflife: float = 250.0
    clip: float = 4.0
    prior_vol: float = 0.01

    def __post_init__(self) -> None:
        _check(self, "hazard", self.hazard > 1.0, "> 1 (bars)")
        _check(self, "short_run", self.short_run >= 1, ">= 1 (bars)")
        _check(self, "max_run", self.max_run > self.short_run, "> short_run (bars)")
        _check(self, "threshold", 0.0 < self.threshold <= 1.0, "in (0, 1]")
        _check(self, "cooldown", self.cooldown >= 0, ">= 0 (bars)")
        for key in ("prior_strength", "mean_prior", "halflife", "prior_vol"):
            _check(self, key, getattr(self, key) > 0.0, "> 0")
        _check(self, "clip", self.clip >= 0.0, ">= 0 (0 disables)")


class BOCPD:
    """Bayesian online change-point detection (Adams & MacKay, 2007).

    Model: within a regime returns are i.i.d. Normal with unknown mean and variance
    under a Normal-Gamma prior; regimes end with constant hazard ``1/hazard``. The
    posterior over the run length (bars in the current regime) is kept in log space
    for run lengths ``1..max_run-1``; each update costs O(max_run).

    Decision rule: ``change_probability = P(run length <= short_run | x_1..x_t)``, the
    posterior mass that the regime started within the last ``short_run`` bars. A
    change is declared when it reaches ``threshold``, at least ``cooldown`` bars after
    the previous alarm, and only after it has fallen below ``threshold`` since
    (hysteresis: one alarm per change, and none during the start-up bars when every
    run is short). Summing over the short run lengths, rather than watching
    P(run length = 0), pools the evidence of the few bars after a change, which is
    what makes a volatility doubling detectable in about ten bars.
    """

    Settings = BOCPDSettings

    @classmethod
    def from_settings(cls, **settings: Any) -> BOCPD:
        """Build from keyword settings (fields of :class:`BOCPDSettings`)."""
        return cls(BOCPDSettings(**settings))

    def __init__(self, settings: BOCPDSettings | None = None) -> None:
        self.settings = s = settings or BOCPDSettings()
        r = np.arange(s.max_run, dtype=float)  # observations seen by each run
        alpha = s.prior_strength + r / 2.0
        kappa = s.mean_prior + r
        # Everything that depends only on the run length is precomputed, leaving
        # two data-dependent arrays (mean and beta) per update.
        lg = np.array([math.lgamma(a + 0.5) - math.lgamma(a) for a in alpha])
        self._c0 = lg - 0.5 * math.log(2.0 * math.pi)
        self._ah = alpha + 0.5
        self._c1 = (kappa + 1.0) / kappa
        self._inv_k1 = 1.0 / (kappa + 1.0)
        self._k_k1 = kappa / (kappa + 1.0)
        self._log_h = -math.log(s.hazard)
        self._log_1mh = math.log1p(-1.0 / s.hazard)
        self.reset()

    def reset(self) -> None:
        s = self.settings
        self._scale = _Scale(s.halflife, s.prior_vol**2)
        self._mu = np.zeros(s.max_run)
        self._beta = np.zeros(s.max_run)
        self._logp = np.full(s.max_run, -np.inf)
        self._tmp = np.full(s.max_run, -np.inf)
        # Slot 0 holds the prior of a regime that starts with the next bar; slot j
        # the posterior of a regime that has seen j bars.
        self._logp[0] = 0.0
        self._beta[0] = s.prior_strength * s.prior_vol**2
        self._n = 1
        self._t = 0
        self._cp = 1.0
        self._armed = False
        self._since_alarm = s.cooldown
        self._since_change = 0

    def update(self, x: float) -> bool:
        s = self.settings
        x = _finite(x)
        sc = self._scale
        if s.clip and sc.n >= 2:
            lim = s.clip * sc.sd
            x = min(max(x, sc.mean - lim), sc.mean + lim)
        n = self._n
        mu, beta = self._mu[:n], self._beta[:n]
        # Student-t predictive of x under each run length.
        d = x - mu
        q = beta * self._c1[:n]
        lpred = self._c0[:n] - 0.5 * np.log(q) - self._ah[:n] * np.log1p(d * d / (2.0 * q))
        m = min(n + 1, s.max_run)
        new = self._tmp
        new[1:m] = (self._logp[:n] + lpred)[: m - 1] + self._log_1mh
        # A regime starting at this bar: hazard times the prior predictive (the
        # run-length posterior sums to one, so no sum over runs is needed).
        new[1] = np.logaddexp(new[1], self._log_h + lpred[0])
        top = new[1:m].max()
        new[1:m] -= top + math.log(np.exp(new[1:m] - top).sum())
        self._logp, self._tmp = new, self._logp
        self._logp[0] = -np.inf
        # Conjugate updates, shifted one slot; slot 0 gets a fresh prior centred on
        # the slow running variance so the detector works at any return scale.
        self._mu[1:m] = (mu + d * self._inv_k1[:n])[: m - 1]
        self._beta[1:m] = (beta + 0.5 * self._k_k1[:n] * d * d)[: m - 1]
        sc.add(x)
        self._mu[0] = 0.0
        self._beta[0] = s.prior_strength * sc.sd**2
        self._n = m
        self._t += 1

        k = min(s.short_run, m - 1)
        self._cp = min(1.0, float(np.exp(self._logp[1 : k + 1]).sum()))
        self._since_alarm += 1
        self._since_change += 1
        fire = self._armed and self._cp >= s.threshold and self._since_alarm >= s.cooldown
        if fire:
            self._armed = False
            self._since_alarm = 0
            self._since_change = 1 + int(np.argmax(self._logp[1 : k + 1]))
        elif self._cp < s.threshold:
            self._armed = True
        return fire

    @property
    def change_probability(self) -> float:
        """P(the regime started within the last ``short_run`` bars)."""
        return self._cp

    @property
    def run_length(self) -> int:
        """Bars since the start of the regime estimated at the last alarm (since reset if none).

        At an alarm it is the most probable run length among the short ones; after
        that it counts up by one per bar.
        """
        return self._since_change

    @property
    def map_run_length(self) -> int:
        """Most probable run length under the current posterior (0 before any data)."""
        return int(np.argmax(self._logp[: self._n]))


# --------------------------------------------------------------------------- CUSUM


@dataclass(frozen=True)
class CUSUMSettings:
    """Settings of :class:`CUSUM` (units in brackets).

    vol_ratio : volatility change the variance CUSUMs are tuned to; 2.0 watches for
        vol doubling (upper) and halving (lower) [ratio of standard deviations].
    up_threshold : alarm level of the vol-up CUSUM [nats of log-likelihood ratio].
    down_threshold : alarm level of the vol-down CUSUM [nats]. Higher than ``up_threshold``
        because runs of small returns are common under no change (the chi-square has
        much mass near 0), and a calmer market is the less urgent news.
    mean_shift : mean shift the mean CUSUMs are tuned to [running sd]; 0 disables them.
    mean_threshold : alarm level of the mean CUSUMs [nats].
    halflife : half-life of the slow running mean/variance used to standardise [bars].
    min_run : bars of the current regime needed before an alarm is allowed; also the
        warm-up at the start [bars].
    clip : standardised returns are winsorised at +-clip so one crash day cannot cross
        the threshold alone [sd]; 0 disables.

    The defaults were chosen on the synthetic bench (Gaussian returns, vol doubling
    and halving every 300-700 bars): mean delay about 9 bars for a doubling with
    about 0.4 false alarms per 1,000 bars.
    """

    vol_ratio: float = 2.0
    up_threshold: float = 5.5
    down_threshold: float = 8.0
    mean_shift: float = 0.25
    mean_threshold: float = 9.0
    halflife: float = 250.0
    min_run: int = 40
    clip: float = 4.0

    def __post_init__(self) -> None:
        _check(self, "vol_ratio", self.vol_ratio > 1.0, "> 1")
        for key in ("up_threshold", "down_threshold", "mean_threshold", "halflife"):
            _check(self, key, getattr(self, key) > 0.0, "> 0")
        _check(self, "min_run", self.min_run >= 2, ">= 2 (bars)")
        _check(self, "mean_shift", self.mean_shift >= 0.0, ">= 0 (0 disables)")
        _check(self, "clip", self.clip >= 0.0, ">= 0 (0 disables)")


class CUSUM:
    """Two-sided CUSUMs on standardised returns (mean) and squared returns (variance).

    Each bar ``e = (x - m) / s`` with ``m, s`` the slow running mean and sd from the
    bars *before* this one. Four one-sided log-likelihood-ratio CUSUMs
    ``S = max(0, S + llr(e))`` run side by side: sd up / down by ``vol_ratio`` (on
    ``e**2``) and mean up / down by ``mean_shift`` (on ``e``). A change is declared
    when one crosses its threshold.

    After an alarm the pre-change estimates are wrong by construction, so the
    running mean/variance restart from the bars since the alarming CUSUM was last
    zero (its estimate of the change time), all CUSUMs are cleared, and no alarm is
    allowed until the new regime has ``min_run`` bars. The estimates are updated
    with winsorised returns so a single outlier does not blunt the detector.

    ``change_probability`` is ``max_i S_i / threshold_i`` clipped to [0, 1]: a
    monotone map of the statistic that reaches 1 exactly at an alarm; it is not a
    posterior probability.
    """

    Settings = CUSUMSettings

    @classmethod
    def from_settings(cls, **settings: Any) -> CUSUM:
        """Build from keyword settings (fields of :class:`CUSUMSettings`)."""
        return cls(CUSUMSettings(**settings))

    def __init__(self, settings: CUSUMSettings | None = None) -> None:
        self.settings = s = settings or CUSUMSettings()
        rho2 = s.vol_ratio**2
        log_rho = math.log(s.vol_ratio)
        # Log-likelihood ratios of N(0, rho^2) and N(0, 1/rho^2) against N(0, 1): a + b*e^2.
        self._up = (0.5 * (1.0 - 1.0 / rho2), -log_rho)
        self._down = (0.5 * (1.0 - rho2), log_rho)
        self._buffer_len = max(4 * s.min_run, 250)
        self.reset()

    def reset(self) -> None:
        s = self.settings
        self._scale = _Scale(s.halflife, 1.0)
        self._recent: deque[float] = deque(maxlen=self._buffer_len)
        self._stat = [0.0, 0.0, 0.0, 0.0]  # vol up, vol down, mean up, mean down
        self._since_zero = [0, 0, 0, 0]
        self._limits = (s.up_threshold, s.down_threshold, s.mean_threshold, s.mean_threshold)
        self._since_change = 0
        self._cp = 0.0

    def update(self, x: float) -> bool:
        s = self.settings
        x = _finite(x)
        sc = self._scale
        self._recent.append(x)
        self._since_change += 1
        if sc.n < s.min_run:
            # Too few bars of this regime to standardise reliably: learn, don't judge.
            sc.add(x)
            self._cp = 0.0
            return False
        sd = sc.sd
        e = (x - sc.mean) / sd
        if s.clip:
            e = min(max(e, -s.clip), s.clip)
        e2 = e * e
        llr = [self._up[0] * e2 + self._up[1], self._down[0] * e2 + self._down[1]]
        if s.mean_shift:
            d = s.mean_shift
            llr += [d * e - 0.5 * d * d, -d * e - 0.5 * d * d]
        else:
            llr += [0.0, 0.0]
        stat, since_zero = self._stat, self._since_zero
        fired = -1
        for i in range(4):
            v = stat[i] + llr[i]
            if v > 0.0:
                stat[i] = v
                since_zero[i] += 1
            else:
                stat[i] = 0.0
                since_zero[i] = 0
            if fired < 0 and v >= self._limits[i]:
                fired = i
        self._cp = min(1.0, max(stat[i] / self._limits[i] for i in range(4)))
        sc.add(sc.mean + e * sd)  # winsorised value, on the return scale
        if fired < 0:
            return False
        onset = max(1, min(since_zero[fired], len(self._recent)))
        sc.restart(list(self._recent)[-onset:])
        self._stat = [0.0, 0.0, 0.0, 0.0]
        self._since_zero = [0, 0, 0, 0]
        self._since_change = onset
        return True

    @property
    def change_probability(self) -> float:
        """Largest CUSUM as a fraction of its threshold, in [0, 1] (not a probability)."""
        return self._cp

    @property
    def run_length(self) -> int:
        """Bars since the change time estimated at the last alarm (since reset if none).

        At an alarm it is the number of bars since the alarming CUSUM last sat at zero.
        """
        return self._since_change


# ------------------------------------------------------------------------ registry

DETECTORS: dict[str, type[BOCPD | CUSUM]] = {"bocpd": BOCPD, "cusum": CUSUM}


def _hint(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def make_detector(name: str, **settings: Any) -> BOCPD | CUSUM:
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

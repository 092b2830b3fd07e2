"""The comparison: every strategy side by side, the uncertainty, and the outcomes.

:func:`compare` computes a :class:`Comparison`: numbers and categorical outcomes,
no prose and no colours. The words are written by :mod:`metabt.reports.verdict`,
and the two renderers (:mod:`metabt.reports.markdown` for ``comparison.md``,
:mod:`metabt.reports.terminal` for the console) only read the data, so what the
file says and what the terminal shows cannot drift apart.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import pandas as pd

from metabt.reports.metrics import Metrics
from metabt.reports.runfolder import CEILING, STATIC_COMPARATORS, SUBJECT, Study, ordered_strategies
from metabt.reports.significance import (
    SharpeDiffCI,
    deflated_sharpe_ratio,
    probabilistic_sharpe_ratio,
    sharpe_difference_ci,
)

#: The ablations of meta_adaptive, each taking one ingredient away.
ABLATIONS: tuple[str, ...] = ("meta_frozen", "meta_calendar", "meta_random_init", "erm_static")
#: The comparator a trader asks about first, whatever was tuned.
BUY_AND_HOLD = "buy_and_hold"
#: Two CAGRs or volatilities "differ a lot" when the larger is this many times the smaller
#: (or they have opposite signs) and they are at least a percentage point apart: then a
#: similar Sharpe hides a very different return or risk, and the verdict says so.
SCALE_RATIO = 1.5


class Outcome(Enum):
    """How the subject's Sharpe compares with another strategy's, significance included."""

    BEAT = "beat"  # difference > 0 and the interval excludes 0
    LOST = "lost"  # difference < 0 and the interval excludes 0
    LEVEL = "level"  # the interval contains 0: the two cannot be told apart
    UNDEFINED = "undefined"  # a Sharpe is undefined (flat returns) or there is no interval


class ComparatorBasis(Enum):
    """How the best static comparator was chosen."""

    IN_SAMPLE = "in-sample"  # by the in-sample Sharpe: the test period plays no part
    TEST_SHARPE = "test"  # no in-sample Sharpe recorded: chosen on the test period
    NONE = "none"  # no static comparator in the run


@dataclass(frozen=True)
class Comparison:
    """Everything ``comparison.md`` and the console show; build it with :func:`compare`.

    Attributes
    ----------
    subject : str or None
        ``meta_adaptive``, or None when the run has no such column.
    best_static, best_static_basis
        The static comparator the verdict leads with, and how it was chosen.
    metrics, psr, dsr : Mapping
        Per strategy, in table order; ``dsr`` is NaN without a trial count.
    pairs : Mapping[str, SharpeDiffCI]
        The interval of ``Sharpe(subject) - Sharpe(other)`` for every other strategy.
    outcomes : Mapping[str, Outcome]
        The same pairs as categories.
    scale_differs : Mapping[str, bool]
        Per pair: the CAGRs or the volatilities differ a lot (see :data:`SCALE_RATIO`).
    ceiling_shares : Mapping[str, float]
        Synthetic studies: each learned strategy's Sharpe over the ceiling's
        (empty when there is no ceiling or its Sharpe is not positive).
    """

    title: str
    start: pd.Timestamp
    end: pd.Timestamp
    n_bars: int
    study: Study
    subject: str | None
    best_static: str | None
    best_static_basis: ComparatorBasis
    metrics: Metrics
    psr: Mapping[str, float]
    dsr: Mapping[str, float]
    pairs: Mapping[str, SharpeDiffCI]
    outcomes: Mapping[str, Outcome]
    scale_differs: Mapping[str, bool]
    ceiling_shares: Mapping[str, float]

    @property
    def headline_comparators(self) -> list[str]:
        """Buy-and-hold and the best static comparator (once if they are the same), if present."""
        names = [
            n for n in (BUY_AND_HOLD, self.best_static) if n is not None and n in self.outcomes
        ]
        return list(dict.fromkeys(names))

    @property
    def headline(self) -> Outcome | None:
        """The outcome against the headline comparators taken together.

        A significant loss to either is a loss; a win needs significant wins over
        both; otherwise the result is level (or undefined). None: no verdict.
        """
        outcomes = {self.outcomes[n] for n in self.headline_comparators}
        if not outcomes:
            return None
        for outcome in (Outcome.LOST, Outcome.UNDEFINED, Outcome.LEVEL):
            if outcome in outcomes:
                return outcome
        return Outcome.BEAT


def pick_best_static(
    names: list[str],
    train_best: Mapping[str, float] | None,
    test_sharpe: Mapping[str, float | None],
) -> tuple[str | None, ComparatorBasis]:
    """The static comparator to beat, and how it was chosen.

    Chosen by the in-sample Sharpe (``train_best``) so the test period plays no
    part in the choice; only when no in-sample Sharpe was recorded does it fall
    back to the test Sharpe, and the returned basis says so.
    """
    statics = [n for n in STATIC_COMPARATORS if n in names]
    if not statics:
        return None, ComparatorBasis.NONE
    in_sample = {n: train_best[n] for n in statics if train_best and n in train_best}
    if in_sample:
        return max(in_sample, key=in_sample.__getitem__), ComparatorBasis.IN_SAMPLE
    scored = {n: s for n in statics if (s := test_sharpe.get(n)) is not None}
    best = max(scored, key=scored.__getitem__) if scored else statics[0]
    return best, ComparatorBasis.TEST_SHARPE


def outcome_of(ci: SharpeDiffCI, mine: float | None, theirs: float | None) -> Outcome:
    """The category of one pair: a win or loss only when the interval excludes 0."""
    if mine is None or theirs is None or not math.isfinite(ci.diff):
        return Outcome.UNDEFINED
    if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
        return Outcome.UNDEFINED
    if not ci.significant:
        return Outcome.LEVEL
    return Outcome.BEAT if ci.diff > 0 else Outcome.LOST


def differ_a_lot(a: float | None, b: float | None) -> bool:
    """Two annual figures (fractions) far enough apart to be worth stating next to a Sharpe."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    if abs(a - b) < 0.01:
        return False
    small, large = sorted((abs(a), abs(b)))
    return a * b < 0 or large >= SCALE_RATIO * small


def _ceiling_shares(metrics: Metrics) -> dict[str, float]:
    bound = metrics.get(CEILING, {}).get("sharpe")
    if bound is None or not math.isfinite(bound) or bound <= 0:
        return {}
    shares = {}
    for n, m in metrics.items():
        sharpe = m.get("sharpe")
        if (
            n != CEILING
            and n not in STATIC_COMPARATORS
            and sharpe is not None
            and math.isfinite(sharpe)
        ):
            shares[n] = sharpe / bound
    return shares


def compare(
    returns: pd.DataFrame,
    metrics: Metrics,
    study: Study,
    *,
    reps: int = 2000,
    level: float = 0.95,
) -> Comparison:
    """Compute PSR/DSR for every strategy and the Sharpe-difference intervals of the subject.

    Parameters
    ----------
    returns : pd.DataFrame
        Date x strategy daily returns (``returns.csv``).
    metrics : dict
        Output of :func:`reports.metrics.compute_metrics` on the same returns.
    study : Study
        ``study.json``: periods per year, trials per strategy, in-sample Sharpes;
        ``study.seed`` seeds every bootstrap interval.
    reps, level : int, float
        Bootstrap resamples and interval coverage.
    """
    names = ordered_strategies(returns.columns)
    ppy = study.periods_per_year
    subject = SUBJECT if SUBJECT in names else None
    if subject is None:
        warnings.warn(
            f"returns.csv has no '{SUBJECT}' column; the report has no verdict", stacklevel=2
        )
    best, basis = pick_best_static(
        names, study.train_best, {n: metrics[n]["sharpe"] for n in names}
    )
    psr = {n: probabilistic_sharpe_ratio(returns[n]) for n in names}
    dsr = {
        n: (
            deflated_sharpe_ratio(returns[n], study.n_trials[n])
            if n in study.n_trials
            else math.nan
        )
        for n in names
    }
    pairs: dict[str, SharpeDiffCI] = {}
    outcomes: dict[str, Outcome] = {}
    scale_differs: dict[str, bool] = {}
    if subject is not None:
        pairs = {
            other: sharpe_difference_ci(
                returns[subject], returns[other], ppy, level=level, reps=reps, seed=study.seed
            )
            for other in names
            if other != subject
        }
        outcomes = {
            other: outcome_of(ci, metrics[subject]["sharpe"], metrics[other]["sharpe"])
            for other, ci in pairs.items()
        }
        scale_differs = {
            other: any(
                differ_a_lot(metrics[subject][key], metrics[other][key])
                for key in ("cagr", "volatility")
            )
            for other in pairs
        }
    return Comparison(
        title=study.title,
        start=returns.index[0],
        end=returns.index[-1],
        n_bars=len(returns),
        study=study,
        subject=subject,
        best_static=best,
        best_static_basis=basis,
        metrics={n: metrics[n] for n in names},
        psr=psr,
        dsr=dsr,
        pairs=pairs,
        outcomes=outcomes,
        scale_differs=scale_differs,
        ceiling_shares=_ceiling_shares(metrics),
    )

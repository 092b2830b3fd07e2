"""The comparison in words: the verdict, the deflated Sharpe and the ablations.

Every sentence is written here from a :class:`~metabt.reports.comparison.Comparison`
and nothing else, so ``comparison.md`` and the console say the same thing.
"""

from __future__ import annotations

import math

from metabt.reports.comparison import ABLATIONS, ComparatorBasis, Comparison
from metabt.reports.runfolder import CEILING, STATIC_COMPARATORS, SUBJECT
from metabt.reports.significance import SharpeDiffCI

#: What each ablation takes away from meta_adaptive, i.e. what the pair measures.
ABLATION_MEANS: dict[str, str] = {
    "meta_frozen": "adaptation",
    "meta_calendar": "the regime trigger",
    "meta_random_init": "the meta-learned init",
    "erm_static": "meta-learning over plain ERM",
}

BASIS_TEXT: dict[ComparatorBasis, str] = {
    ComparatorBasis.IN_SAMPLE: "best static, chosen in-sample",
    ComparatorBasis.TEST_SHARPE: (
        "best static by TEST Sharpe: study.json has no in-sample train_best"
    ),
    ComparatorBasis.NONE: "no static comparator in this run",
}


def fmt(value: float | None, kind: str = "ratio") -> str:
    """A number as the reports print it; ``n/a`` for undefined values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "int":
        return str(int(value))
    if kind == "signed":
        return f"{value:+.2f}"
    return f"{value:.2f}"


def ci_text(ci: SharpeDiffCI) -> str:
    return f"{ci.level:.0%} CI [{fmt(ci.low)}, {fmt(ci.high)}]"


def significance(ci: SharpeDiffCI) -> str:
    if not math.isfinite(ci.low):
        return "no interval"
    return f"significant at {ci.level:.0%}" if ci.significant else "not significant"


def verdict(c: Comparison) -> str:
    """The verdict: the subject against the best static comparator, then any test-period loss."""
    subject, best = c.subject, c.best_static
    if subject is None:
        return (
            f"No verdict: {SUBJECT} is not in returns.csv, "
            "so this run has no meta strategy to judge."
        )
    if best is None:
        return (
            f"No verdict: returns.csv holds no static comparator ({', '.join(STATIC_COMPARATORS)})."
        )
    metrics, pairs = c.metrics, c.pairs
    ci = pairs[best]
    mine, theirs = metrics[subject]["sharpe"], metrics[best]["sharpe"]
    if mine is None or theirs is None or not math.isfinite(ci.diff):
        return f"No verdict: the Sharpe of {subject} or {best} is undefined (flat returns)."
    outcome = "WON against" if ci.diff > 0 else "LOST to" if ci.diff < 0 else "TIED with"
    cagr = f"; CAGR {fmt(metrics[subject]['cagr'], 'pct')} vs {fmt(metrics[best]['cagr'], 'pct')}"
    # The headline comparator is picked in-sample; still say plainly when another static
    # strategy did better on the test period, so a "WON" never hides a loss.
    better = [
        n
        for n in STATIC_COMPARATORS
        if n != best and n in pairs and math.isfinite(pairs[n].diff) and pairs[n].diff < 0
    ]
    also = "".join(
        f" It LOST to {n} on the test period: Sharpe {fmt(mine)} vs "
        f"{fmt(metrics[n]['sharpe'])}, {ci_text(pairs[n])} ({significance(pairs[n])})."
        for n in better
    )
    return (
        f"{subject} {outcome} {best} ({BASIS_TEXT[c.best_static_basis]}): Sharpe {fmt(mine)} vs "
        f"{fmt(theirs)}, difference {fmt(ci.diff, 'signed')}, {ci_text(ci)} "
        f"({significance(ci)}){cagr}." + also
    )


def deflation(c: Comparison) -> str:
    """The subject's PSR, and its DSR for the configurations tried."""
    subject = c.subject
    if subject is None:
        return ""
    n = c.study.n_trials.get(subject)
    psr = f"{subject}: PSR {fmt(c.psr[subject])} (probability its true Sharpe is above 0); "
    if n is None:
        return psr + "no deflated Sharpe because study.json gives no n_trials for it."
    return psr + (
        f"deflated for the {n} configuration(s) tried, DSR {fmt(c.dsr[subject])} "
        f"(probability it beats the luckiest of {n} configurations with no edge)."
    )


def ablations(c: Comparison) -> str:
    """What each ingredient added, then (synthetic studies) the shares of the ceiling."""
    if c.subject is None:
        return ""
    parts = []
    for name in ABLATIONS:
        ci = c.pairs.get(name)
        if ci is None:
            continue
        what = ABLATION_MEANS[name]
        if not math.isfinite(ci.diff):
            parts.append(f"{what}: undefined ({name} or {c.subject} is flat)")
            continue
        effect = "helped" if ci.diff > 0 else "hurt" if ci.diff < 0 else "changed nothing"
        parts.append(
            f"{what} {effect} ({fmt(ci.diff, 'signed')} Sharpe vs {name}, "
            f"{ci_text(ci)}, {significance(ci)})"
        )
    text = "Ablations: " + "; ".join(parts) + "." if parts else "Ablations: none in this run."
    return text + _ceiling_shares(c)


def _ceiling_shares(c: Comparison) -> str:
    if not c.ceiling_shares:
        return ""
    shares = ", ".join(f"{n} {100 * share:.0f}%" for n, share in c.ceiling_shares.items())
    bound = c.metrics[CEILING]["sharpe"]
    return f" Share of the ceiling {CEILING} (Sharpe {fmt(bound)}, told the true regime): {shares}."

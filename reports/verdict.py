"""The comparison in words: the verdict and its numbers, the deflated Sharpe, the ceiling.

Every sentence is written here from a :class:`~metabt.reports.comparison.Comparison`
and nothing else, so ``comparison.md`` and the console say the same thing.
"""

from __future__ import annotations

import math

from metabt.reports.comparison import ABLATIONS, ComparatorBasis, Comparison, Outcome
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


def _name_of(c: Comparison, name: str) -> str:
    if name != c.best_static:
        return name
    if c.best_static_basis is ComparatorBasis.IN_SAMPLE:
        return f"{name}, the best static comparator chosen in-sample"
    return (
        f"{name}, the best static comparator by TEST Sharpe "
        "(study.json has no in-sample train_best, so the choice looks ahead)"
    )


def _against(c: Comparison, name: str) -> str:
    """``beat X (significant at 95%)``, ``was level with X (not significant)``, ..."""
    outcome, who = c.outcomes[name], _name_of(c, name)
    if outcome is Outcome.UNDEFINED:
        return f"cannot be compared with {who} (a Sharpe or its interval is undefined)"
    if outcome is Outcome.LEVEL:
        return f"was level with {who} (not significant)"
    verb = "beat" if outcome is Outcome.BEAT else "lost to"
    return f"{verb} {who} ({significance(c.pairs[name])})"


def _ablation_summary(c: Comparison) -> str:
    """What the ablations say each ingredient added, grouped by outcome."""
    effects = {
        Outcome.BEAT: "helped",
        Outcome.LOST: "hurt",
        Outcome.LEVEL: "made no significant difference",
        Outcome.UNDEFINED: "cannot be judged (flat returns)",
    }
    groups: dict[Outcome, list[str]] = {}
    for name in ABLATIONS:
        if name in c.outcomes:
            groups.setdefault(c.outcomes[name], []).append(ABLATION_MEANS[name])
    if not groups:
        return ""
    level = next(ci.level for ci in c.pairs.values())
    parts = []
    for outcome, effect in effects.items():
        if outcome in groups:
            named = _and(groups[outcome])
            sig = (
                f" (significant at {level:.0%})" if outcome in (Outcome.BEAT, Outcome.LOST) else ""
            )
            parts.append(f"{named} {effect}{sig}")
    return "Its ablations: " + "; ".join(parts) + "."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict(c: Comparison) -> str:
    """The headline in plain words: buy-and-hold, the best static comparator, the ablations."""
    if c.subject is None:
        return (
            f"No verdict: {SUBJECT} is not in returns.csv, "
            "so this run has no meta strategy to judge."
        )
    if not c.headline_comparators:
        return (
            f"No verdict: returns.csv holds no static comparator ({', '.join(STATIC_COMPARATORS)})."
        )
    against = " and ".join(_against(c, n) for n in c.headline_comparators)
    ablations = _ablation_summary(c)
    return f"{c.subject} {against}." + (f" {ablations}" if ablations else "")


def _numbers(c: Comparison, other: str) -> str:
    """Sharpe, difference and interval; CAGR and volatility too when they differ a lot."""
    if c.subject is None:  # the callers check it: pairs exist only with a subject
        raise ValueError("the comparison has no subject")
    mine, theirs = c.metrics[c.subject], c.metrics[other]
    ci = c.pairs[other]
    text = (
        f"Sharpe {fmt(mine['sharpe'])} vs {fmt(theirs['sharpe'])}, difference "
        f"{fmt(ci.diff, 'signed')}, {ci_text(ci)} ({significance(ci)})"
    )
    if c.scale_differs[other]:
        text += (
            f"; CAGR {fmt(mine['cagr'], 'pct')} vs {fmt(theirs['cagr'], 'pct')}, volatility "
            f"{fmt(mine['volatility'], 'pct')} vs {fmt(theirs['volatility'], 'pct')}"
        )
    return text


def verdict_details(c: Comparison) -> list[str]:
    """One line of numbers per comparison the verdict makes, then any static that did better."""
    if c.subject is None or not c.headline_comparators:
        return []
    lines = [f"against {n}: {_numbers(c, n)}." for n in c.headline_comparators]
    lines += [
        f"against {n} (what {ABLATION_MEANS[n]} adds): {_numbers(c, n)}."
        for n in ABLATIONS
        if n in c.pairs
    ]
    # The best static comparator is picked in-sample; still say plainly when another
    # static strategy did better on the test period, so a headline never hides a loss.
    better = [
        n
        for n in STATIC_COMPARATORS
        if n in c.pairs and n not in c.headline_comparators and c.pairs[n].diff < 0
    ]
    lines += [
        f"{n} (static, not the one chosen in-sample) had a higher test Sharpe: {_numbers(c, n)}."
        for n in better
    ]
    return lines


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


def ceiling(c: Comparison) -> str:
    """Synthetic studies: each learned strategy's Sharpe as a share of the ceiling's."""
    if not c.ceiling_shares:
        return ""
    shares = ", ".join(f"{n} {100 * share:.0f}%" for n, share in c.ceiling_shares.items())
    bound = c.metrics[CEILING]["sharpe"]
    return f"Share of the ceiling {CEILING} (Sharpe {fmt(bound)}, told the true regime): {shares}."

"""The comparison: every strategy side by side, the uncertainty, and a plain verdict.

:func:`compare` computes; :func:`to_markdown` writes ``comparison.md``;
:func:`print_comparison` prints the same tables with rich. The verdict names the
winner plainly, including when the meta strategy loses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
from rich.console import Console
from rich.table import Table

from metabt.reports.metrics import Metrics
from metabt.reports.runfolder import CEILING, STATIC_COMPARATORS, SUBJECT, Study, ordered_strategies
from metabt.reports.significance import (
    SharpeDiffCI,
    deflated_sharpe_ratio,
    probabilistic_sharpe_ratio,
    sharpe_difference_ci,
)

#: What each ablation takes away from meta_adaptive, i.e. what the pair measures.
ABLATIONS: dict[str, str] = {
    "meta_frozen": "adaptation",
    "meta_calendar": "the regime trigger",
    "meta_random_init": "the meta-learned init",
    "erm_static": "meta-learning over plain ERM",
}
ROLES: dict[str, str] = {
    SUBJECT: "meta policy, regime-triggered",
    "meta_frozen": "ablation: no adaptation",
    "meta_calendar": "ablation: calendar re-adaptation",
    "meta_random_init": "ablation: random init",
    "erm_static": "baseline: plain ERM network",
    "meta_oracle": "oracle: windows from the true changes",
    **{name: "static comparator" for name in STATIC_COMPARATORS},
    CEILING: "ceiling: told the true regime",
}
COLUMNS: tuple[tuple[str, str, str], ...] = (  # (metric key, header, format)
    ("sharpe", "Sharpe", "ratio"),
    ("sortino", "Sortino", "ratio"),
    ("cagr", "CAGR", "pct"),
    ("volatility", "Volatility", "pct"),
    ("max_drawdown", "Max DD", "pct"),
    ("calmar", "Calmar", "ratio"),
    ("turnover", "Turnover/yr", "ratio"),
    ("n_trades", "Trades", "int"),
    ("n_adaptations", "Adaptations", "int"),
)


@dataclass(frozen=True)
class Comparison:
    """Everything ``comparison.md`` shows; build it with :func:`compare`."""

    title: str
    start: pd.Timestamp
    end: pd.Timestamp
    n_bars: int
    study: Study
    subject: str | None
    best_static: str | None
    best_static_basis: str
    metrics: Metrics
    psr: Mapping[str, float]
    dsr: Mapping[str, float]
    pairs: Mapping[str, SharpeDiffCI]
    verdict: str
    deflation: str
    ablations: str


def pick_best_static(
    names: list[str],
    train_best: Mapping[str, float] | None,
    test_sharpe: Mapping[str, float | None],
) -> tuple[str | None, str]:
    """The static comparator to beat, and how it was chosen.

    Chosen by the in-sample Sharpe (``train_best``) so the test period plays no
    part in the choice; only when no in-sample Sharpe was recorded does it fall
    back to the test Sharpe, and the returned basis says so.
    """
    statics = [n for n in STATIC_COMPARATORS if n in names]
    if not statics:
        return None, "no static comparator in this run"
    in_sample = [n for n in statics if train_best and n in train_best]
    if in_sample:
        return max(in_sample, key=lambda n: train_best[n]), "best static, chosen in-sample"
    scored = [n for n in statics if test_sharpe.get(n) is not None]
    best = max(scored, key=lambda n: test_sharpe[n]) if scored else statics[0]
    return best, "best static by TEST Sharpe: study.json has no in-sample train_best"


def _fmt(value: float | None, kind: str = "ratio") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{value * 100:.1f}%"
    if kind == "int":
        return str(int(value))
    if kind == "signed":
        return f"{value:+.2f}"
    return f"{value:.2f}"


def _ci_text(ci: SharpeDiffCI) -> str:
    return f"{ci.level:.0%} CI [{_fmt(ci.low)}, {_fmt(ci.high)}]"


def _significance(ci: SharpeDiffCI) -> str:
    if not math.isfinite(ci.low):
        return "no interval"
    return f"significant at {ci.level:.0%}" if ci.significant else "not significant"


def _verdict(
    subject: str | None,
    best: str | None,
    basis: str,
    metrics: Metrics,
    pairs: Mapping[str, SharpeDiffCI],
) -> str:
    if subject is None:
        return (
            f"No verdict: {SUBJECT} is not in returns.csv, "
            "so this run has no meta strategy to judge."
        )
    if best is None:
        return (
            f"No verdict: returns.csv holds no static comparator ({', '.join(STATIC_COMPARATORS)})."
        )
    ci = pairs[best]
    mine, theirs = metrics[subject]["sharpe"], metrics[best]["sharpe"]
    if mine is None or theirs is None or not math.isfinite(ci.diff):
        return f"No verdict: the Sharpe of {subject} or {best} is undefined (flat returns)."
    outcome = "WON against" if ci.diff > 0 else "LOST to" if ci.diff < 0 else "TIED with"
    cagr = f"; CAGR {_fmt(metrics[subject]['cagr'], 'pct')} vs {_fmt(metrics[best]['cagr'], 'pct')}"
    # The headline comparator is picked in-sample; still say plainly when another static
    # strategy did better on the test period, so a "WON" never hides a loss.
    better = [
        n
        for n in STATIC_COMPARATORS
        if n != best and n in pairs and math.isfinite(pairs[n].diff) and pairs[n].diff < 0
    ]
    also = "".join(
        f" It LOST to {n} on the test period: Sharpe {_fmt(mine)} vs "
        f"{_fmt(metrics[n]['sharpe'])}, {_ci_text(pairs[n])} ({_significance(pairs[n])})."
        for n in better
    )
    return (
        f"{subject} {outcome} {best} ({basis}): Sharpe {_fmt(mine)} vs {_fmt(theirs)}, "
        f"difference {_fmt(ci.diff, 'signed')}, {_ci_text(ci)} ({_significance(ci)}){cagr}." + also
    )


def _deflation(
    subject: str | None, study: Study, psr: Mapping[str, float], dsr: Mapping[str, float]
) -> str:
    if subject is None:
        return ""
    n = study.n_trials.get(subject)
    if n is None:
        return (
            f"{subject}: PSR {_fmt(psr[subject])} (probability its true Sharpe is above 0); "
            f"no deflated Sharpe because study.json gives no n_trials for it."
        )
    return (
        f"{subject}: PSR {_fmt(psr[subject])} (probability its true Sharpe is above 0); "
        f"deflated for the {n} configuration(s) tried, DSR {_fmt(dsr[subject])} "
        f"(probability it beats the luckiest of {n} configurations with no edge)."
    )


def _ablations(subject: str | None, pairs: Mapping[str, SharpeDiffCI]) -> str:
    if subject is None:
        return ""
    parts = []
    for name, what in ABLATIONS.items():
        ci = pairs.get(name)
        if ci is None:
            continue
        if not math.isfinite(ci.diff):
            parts.append(f"{what}: undefined ({name} or {subject} is flat)")
            continue
        effect = "helped" if ci.diff > 0 else "hurt" if ci.diff < 0 else "changed nothing"
        parts.append(
            f"{what} {effect} ({_fmt(ci.diff, 'signed')} Sharpe vs {name}, "
            f"{_ci_text(ci)}, {_significance(ci)})"
        )
    if not parts:
        return "Ablations: none in this run."
    return "Ablations: " + "; ".join(parts) + "."


def _ceiling_shares(metrics: Metrics) -> str:
    """Each meta strategy's Sharpe as a share of the ceiling's (synthetic studies only)."""
    bound = metrics.get(CEILING, {}).get("sharpe")
    if bound is None or not math.isfinite(bound) or bound <= 0:
        return ""
    shares = [
        f"{n} {100 * m['sharpe'] / bound:.0f}%"
        for n, m in metrics.items()
        if n != CEILING
        and n not in STATIC_COMPARATORS
        and m.get("sharpe") is not None
        and math.isfinite(m["sharpe"])
    ]
    return (
        f" Share of the ceiling {CEILING} (Sharpe {_fmt(bound)}, told the true regime): "
        + ", ".join(shares)
        + "."
    )


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
    pairs = {}
    if subject is not None:
        pairs = {
            other: sharpe_difference_ci(
                returns[subject], returns[other], ppy, level=level, reps=reps, seed=study.seed
            )
            for other in names
            if other != subject
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
        verdict=_verdict(subject, best, basis, metrics, pairs),
        deflation=_deflation(subject, study, psr, dsr),
        ablations=_ablations(subject, pairs) + _ceiling_shares(metrics),
    )


def _role(c: Comparison, name: str) -> str:
    role = ROLES.get(name, "")
    if name != c.best_static:
        return role
    how = "in-sample" if "in-sample" in c.best_static_basis else "by test Sharpe"
    return f"{role} (best, {how})"


def _strategy_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["Strategy", "Role", *(h for _, h, _ in COLUMNS), "PSR", "DSR", "Trials"]
    rows = []
    for name, m in c.metrics.items():
        trials = c.study.n_trials.get(name)
        rows.append(
            [
                name,
                _role(c, name),
                *(_fmt(m[k], kind) for k, _, kind in COLUMNS),
                _fmt(c.psr[name]),
                _fmt(c.dsr[name]),
                _fmt(trials, "int"),
            ]
        )
    return header, rows


def _pair_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["Against", f"Sharpe {c.subject}", "Sharpe other", "Difference", "CI", "Result"]
    rows = []
    for other, ci in c.pairs.items():
        rows.append(
            [
                other,
                _fmt(c.metrics[c.subject]["sharpe"]),
                _fmt(c.metrics[other]["sharpe"]),
                _fmt(ci.diff, "signed"),
                f"[{_fmt(ci.low)}, {_fmt(ci.high)}]",
                _significance(ci),
            ]
        )
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _period(c: Comparison) -> str:
    split = f", split {c.study.split.date()}" if c.study.split is not None else ""
    return (
        f"Test period {c.start.date()} to {c.end.date()} ({c.n_bars} bars, "
        f"{c.study.periods_per_year} per year{split}); all results after costs."
    )


def to_markdown(c: Comparison) -> str:
    """``comparison.md``: verdict first, then the tables, then how the numbers were made."""
    out = [f"# {c.title}", "", _period(c), "", "## Verdict", "", f"**{c.verdict}**", ""]
    out += [line + "\n" for line in (c.deflation, c.ablations) if line]
    out += ["## Strategies", "", _md_table(*_strategy_rows(c)), ""]
    if c.pairs:
        ci = next(iter(c.pairs.values()))
        out += [
            f"## {c.subject} against each strategy",
            "",
            (
                f"Annualised Sharpe difference ({c.subject} minus the other) with a "
                f"{ci.level:.0%} stationary-bootstrap interval."
            ),
            "",
            _md_table(*_pair_rows(c)),
            "",
        ]
    out += ["## How these numbers were made", "", *_notes(c), ""]
    return "\n".join(out)


def _notes(c: Comparison) -> list[str]:
    notes = [
        (
            "- Sharpe, Sortino, CAGR, volatility, max drawdown and Calmar: QuantStats on the "
            f"daily returns in returns.csv, rf = 0, {c.study.periods_per_year} periods per year. "
            "Turnover: sum of |change in target weight| over assets, per year."
        ),
        f"- Best static comparator: {c.best_static or 'none'} ({c.best_static_basis}).",
        (
            "- PSR: probability that the true Sharpe is above 0 given the record length, skew and "
            "kurtosis (Bailey & Lopez de Prado 2012)."
        ),
        (
            "- DSR: the PSR measured against the Sharpe the best of N configurations with no edge "
            "would reach by luck, N = Trials from study.json (Bailey & Lopez de Prado 2014); "
            "n/a when the run did not record N."
        ),
    ]
    if c.pairs:
        ci = next(iter(c.pairs.values()))
        notes.append(
            "- Intervals: both return series resampled on the same days "
            f"(arch StationaryBootstrap, expected block {ci.block_length} bars, "
            f"{ci.reps} resamples, seed {ci.seed}), "
            "percentile interval. Significant means the interval excludes 0."
        )
    return notes


def print_comparison(c: Comparison, console: Console | None = None) -> None:
    """Print the verdict and both tables with rich."""
    console = console or Console()
    table = Table(title=f"{c.title}: {c.start.date()} to {c.end.date()}, after costs")
    header, rows = _strategy_rows(c)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == c.subject else None)
    console.print(table)
    if c.pairs:
        pairs = Table(title=f"{c.subject} minus each strategy: annualised Sharpe difference")
        for i, h in enumerate(_pair_rows(c)[0]):
            pairs.add_column(h, justify="left" if i == 0 else "right")
        for row in _pair_rows(c)[1]:
            pairs.add_row(*row)
        console.print(pairs)
    style = (
        "bold red" if " LOST " in c.verdict else "bold green" if " WON " in c.verdict else "bold"
    )
    console.print(c.verdict, style=style, markup=False)
    for line in (c.deflation, c.ablations):
        if line:
            console.print(line, markup=False)

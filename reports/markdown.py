"""``comparison.md``: the verdict first, then the tables, then how the numbers were made."""

from __future__ import annotations

from metabt.reports.comparison import Comparison
from metabt.reports.tables import pair_rows, strategy_rows
from metabt.reports.verdict import BASIS_TEXT, ceiling, deflation, verdict, verdict_details


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def period(c: Comparison) -> str:
    """The test period in one sentence."""
    split = f", split {c.study.split.date()}" if c.study.split is not None else ""
    return (
        f"Test period {c.start.date()} to {c.end.date()} ({c.n_bars} bars, "
        f"{c.study.periods_per_year} per year{split}); all results after costs."
    )


def to_markdown(c: Comparison) -> str:
    """The text of ``comparison.md``."""
    out = [f"# {c.title}", "", period(c), "", "## Verdict", "", f"**{verdict(c)}**", ""]
    details = verdict_details(c)
    if details:
        out += [f"- {line}" for line in details] + [""]
    out += [line + "\n" for line in (deflation(c), ceiling(c)) if line]
    out += ["## Strategies", "", _md_table(*strategy_rows(c)), ""]
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
            _md_table(*pair_rows(c)),
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
        (
            f"- Best static comparator: {c.best_static or 'none'} "
            f"({BASIS_TEXT[c.best_static_basis]})."
        ),
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

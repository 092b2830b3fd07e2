"""The comparison on the console, with rich: a compact table, then the verdict in colour.

The full table (every metric, PSR, DSR, trials) is ~160 columns and lives in
``comparison.md``; the console gets the columns a trader reads first, dropping
the least important ones until the table fits the terminal. The colour of the
verdict comes from the computed outcome, never from its words.
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from metabt.reports.comparison import ComparatorBasis, Comparison, Outcome
from metabt.reports.verdict import ceiling, deflation, fmt, verdict, verdict_details

OUTCOME_STYLE: dict[Outcome | None, str] = {
    Outcome.BEAT: "bold green",
    Outcome.LOST: "bold red",
    Outcome.LEVEL: "bold",
    Outcome.UNDEFINED: "bold",
    None: "bold",
}
#: The subject's result against each row, in the table's words.
RESULT_WORD: dict[Outcome, str] = {
    Outcome.BEAT: "beat",
    Outcome.LOST: "lost to",
    Outcome.LEVEL: "level",
    Outcome.UNDEFINED: "n/a",
}
#: (metric key, header, format) of the compact table, most important first; the
#: columns from the end of this list are dropped first when the terminal is narrow.
COMPACT: tuple[tuple[str, str, str], ...] = (
    ("sharpe", "Sharpe", "ratio"),
    ("cagr", "CAGR", "pct"),
    ("volatility", "Vol", "pct"),
    ("max_drawdown", "Max DD", "pct"),
    ("turnover", "Turn/yr", "ratio"),
)
_DIFF, _RESULT = "Diff [95% CI]", "Result"
#: Dropped in this order until the table fits; Strategy, Sharpe and the interval stay.
_OPTIONAL = ("Turn/yr", "Max DD", "Vol", "CAGR", _RESULT)


def _diff_cell(c: Comparison, name: str) -> str:
    ci = c.pairs.get(name)
    if ci is None:
        return ""
    return f"{fmt(ci.diff, 'signed')} [{fmt(ci.low)}, {fmt(ci.high)}]"


def _compact_table(c: Comparison, drop: tuple[str, ...]) -> Table:
    table = Table(
        title=f"{c.title}: {c.start.date()} to {c.end.date()}, after costs",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        title_justify="left",
    )
    columns = [h for _, h, _ in COMPACT if h not in drop]
    table.add_column("Strategy", no_wrap=True)
    for header in columns[:1]:
        table.add_column(header, justify="right")
    if c.pairs:
        table.add_column(_DIFF, justify="right", no_wrap=True)
        if _RESULT not in drop:
            table.add_column(_RESULT)
    for header in columns[1:]:
        table.add_column(header, justify="right")
    kinds = {h: (k, kind) for k, h, kind in COMPACT}
    for name, m in c.metrics.items():
        cells = [fmt(m[kinds[h][0]], kinds[h][1]) for h in columns]
        label = name + (" *" if name == c.best_static else "")
        row = [label, *cells[:1]]
        if c.pairs:
            row.append(_diff_cell(c, name))
            if _RESULT not in drop:
                row.append(RESULT_WORD[c.outcomes[name]] if name in c.outcomes else "")
        row += cells[1:]
        table.add_row(*row, style="bold" if name == c.subject else None)
    return table


def compact_table(c: Comparison, console: Console) -> Table:
    """The key columns of every strategy, as many as fit ``console``'s width."""
    # Measured without the console's limit: rich clamps a measurement to the width it is given.
    unbounded = console.options.update_width(10_000)
    for n in range(len(_OPTIONAL) + 1):
        table = _compact_table(c, _OPTIONAL[:n])
        if Measurement.get(console, unbounded, table).maximum <= console.width:
            return table
    return table


def _legend(c: Comparison) -> str:
    parts = []
    if c.pairs:
        parts.append(
            f"Diff: Sharpe of {c.subject} minus the row's, with its bootstrap interval; "
            f"Result: {c.subject} beat / lost to the row, or level (the interval contains 0)."
        )
    if c.best_static is not None:
        how = "in-sample" if c.best_static_basis is ComparatorBasis.IN_SAMPLE else "by TEST Sharpe"
        parts.append(f"* best static comparator, chosen {how}.")
    return " ".join(parts)


def print_comparison(
    c: Comparison, console: Console | None = None, *, full_table: Path | None = None
) -> None:
    """Print the compact table, the verdict, its numbers and the deflated Sharpe.

    Parameters
    ----------
    c : Comparison
        What :func:`~metabt.reports.comparison.compare` computed.
    console : rich.console.Console, optional
        Where to print; its width decides how many columns the table keeps.
    full_table : Path, optional
        The ``comparison.md`` holding the full table, named under the compact one.
    """
    console = console or Console()
    console.print(compact_table(c, console))
    # Prose is printed as it is: no markup, and no highlighting of the numbers in it,
    # which would break the verdict's single colour.
    console.print(_legend(c), style="dim", markup=False, highlight=False)
    where = full_table if full_table is not None else "comparison.md"
    console.print(f"Every metric, PSR, DSR and trials: {where}", markup=False, highlight=False)
    console.print()
    console.print(verdict(c), style=OUTCOME_STYLE[c.headline], markup=False, highlight=False)
    for line in (*verdict_details(c), deflation(c), ceiling(c)):
        if line:
            console.print(line, markup=False, highlight=False)

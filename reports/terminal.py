"""The comparison on the console, with rich: the tables, then the verdict in colour.

The colour comes from the computed outcome against the best static comparator,
never from the words of the verdict.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from metabt.reports.comparison import Comparison, Outcome
from metabt.reports.tables import pair_rows, strategy_rows
from metabt.reports.verdict import ceiling, deflation, verdict, verdict_details

OUTCOME_STYLE: dict[Outcome | None, str] = {
    Outcome.BEAT: "bold green",
    Outcome.LOST: "bold red",
    Outcome.LEVEL: "bold",
    Outcome.UNDEFINED: "bold",
    None: "bold",
}


def print_comparison(c: Comparison, console: Console | None = None) -> None:
    """Print the tables, the verdict and the notes on the deflated Sharpe and ablations."""
    console = console or Console()
    table = Table(title=f"{c.title}: {c.start.date()} to {c.end.date()}, after costs")
    header, rows = strategy_rows(c)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row, style="bold" if row[0] == c.subject else None)
    console.print(table)
    if c.pairs:
        pairs = Table(title=f"{c.subject} minus each strategy: annualised Sharpe difference")
        header, rows = pair_rows(c)
        for i, h in enumerate(header):
            pairs.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            pairs.add_row(*row)
        console.print(pairs)
    # Prose is printed as it is: no markup, and no highlighting of the numbers in it,
    # which would break the verdict's single colour.
    console.print(verdict(c), style=OUTCOME_STYLE[c.headline], markup=False, highlight=False)
    for line in (*verdict_details(c), deflation(c), ceiling(c)):
        if line:
            console.print(line, markup=False, highlight=False)

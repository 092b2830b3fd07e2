"""Rebuild every report of a run folder from its files (``metabt report RUN_DIR``).

Reads ``returns.csv``, ``positions.csv``, ``trades.csv``, ``adaptations.csv`` and
``study.json``; writes ``metrics.json``, ``tearsheet.html``, ``comparison.md`` and
``equity.png`` beside them. Working from files only means the reports of a run
and of a later rebuild are the same numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from metabt.reports.comparison import compare
from metabt.reports.markdown import to_markdown
from metabt.reports.metrics import Metrics, compute_metrics, write_metrics
from metabt.reports.plots import plot_equity
from metabt.reports.runfolder import SUBJECT, load_run, ordered_strategies
from metabt.reports.tearsheet import write_tearsheet
from metabt.reports.terminal import print_comparison
from metabt.reports.verdict import BASIS_TEXT

log = logging.getLogger(__name__)

OUTPUT_FILES: tuple[str, ...] = ("metrics.json", "tearsheet.html", "comparison.md", "equity.png")


def build_reports(run_dir: Path, console: Console | None = None, *, reps: int = 2000) -> Metrics:
    """Write metrics.json, tearsheet.html, comparison.md and equity.png into ``run_dir``.

    Parameters
    ----------
    run_dir : Path
        A run folder written by the runner.
    console : rich.console.Console, optional
        When given, the comparison tables and the verdict are printed to it.
    reps : int
        Bootstrap resamples per Sharpe-difference interval (seeded by
        ``study.json``'s ``seed``, default 0).

    Returns
    -------
    dict[str, dict[str, float | int | None]]
        The metrics written to ``metrics.json``, one dict per strategy.

    Raises
    ------
    ReportError
        If a required file is missing or malformed; the message names the file.
    """
    log.info("writing the reports (metrics, bootstrap intervals, tear sheet)")
    run = load_run(Path(run_dir))
    study = run.study
    returns = run.returns[ordered_strategies(run.returns.columns)]
    metrics = compute_metrics(
        returns, run.positions, run.trades, run.adaptations, study.periods_per_year
    )
    write_metrics(metrics, run.path / "metrics.json")

    comparison = compare(returns, metrics, study, reps=reps)
    (run.path / "comparison.md").write_text(to_markdown(comparison), encoding="utf-8")

    # The sheet shows the meta strategy against the comparator the verdict uses;
    # without meta_adaptive it shows the first strategy present, and says so.
    subject = comparison.subject or returns.columns[0]
    bench = comparison.best_static if comparison.best_static != subject else None
    if comparison.subject is None:
        heading = f"{study.title}: {subject} ({SUBJECT} absent from this run)"
    elif bench is None:
        heading = f"{study.title}: {subject} (no static comparator in this run)"
    else:
        basis = BASIS_TEXT[comparison.best_static_basis]
        heading = f"{study.title}: {subject} vs {bench} ({basis})"
    write_tearsheet(
        returns[subject],
        returns[bench] if bench else None,
        run.path / "tearsheet.html",
        periods_per_year=study.periods_per_year,
        title=heading,
    )

    plot_equity(
        returns,
        run.path / "equity.png",
        regime_changes=study.regime_changes,
        adaptations=run.adaptations,
        subject=comparison.subject or SUBJECT,
        best_static=comparison.best_static,
        title=f"{study.title}: equity after costs, {returns.index[0].date()} to "
        f"{returns.index[-1].date()}",
    )
    if console is not None:
        print_comparison(comparison, console, full_table=run.path / "comparison.md")
    log.info("reports written to %s", run.path)
    return metrics

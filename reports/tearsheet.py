"""The QuantStats HTML tear sheet of the meta strategy against the best static comparator.

QuantStats is called so that it can neither reach the network nor open a window:
the benchmark is always a Series (a ticker string would be downloaded), the output
path is always given (``output=None`` opens a browser), and pyplot is moved off a
GUI backend (``backtrader.plot`` forces TkAgg, which fails on a headless machine).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib import rcsetup

from metabt.reports.errors import ReportError

log = logging.getLogger(__name__)


def _naive(series: pd.Series) -> pd.Series:
    """Float series with a tz-naive index (QuantStats raises TypeError on mixed zones)."""
    out = series.astype(float).copy()
    if isinstance(out.index, pd.DatetimeIndex) and out.index.tz is not None:
        out.index = out.index.tz_localize(None)
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Contain QuantStats' noise: library warnings and matplotlib's font fallback log lines.

    The tear sheet is correct without Arial and despite seaborn's deprecation
    warnings; repeating them dozens of times per report would bury real messages.
    """
    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        fonts.setLevel(level)


def _gui_backends() -> set[str]:
    try:
        from matplotlib.backends import BackendFilter, backend_registry
    except ImportError:  # matplotlib < 3.9
        return {b.lower() for b in rcsetup.interactive_bk}  # type: ignore[attr-defined]
    return {b.lower() for b in backend_registry.list_builtin(BackendFilter.INTERACTIVE)}


def _use_agg() -> None:
    """Draw off-screen: leave Agg/inline backends alone, replace GUI ones with Agg."""
    if matplotlib.get_backend().lower() in _gui_backends():
        log.info("switching matplotlib from %s to Agg for the tear sheet", matplotlib.get_backend())
        matplotlib.use("Agg", force=True)


def write_tearsheet(
    strategy: pd.Series,
    benchmark: pd.Series | None,
    path: Path,
    *,
    periods_per_year: int,
    title: str,
) -> Path:
    """Write a QuantStats HTML tear sheet to ``path``.

    Parameters
    ----------
    strategy : pd.Series
        Daily simple returns of the strategy; its ``name`` labels the sheet.
    benchmark : pd.Series or None
        Daily returns of the comparator on the same dates, or ``None`` for a
        sheet without a benchmark. Never a ticker string: QuantStats would
        download it.
    path : Path
        Output file (``.html``); required so QuantStats never opens a browser.
    periods_per_year : int
        Bars per year, passed explicitly to every QuantStats metric.
    title : str
        Heading of the sheet; say here how the benchmark was chosen.

    Returns
    -------
    Path
        ``path``, once the file exists.
    """
    if isinstance(benchmark, str):
        raise TypeError(
            "benchmark must be a returns Series, not a ticker (QuantStats would download it)"
        )
    import quantstats as qs  # imported late: it pulls in pyplot

    _use_agg()
    strat = _naive(strategy)
    bench = _naive(benchmark) if benchmark is not None else None
    if bench is not None:
        strat, bench = strat.align(bench, join="inner")
    if len(strat) < 2:
        raise ReportError(f"{path}: fewer than 2 common dates to draw a tear sheet from")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        qs.reports.html(
            strat,
            benchmark=bench,
            rf=0.0,
            title=title,
            output=str(path),
            periods_per_year=int(periods_per_year),
            # match_dates=True would drop the leading flat days of whichever
            # series starts later, so the sheet would cover a shorter period
            # than metrics.json; both series already share the test dates.
            match_dates=False,
            strategy_title=str(strategy.name or "strategy"),
            benchmark_title=str(benchmark.name or "benchmark") if benchmark is not None else None,
        )
    if not path.is_file():
        raise ReportError(
            f"{path}: QuantStats did not write the tear sheet; check the folder is writable"
        )
    return path

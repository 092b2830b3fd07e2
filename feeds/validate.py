"""Validation of raw Yahoo-layout bars into the canonical frame.

Every check raises :class:`feeds.errors.DataError` with one line that names the
source, the line or date, what is wrong and what to do. Nothing is repaired:
a file that fails is refused whole, because a silently "fixed" price series is
the most expensive kind of wrong backtest.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from metabt.feeds.did_you_mean import closest, did_you_mean
from metabt.feeds.errors import DataError
from metabt.feeds.plausible import check_gaps, check_jumps, check_limits, check_one_bar_per_day

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("Date", "Open", "High", "Low", "Close", "Volume")
OPTIONAL_COLUMNS = ("Adj Close",)
PRICE_COLUMNS = ("Open", "High", "Low", "Close")
CANONICAL_COLUMNS = ("open", "high", "low", "close", "volume")

# Letters, digits and the punctuation Yahoo tickers use (^GSPC, BRK-B, EURUSD=X);
# no path separators, so a symbol can never name a file outside its folder.
_SYMBOL = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9.^=_-]{0,31}$")
_TZ_SUFFIX = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")
# Relative slack for the OHLC check: CSV round-tripping of decimals can leave
# High a few ulps under Close; anything bigger is a real violation.
_OHLC_RTOL = 1e-9


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` if it is a safe ticker name, else raise DataError."""
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol) or ".." in symbol:
        raise DataError(
            f"symbol {symbol!r} is not a valid ticker name (letters, digits and . ^ = _ - only, "
            "no path separators or '..'); rename the file or fix --symbols"
        )
    return symbol


def _check_columns(columns: list[str], source: str) -> None:
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    unknown = [c for c in columns if c not in known]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    for name in missing:
        found = closest(name, unknown)
        hint = f" (found {found!r}: rename it to {name!r})" if found else ""
        raise DataError(
            f"{source}: missing column {name!r}{hint}; the header must be "
            "Date,Open,High,Low,Close,Adj Close,Volume"
        )
    for name in unknown:
        hint = f"; {did_you_mean(name, known) or 'remove it'}"
        raise DataError(f"{source}: unknown column {name!r}{hint}")
    dup = [c for c in set(columns) if columns.count(c) > 1]
    if dup:
        raise DataError(f"{source}: column {dup[0]!r} appears twice; keep one")


def _where(source: str, pos: int, line_offset: int | None, date: object = None) -> str:
    where = f"line {pos + line_offset}" if line_offset is not None else f"row {pos}"
    return f"{source}: {where}" + (f" ({date})" if date is not None else "")


def _parse_dates(raw: pd.Series, source: str, line_offset: int | None) -> pd.DatetimeIndex:
    text = raw.astype(str).str.strip()
    has_tz = text.str.contains(_TZ_SUFFIX)
    if has_tz.any() and not has_tz.all():
        pos = int(np.argmax(has_tz.to_numpy() != has_tz.iloc[0]))
        raise DataError(
            f"{_where(source, pos, line_offset, text.iloc[pos])}: mixed time zones (some dates "
            "carry an offset, others do not); write every date the same way, e.g. YYYY-MM-DD"
        )
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=bool(has_tz.all()))
    if parsed.isna().any():
        pos = int(np.argmax(parsed.isna().to_numpy()))
        raise DataError(
            f"{_where(source, pos, line_offset, text.iloc[pos])}: cannot parse the date; "
            "use ISO dates like 2020-01-31"
        )
    if has_tz.all():
        offsets = text.str.extract(r"(Z|[+-]\d{2}:?\d{2})$")[0]
        if offsets.nunique() > 1:
            pos = int(np.argmax((offsets != offsets.iloc[0]).to_numpy()))
            raise DataError(
                f"{_where(source, pos, line_offset, text.iloc[pos])}: mixed time zones "
                f"({offsets.iloc[0]} and {offsets.iloc[pos]}); convert every date to one zone"
            )
        # One uniform offset on daily bars: the calendar date is what matters.
        log.info("%s: dropping the uniform time-zone offset %s", source, offsets.iloc[0])
        parsed = pd.to_datetime(text.str.replace(_TZ_SUFFIX, "", regex=True), format="ISO8601")
    return pd.DatetimeIndex(parsed)


def _parse_numbers(
    raw: pd.Series, name: str, source: str, line_offset: int | None, dates: pd.DatetimeIndex
) -> np.ndarray:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        pos = int(np.argmax(bad))
        cell = raw.iloc[pos]
        fix = (
            "write numbers without a thousands separator (1234.5, not 1,234.5)"
            if isinstance(cell, str) and "," in cell
            else "fix or delete that row (e.g. df.dropna())"
        )
        raise DataError(
            f"{_where(source, pos, line_offset, dates[pos].date())}: {name} is {cell!r}, "
            f"not a finite number; {fix} and re-run"
        )
    return values


def validate_bars(
    raw: pd.DataFrame,
    source: str,
    line_offset: int | None = None,
    *,
    allow_jumps: bool = False,
    allow_gaps: bool = False,
) -> pd.DataFrame:
    """Check raw Yahoo-layout bars and return the canonical frame.

    Parameters
    ----------
    raw
        Columns ``Date,Open,High,Low,Close[,Adj Close],Volume`` (strings or
        numbers); a DatetimeIndex is accepted in place of a ``Date`` column.
    source
        Named in every error (a file path or ``yfinance:SPY``).
    line_offset
        Add to a 0-based row position to get a file line number (2 for a CSV
        with a header); ``None`` reports 0-based rows.
    allow_jumps
        Accept a one-bar move beyond x10 that comes back (``--allow-jumps``).
    allow_gaps
        Accept more than 30 calendar days between bars, with a warning
        (``--allow-gaps``).

    Returns
    -------
    pandas.DataFrame
        Tz-naive DatetimeIndex ``date``; float columns ``open, high, low,
        close, volume``, prices scaled by ``Adj Close / Close`` when present so
        splits and dividends do not look like crashes.
    """
    if "Date" not in raw.columns and isinstance(raw.index, pd.DatetimeIndex):
        raw = raw.rename_axis("Date").reset_index()
    _check_columns([str(c) for c in raw.columns], source)
    if raw.empty:
        raise DataError(f"{source}: no rows of data; the file has only a header")
    dates = _parse_dates(raw["Date"], source, line_offset)
    if dates.tz is not None:
        dates = dates.tz_localize(None)
    dup = dates.duplicated()
    if dup.any():
        pos = int(np.argmax(dup))
        raise DataError(
            f"{_where(source, pos, line_offset, dates[pos].date())}: duplicate date; "
            "keep one bar per date (e.g. df[~df.index.duplicated()]) and re-run"
        )
    backwards = np.flatnonzero(np.diff(dates.asi8) < 0)
    if backwards.size:
        pos = int(backwards[0] + 1)
        raise DataError(
            f"{_where(source, pos, line_offset, dates[pos].date())}: dates are not sorted "
            f"(comes after {dates[pos - 1].date()}); sort the file by Date (df.sort_index())"
        )

    def where(pos: int) -> str:
        return _where(source, pos, line_offset, dates[pos].date())

    check_one_bar_per_day(dates, where)
    cols = {
        name: _parse_numbers(raw[name], name, source, line_offset, dates)
        for name in PRICE_COLUMNS + ("Volume",) + tuple(c for c in OPTIONAL_COLUMNS if c in raw)
    }
    for name in PRICE_COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in raw):
        bad = cols[name] <= 0
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{_where(source, pos, line_offset, dates[pos].date())}: {name} is "
                f"{cols[name][pos]:g}; prices must be > 0, fix or delete that row"
            )
    if (cols["Volume"] < 0).any():
        pos = int(np.argmax(cols["Volume"] < 0))
        raise DataError(
            f"{_where(source, pos, line_offset, dates[pos].date())}: negative Volume "
            f"{cols['Volume'][pos]:g}; fix or delete that row"
        )
    check_limits(cols, where)
    o, h, lo, c = (cols[k] for k in PRICE_COLUMNS)
    slack = _OHLC_RTOL * np.maximum(o, c)
    for bad, what in (
        (h < np.maximum(o, c) - slack, "High is below max(Open, Close)"),
        (lo > np.minimum(o, c) + slack, "Low is above min(Open, Close)"),
    ):
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{_where(source, pos, line_offset, dates[pos].date())}: {what} "
                f"(O={o[pos]:g} H={h[pos]:g} L={lo[pos]:g} C={c[pos]:g}); "
                "fix that bar at the source"
            )
    factor = cols["Adj Close"] / c if "Adj Close" in cols else np.ones_like(c)
    # On the adjusted prices: those are what is traded (and a bad Adj Close shows there).
    check_jumps(np.column_stack([o, h, lo, c]) * factor[:, None], where, allow_jumps)
    check_gaps(dates, where, source, allow_gaps)
    frame = pd.DataFrame(
        {
            "open": o * factor,
            "high": h * factor,
            "low": lo * factor,
            "close": c * factor,
            "volume": cols["Volume"],
        },
        index=pd.DatetimeIndex(dates, name="date"),
    )
    return frame


def require_bars(frame: pd.DataFrame, needed: int, source: str, what: str) -> None:
    """Raise DataError if ``frame`` has fewer than ``needed`` bars for ``what``."""
    if len(frame) < needed:
        raise DataError(
            f"{source}: only {len(frame)} bars, but {what} needs at least {needed}; "
            "use a longer history or smaller windows"
        )

"""Daily bars from Yahoo Finance through the optional ``yfinance`` extra, cached on disk.

yfinance keeps no prices of its own, changed its defaults across versions
(``auto_adjust``, MultiIndex columns) and, offline, returns an empty frame with
only a log line. So every argument is passed explicitly, one symbol per call,
an empty answer is an error, and every download lands in a parquet cache that
later runs (and offline machines) read without touching the network.

Unclosed bars: a bar is kept only once its whole period has ended before the
current UTC date (for daily bars: any bar dated today or later in UTC is
dropped). Exchanges east of UTC are open only on a local date >= the UTC date,
and US exchanges close before the UTC date rolls over, so no half-formed bar
survives; the price of the rule is that a just-closed bar may wait for midnight UTC.

Frames come back in Yahoo layout (``Date`` index; ``Open, High, Low, Close,
Adj Close, Volume``); pass them through :func:`feeds.validate.validate_bars`
like any CSV. With ``auto_adjust=True`` Yahoo's Close is already adjusted and
``Adj Close`` is set equal to it.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Iterable
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from metabt.feeds.errors import DataError
from metabt.feeds.validate import validate_symbol

log = logging.getLogger(__name__)

YAHOO_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close", "Adj Close", "Volume")
INSTALL_HINT = 'install the extra: pip install "metabt[yfinance]"'
# How long after its date a bar of each interval is complete; intraday bars are
# refused because everything downstream assumes one bar per trading day or longer.
_PERIODS: dict[str, pd.DateOffset] = {
    "1d": pd.DateOffset(days=1),
    "1wk": pd.DateOffset(weeks=1),
    "1mo": pd.DateOffset(months=1),
    "3mo": pd.DateOffset(months=3),
}


def default_cache_dir() -> Path:
    """``$METABT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/metabt/yfinance`` (``~/.cache``)."""
    if os.environ.get("METABT_CACHE_DIR"):
        return Path(os.environ["METABT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "metabt" / "yfinance"


def cache_path(cache_dir: str | Path, symbol: str, interval: str, auto_adjust: bool) -> Path:
    """Parquet file holding one symbol's bars for one interval and adjustment.

    Raises DataError for a symbol that could name a file outside ``cache_dir``.
    """
    validate_symbol(symbol)
    if not symbol.isprintable() or symbol != symbol.strip():
        # A regex '$' also matches before a trailing newline; refuse it here too.
        raise DataError(f"symbol {symbol!r} has spaces or control characters; fix --symbols")
    _check_interval(interval)
    folder = Path(cache_dir) / f"{interval}-{'adjusted' if auto_adjust else 'raw'}"
    path = folder / f"{symbol}.parquet"
    # Belt and braces: the symbol check already forbids separators and '..'.
    if path.resolve().parent != folder.resolve():
        raise DataError(f"symbol {symbol!r} would write outside the cache folder {folder}")
    return path


def _check_interval(interval: str) -> None:
    if interval not in _PERIODS:
        raise DataError(
            f"interval {interval!r} is not supported; use one of {sorted(_PERIODS)} "
            "(metabt trades daily or longer bars)"
        )


def _import_yfinance():
    try:
        return importlib.import_module("yfinance")
    except ImportError:
        raise DataError(
            f"yfinance is not installed: {INSTALL_HINT}, or use --data DIR with SYMBOL.csv files"
        ) from None


def _utc_today() -> date:
    return datetime.now(timezone.utc).date()


def _flatten(raw: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """Single-level price columns even from yfinance versions that ignore multi_level_index."""
    if not isinstance(raw.columns, pd.MultiIndex):
        return raw
    for level in range(raw.columns.nlevels):
        if symbol in raw.columns.get_level_values(level):
            return raw.xs(symbol, axis=1, level=level)
    return raw.droplevel(-1, axis=1)


def _to_yahoo_layout(raw: pd.DataFrame, symbol: str, auto_adjust: bool) -> pd.DataFrame:
    frame = _flatten(raw, symbol).copy()
    frame.columns = [str(c) for c in frame.columns]
    if "Adj Close" not in frame.columns and auto_adjust and "Close" in frame.columns:
        frame["Adj Close"] = frame["Close"]
    missing = [c for c in YAHOO_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"yfinance:{symbol}: answer lacks column(s) {missing} "
            f"(got {list(frame.columns)}); use --data DIR with SYMBOL.csv files"
        )
    index = pd.DatetimeIndex(frame.index)
    if index.tz is not None:
        # The exchange-local calendar date is the bar's date; drop the zone, keep the date.
        index = index.tz_localize(None)
    frame.index = index.rename("Date")
    return frame[list(YAHOO_COLUMNS)]


def _drop_unclosed(frame: pd.DataFrame, interval: str, today: date, symbol: str) -> pd.DataFrame:
    ends = frame.index + _PERIODS[interval]
    closed = ends <= pd.Timestamp(today)
    if not closed.all():
        log.info(
            "yfinance:%s: dropped %d bar(s) not closed before %s UTC",
            symbol,
            int((~closed).sum()),
            today,
        )
    return frame.loc[closed]


def _read_cache(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except ImportError:
        raise DataError(f"{path}: reading the cache needs pyarrow: {INSTALL_HINT}") from None
    except (OSError, ValueError) as exc:  # truncated or foreign file: fetch again, don't trust it
        warnings.warn(f"{path}: unreadable cache ({exc}); downloading again", stacklevel=3)
        return None


def _cached_range(cached: pd.DataFrame) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The [start, end) range the cache was downloaded for, or None if it does not say."""
    try:
        return pd.Timestamp(cached.attrs["start"]), pd.Timestamp(cached.attrs["end"])
    except (KeyError, ValueError, TypeError):
        return None


def _write_cache(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        frame.to_parquet(tmp)
    except ImportError:
        raise DataError(f"{path}: writing the cache needs pyarrow: {INSTALL_HINT}") from None
    # Replace atomically so an interrupted run never leaves a half-written cache.
    os.replace(tmp, path)


def _fetch(
    yf,
    symbol: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    interval: str,
    auto_adjust: bool,
    cache: Path,
) -> pd.DataFrame:
    hint = (
        f"check the network, or use --data DIR with SYMBOL.csv files, "
        f"or a cache at {cache} that covers {start.date()}..{end.date()}"
    )
    try:
        raw = yf.download(
            symbol,
            start=start.strftime("%Y-%m-%d"),
            end=end.strftime("%Y-%m-%d"),
            interval=interval,
            auto_adjust=auto_adjust,
            back_adjust=False,
            actions=False,
            repair=False,
            keepna=False,
            prepost=False,
            rounding=False,
            ignore_tz=True,
            group_by="column",
            multi_level_index=False,
            threads=False,
            progress=False,
            timeout=30,
        )
    except Exception as exc:  # network, rate limit, Yahoo format change: all one answer for users
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"yfinance:{symbol}: download failed ({first}); {hint}") from exc
    if raw is None or raw.empty:
        raise DataError(
            f"yfinance:{symbol}: empty answer for {start.date()}..{end.date()} "
            f"(offline, unknown symbol or no bars in range); {hint}"
        )
    return _to_yahoo_layout(raw, symbol, auto_adjust)


def download_bars(
    symbols: Iterable[str],
    start: str | date | pd.Timestamp,
    end: str | date | pd.Timestamp | None = None,
    interval: str = "1d",
    auto_adjust: bool = False,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    *,
    today: date | None = None,
) -> dict[str, pd.DataFrame]:
    """Bars of each symbol for ``start <= date < end``, from the cache or Yahoo.

    Parameters
    ----------
    symbols : iterable of str
        Yahoo tickers (``SPY``, ``^GSPC``, ``BRK-B``, ``EURUSD=X``).
    start, end : date-like
        Half-open range; ``end=None`` means up to (not including) today, UTC.
    interval : {"1d", "1wk", "1mo", "3mo"}
        Bar length.
    auto_adjust : bool
        ``False`` (default) keeps raw OHLC plus Yahoo's ``Adj Close``, which the
        loader uses to adjust; ``True`` asks Yahoo for adjusted OHLC. Cached apart.
    cache_dir : path, optional
        Defaults to :func:`default_cache_dir`.
    refresh : bool
        Download even when the cache covers the range.
    today : date, optional
        The current UTC date (for tests); bars whose period ends after it are dropped.

    Returns
    -------
    dict of str to DataFrame
        Yahoo-layout frames in the order of ``symbols``.

    Raises
    ------
    DataError
        Bad symbol or interval, yfinance or pyarrow missing, download failure
        or empty answer (each message points to ``--data DIR`` and the cache).
    """
    _check_interval(interval)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    today = today or _utc_today()
    req_start = pd.Timestamp(start).normalize()
    req_end = min(
        pd.Timestamp(end).normalize() if end is not None else pd.Timestamp(today),
        pd.Timestamp(today),
    )
    if req_start >= req_end:
        raise DataError(
            f"empty date range {req_start.date()}..{req_end.date()}: start must be "
            "before end and before today"
        )
    out: dict[str, pd.DataFrame] = {}
    for symbol in symbols:
        path = cache_path(cache_dir, symbol, interval, auto_adjust)
        cached = _read_cache(path)
        have = _cached_range(cached) if cached is not None else None
        if (
            cached is not None
            and have is not None
            and not refresh
            and have[0] <= req_start
            and req_end <= have[1]
        ):
            log.debug("yfinance:%s: cache hit %s", symbol, path)
            frame = cached
        else:
            # Download the union of the cached and requested ranges in one call: the
            # cache grows instead of shrinking, and it never splices two downloads
            # whose Adj Close were scaled by different later dividends.
            lo = min(req_start, have[0]) if have else req_start
            hi = max(req_end, have[1]) if have else req_end
            log.info("yfinance:%s: downloading %s..%s (%s)", symbol, lo.date(), hi.date(), interval)
            yf = _import_yfinance()
            frame = _drop_unclosed(
                _fetch(yf, symbol, lo, hi, interval, auto_adjust, path), interval, today, symbol
            )
            frame.attrs = {
                "symbol": symbol,
                "start": str(lo.date()),
                "end": str(hi.date()),
                "interval": interval,
                "auto_adjust": bool(auto_adjust),
            }
            _write_cache(frame, path)
        part = frame.loc[(frame.index >= req_start) & (frame.index < req_end)].copy()
        part.attrs = {}
        if part.empty:
            raise DataError(
                f"yfinance:{symbol}: no bars in {req_start.date()}..{req_end.date()}; "
                "pick another range or use --data DIR with SYMBOL.csv files"
            )
        out[symbol] = part
    return out

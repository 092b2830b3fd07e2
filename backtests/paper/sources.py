"""Where the paper loop's bars come from: a replay of stored data, or yfinance polling.

A source gives two things: the *history* before the paper start (for
meta-training and the strategy's warm-up) and the *new bars* after a date, one
trading day at a time, in date order. A bar is only ever released once it has
closed: the replay source releases bars as if they arrived live, the yfinance
source drops any bar dated today or later (UTC) and waits for the next poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from metabt.backtests.config import StudyConfig
from metabt.backtests.data import load_study_data
from metabt.feeds.errors import DataError
from metabt.feeds.loaders import Frames, slice_period
from metabt.feeds.validate import validate_bars

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
SOURCES = ("replay", "yfinance")


@dataclass(frozen=True)
class Bar:
    """One closed trading day: ``date`` and each asset's OHLCV row (absent: no bar that day)."""

    date: pd.Timestamp
    rows: dict[str, tuple[float, ...]]  # open, high, low, close, volume


def bars_after(
    frames: Frames, after: pd.Timestamp | None, first: pd.Timestamp | None = None
) -> list[Bar]:
    """Every trading day of ``frames`` after ``after`` (and on or after ``first``), in order."""
    dates = sorted(set().union(*(f.index for f in frames.values())))
    out = []
    for day in dates:
        if (after is not None and day <= after) or (first is not None and day < first):
            continue
        rows = {
            s: tuple(float(v) for v in f.loc[day, list(PRICE_COLUMNS)])
            for s, f in frames.items()
            if day in f.index
        }
        out.append(Bar(pd.Timestamp(day), rows))
    return out


class ReplaySource:
    """Release the bars of the study's data (or ``--data``) from the paper start on.

    Offline and deterministic: the tests and demos use it. Bars are released
    one trading day at a time, as if each had just closed.
    """

    name = "replay"

    def __init__(self, config: StudyConfig) -> None:
        self._frames = load_study_data(config).frames

    def history(self, start: pd.Timestamp) -> Frames:
        """Bars strictly before ``start``."""
        return slice_period(self._frames, None, start)

    def new_bars(self, after: pd.Timestamp | None, start: pd.Timestamp) -> Iterator[Bar]:
        yield from bars_after(self._frames, after, start)

    def last_date(self) -> pd.Timestamp | None:
        """The newest bar of any symbol (None without bars)."""
        lasts = [f.index[-1] for f in self._frames.values() if not f.empty]
        return max(lasts) if lasts else None

    def bars_between(self, first: pd.Timestamp, last: pd.Timestamp) -> Frames:
        """The source's bars with ``first <= date <= last`` (to compare with stored ones)."""
        return slice_period(self._frames, first, last + pd.Timedelta(days=1))


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


class YahooSource:
    """Poll yfinance for newly closed daily bars of the config's symbols.

    ``feeds.yahoo.download_bars`` already drops bars dated today or later (UTC);
    this class applies the same rule again before releasing a bar, so a bar that
    has not closed is never acted on whatever the download returned.

    Parameters
    ----------
    config : StudyConfig
        Symbols (an explicit list) and the cache folder of the history.
    poll_cache : path
        Cache folder of the polls (in the state folder). Polls always download
        (``refresh``), and a cache of their own keeps each download a few weeks
        long instead of the whole history.
    poll_seconds : float
        Wait between polls when no new bar has closed.
    download : callable, optional
        ``download(symbols, start, end, cache_dir=..., refresh=..., today=...)``
        (default :func:`feeds.yahoo.download_bars`); tests pass a fake.
    today : callable, optional
        The current UTC date (tests pass a fixed one).
    sleep : callable
        ``time.sleep`` (tests pass a no-op).
    """

    name = "yfinance"

    def __init__(
        self,
        config: StudyConfig,
        poll_cache: str | Path,
        poll_seconds: float = 900.0,
        download: Callable[..., dict[str, pd.DataFrame]] | None = None,
        today: Callable[[], date] = utc_today,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if config.data.symbols == "all":
            raise DataError(
                "--source yfinance needs an explicit symbol list in the config "
                '(data.symbols = ["SPY", ...])'
            )
        if download is None:
            from metabt.feeds.yahoo import (
                download_bars,
            )  # optional extra: imported only when asked for

            download = download_bars
        self.symbols = list(config.data.symbols)
        self.cache_dir = config.data.cache_dir
        self.poll_cache = Path(poll_cache)
        self.first = config.data.start
        self.allow_jumps, self.allow_gaps = config.data.allow_jumps, config.data.allow_gaps
        self.poll_seconds = float(poll_seconds)
        self._download = download
        self._today = today
        self._sleep = sleep

    def _fetch(self, start: object, cache_dir: str | Path, refresh: bool) -> Frames:
        today = self._today()
        raw = self._download(
            self.symbols, start, None, cache_dir=cache_dir, refresh=refresh, today=today
        )
        checks = {"allow_jumps": self.allow_jumps, "allow_gaps": self.allow_gaps}
        frames = {s: validate_bars(f, f"yfinance:{s}", **checks) for s, f in raw.items()}
        # Never act on a bar that may still be forming.
        return {s: f.loc[f.index < pd.Timestamp(today)] for s, f in frames.items()}

    def history(self, start: pd.Timestamp) -> Frames:
        """Closed bars from the config's ``data.start`` to just before ``start``."""
        frames = self._fetch(self.first or "1990-01-01", self.cache_dir, refresh=False)
        return slice_period(frames, None, start)

    def poll(self, after: pd.Timestamp | None, start: pd.Timestamp) -> list[Bar]:
        """Closed bars later than ``after`` (and on or after ``start``), fetched now.

        A day is released only once every symbol has a bar on it or later: a
        symbol whose newest bar Yahoo has not published yet holds the day back
        instead of leaving a permanent hole in that symbol's stored bars.
        """
        since = (after if after is not None else start) - pd.Timedelta(days=10)
        frames = self._fetch(since.date(), self.poll_cache, refresh=True)
        if any(f.empty for f in frames.values()):
            return []
        complete = min(f.index.max() for f in frames.values())
        return [b for b in bars_after(frames, after, start) if b.date <= complete]

    def bars_between(self, first: pd.Timestamp, last: pd.Timestamp) -> Frames:
        """Freshly downloaded bars of the last few weeks up to ``last`` (revisions show there).

        The warm-up history comes from the parquet cache, which a re-download does
        not change, so only recent bars are compared.
        """
        since = max(first, last - pd.Timedelta(days=40))
        frames = self._fetch(since.date(), self.poll_cache, refresh=True)
        return slice_period(frames, first, last + pd.Timedelta(days=1))

    def new_bars(self, after: pd.Timestamp | None, start: pd.Timestamp) -> Iterator[Bar]:
        while True:
            fresh = self.poll(after, start)
            if not fresh:
                log.info(
                    "no new closed bar after %s; next poll in %.0f s",
                    None if after is None else after.date(),
                    self.poll_seconds,
                )
                self._sleep(self.poll_seconds)
                continue
            for bar in fresh:
                after = bar.date
                yield bar


def make_source(
    name: str, config: StudyConfig, state_dir: Path, poll_seconds: float = 900.0
) -> ReplaySource | YahooSource:
    """The bar source called ``name`` (``replay`` or ``yfinance``)."""
    if name == "replay":
        return ReplaySource(config)
    if name == "yfinance":
        return YahooSource(config, Path(state_dir) / "yfinance-cache", poll_seconds=poll_seconds)
    raise DataError(f"--source {name!r}: use one of {', '.join(SOURCES)}")

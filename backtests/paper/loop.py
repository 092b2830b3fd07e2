"""The paper-trading loop: each newly closed bar in, one committed transaction out.

Per bar: append it to the stored bars, trade it from the snapshot of the bar
before (:func:`backtests.paper.carry.trade_bar`; the first bar replays the
warm-up), take the rows dated on this bar (fills at its open of yesterday's
orders, today's orders, positions, cash, equity, targets, adaptations) and
write them, the bar and the snapshot after it in one transaction.
A crash before the commit loses the bar entirely (it is fetched again on
restart); a crash after it loses nothing.

``METABT_PAPER_CRASH_AT=<point>:<bar>`` makes the process kill itself with
SIGKILL at ``point`` (``fetched``, ``orders``, ``fills``, ``committed``) of
paper bar number ``bar`` (1 = the first paper bar); the crash tests use it to
check that no point of the write loses or duplicates anything.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metabt.backtests.paper.carry import trade_bar, write_snapshot
from metabt.backtests.paper.ledger import (
    PaperError,
    first_difference,
    insert_bars,
    insert_rows,
    next_bars_digest,
    read_rows,
    transaction,
)
from metabt.backtests.paper.manifest import record_bar
from metabt.backtests.paper.session import Session
from metabt.backtests.paper.simulate import rows_on
from metabt.backtests.paper.sources import Bar

log = logging.getLogger(__name__)

CRASH_ENV = "METABT_PAPER_CRASH_AT"
CRASH_POINTS = ("fetched", "orders", "fills", "committed")


@dataclass(frozen=True)
class BarOutcome:
    """What processing one bar did."""

    date: pd.Timestamp
    bar_no: int
    n_orders: int
    n_fills: int
    cash: float
    equity: float
    inserted: int
    seconds: float
    bars_fed: int  # bars Backtrader was fed to trade it, over all assets


def _crash_plan() -> tuple[str, int] | None:
    raw = os.environ.get(CRASH_ENV)
    if not raw:
        return None
    point, _, bar = raw.partition(":")
    if point not in CRASH_POINTS or not bar.isdigit():
        raise PaperError(
            f"{CRASH_ENV}={raw!r}: use <point>:<bar number>, point one of {', '.join(CRASH_POINTS)}"
        )
    return point, int(bar)


class PaperLoop:
    """Feed closed bars to the strategy and keep the ledger of an open :class:`Session`."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self._crash = _crash_plan()
        self._warned: set[str] = set()

    def _crash_point(self, point: str, bar_no: int) -> None:
        if self._crash == (point, bar_no):
            log.warning("%s=%s: killing this process", CRASH_ENV, f"{point}:{bar_no}")
            os.kill(os.getpid(), signal.SIGKILL)

    def _frames_with(self, bar: Bar) -> dict[str, pd.DataFrame]:
        frames = {}
        for asset, frame in self.s.frames.items():
            if asset in bar.rows:
                # The stored bars are one float table: a new table of them and the
                # bar, without pd.concat's per-call alignment work.
                frame = pd.DataFrame(
                    np.vstack([frame.to_numpy(dtype=np.float64), [bar.rows[asset]]]),
                    columns=frame.columns,
                    index=frame.index.insert(len(frame), bar.date),
                )
            frames[asset] = frame
        unknown = set(bar.rows) - set(frames)
        if unknown:
            raise PaperError(
                f"bar {bar.date.date()} holds symbols {sorted(unknown)} this paper "
                "state does not trade; use the config the state was started with"
            )
        return frames

    def _stored_frames_upto(self, bar: Bar) -> dict[str, pd.DataFrame]:
        """Stored bars up to an already processed ``bar``, after checking it is the same bar."""
        for asset, frame in self.s.frames.items():
            stored = tuple(map(float, frame.loc[bar.date])) if bar.date in frame.index else None
            if stored != bar.rows.get(asset):
                raise PaperError(
                    f"bar {bar.date.date()} of {asset} differs from the one "
                    f"already traded on ({stored} stored, {bar.rows.get(asset)} "
                    "now); the ledger keeps what was traded"
                )
        return {a: f.loc[f.index <= bar.date] for a, f in self.s.frames.items()}

    def process_bar(self, bar: Bar) -> BarOutcome:
        """Trade one closed bar; processing a bar again inserts nothing.

        Raises
        ------
        PaperError
            The bar is older than the last one and was never seen, or it differs
            from the stored bar of that date, or the rows it gives differ from
            the stored ones.
        """
        s, day = self.s, bar.date.date().isoformat()
        again = s.last_bar is not None and bar.date <= s.last_bar
        if again:
            seen = s.conn.execute("SELECT bar_no FROM processed WHERE date = ?", (day,)).fetchone()
            if seen is None:
                raise PaperError(
                    f"bar {day} is older than the last paper bar "
                    f"{s.last_bar.date()} and was never traded; the ledger is "
                    "not rewritten after the fact"
                )
            bar_no, frames = int(seen[0]), self._stored_frames_upto(bar)
        else:
            bar_no, frames = s.n_processed + 1, self._frames_with(bar)
        t0 = time.perf_counter()
        before = s.conn.execute("SELECT max(date) FROM processed WHERE date < ?", (day,))
        replay, snapshot = trade_bar(s, frames, bar, before.fetchone()[0])
        rows, messages = replay.rows, replay.messages
        for message in messages:
            if message not in self._warned:
                self._warned.add(message)
                log.warning("%s: %s", day, message)
        new = rows_on(rows, day)
        if not new["account"]:
            raise PaperError(
                f"bar {day}: the strategy did not trade on it (is it before the "
                f"paper start {s.start.date()}?)"
            )
        bar_rows = [(day, a, *row, 1) for a, row in bar.rows.items()]
        with transaction(s.conn):
            inserted = insert_bars(s.conn, bar_rows)
            inserted += insert_rows(s.conn, {"orders": new["orders"]})
            self._crash_point("orders", bar_no)
            inserted += insert_rows(s.conn, {k: v for k, v in new.items() if k != "orders"})
            seconds = time.perf_counter() - t0
            inserted += s.conn.execute(
                "INSERT OR IGNORE INTO processed (date, bar_no, n_orders, n_fills, seconds) "
                "VALUES (?, ?, ?, ?, ?)",
                (day, bar_no, len(new["orders"]), len(new["fills"]), seconds),
            ).rowcount
            if not again:
                write_snapshot(s.conn, day, bar_no, snapshot, s.verify_bars + 1)
            self._crash_point("fills", bar_no)
            # INSERT OR IGNORE keeps a stored row; make sure it is the row we meant.
            diff = first_difference(read_rows(s.conn, date=day), new)
            if diff is not None:
                raise PaperError(
                    f"bar {day}: the ledger already holds other rows for this bar "
                    f"({diff}); the state was written by other code or data"
                )
        self._crash_point("committed", bar_no)
        if not again:
            s.frames, s.last_bar, s.n_processed = frames, bar.date, bar_no
            # After the commit: the database is the record, the manifest the way back to it.
            s.bars_sha256 = next_bars_digest(s.conn, s.bars_sha256, day)
            record_bar(s.state_dir, day, s.bars_sha256)
        cash, equity = new["account"][0][1:]
        return BarOutcome(
            bar.date,
            bar_no,
            len(new["orders"]),
            len(new["fills"]),
            cash,
            equity,
            inserted,
            seconds,
            replay.bars_fed,
        )

    def run(
        self,
        speed: float = 0.0,
        max_bars: int | None = None,
        on_bar: Callable[[BarOutcome], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        until: pd.Timestamp | None = None,
    ) -> int:
        """Process new bars from the session's source until it ends or ``max_bars`` are done.

        Parameters
        ----------
        speed : float
            Bars per second (replay pacing); 0 = as fast as possible.
        max_bars : int, optional
            Stop after this many new bars.
        until : pd.Timestamp, optional
            Stop after the bar of this date (a rebuild re-trades up to the last traded bar).
        on_bar : callable, optional
            Called with each :class:`BarOutcome` (the CLI prints a line).

        Returns
        -------
        int
            Bars processed.
        """
        if speed < 0 or (max_bars is not None and max_bars < 0):
            raise PaperError("--speed and --max-bars must be >= 0")
        bars = self.s.source.new_bars(self.s.last_bar, self.s.start)
        done = 0
        while max_bars is None or done < max_bars:
            if until is not None and self.s.last_bar is not None and self.s.last_bar >= until:
                break  # a live source would otherwise wait for the next bar
            tick = time.perf_counter()
            bar = next(bars, None)
            if bar is None or (until is not None and bar.date > until):
                break
            self._crash_point("fetched", self.s.n_processed + 1)
            outcome = self.process_bar(bar)
            done += 1
            if on_bar is not None:
                on_bar(outcome)
            if speed > 0:
                sleep(max(0.0, 1.0 / speed - (time.perf_counter() - tick)))
        return done

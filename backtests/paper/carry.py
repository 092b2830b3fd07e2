"""Trade one bar from the stored snapshot, or by replaying every stored bar when there is none.

The first paper bar (and a state written before snapshots existed) has no
snapshot to start from: the whole stored history is replayed once through
:func:`backtests.paper.simulate.simulate`, which also captures the state after
the bar. Every later bar starts from the snapshot of the bar before
(:func:`backtests.paper.step.step`). Snapshots live in the ``snapshots``
table; the last ``keep`` are kept for the determinism check on resume.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pandas as pd

from metabt.backtests.paper.feature_state import FeatureState
from metabt.backtests.paper.ledger import PaperError
from metabt.backtests.paper.simulate import Replay, simulate
from metabt.backtests.paper.snapshot import SnapshotError
from metabt.backtests.paper.sources import Bar
from metabt.backtests.paper.step import seal, step

if TYPE_CHECKING:
    from metabt.backtests.paper.session import Session


def read_snapshot(conn: sqlite3.Connection, day: str) -> bytes | None:
    row = conn.execute("SELECT blob FROM snapshots WHERE date = ?", (day,)).fetchone()
    return None if row is None else bytes(row[0])


def write_snapshot(conn: sqlite3.Connection, day: str, bar_no: int, blob: bytes, keep: int) -> None:
    """Store the snapshot after bar ``bar_no`` and drop those older than the last ``keep``."""
    conn.execute(
        "INSERT OR REPLACE INTO snapshots (date, bar_no, blob) VALUES (?, ?, ?)",
        (day, bar_no, blob),
    )
    conn.execute("DELETE FROM snapshots WHERE bar_no <= ?", (bar_no - keep,))


def refused(session: Session, day: str, what: str) -> PaperError:
    """The one message for a snapshot the loop will not trade on."""
    state = session.state_dir
    return PaperError(
        f"{state}: the stored snapshot of {day} cannot be used ({what}); nothing was "
        f"traded. Re-create the state with `metabt paper rebuild --state {state}`"
    )


def bars_upto(frames: dict[str, pd.DataFrame], day: pd.Timestamp) -> dict[str, pd.DataFrame]:
    return {a: f.iloc[: f.index.searchsorted(day, "right")] for a, f in frames.items()}


def stored_bar(frames: dict[str, pd.DataFrame], day: pd.Timestamp) -> Bar:
    """The stored bar of ``day`` (each asset that has one)."""
    cols = ["open", "high", "low", "close", "volume"]
    return Bar(
        day,
        {a: tuple(map(float, f.loc[day, cols])) for a, f in frames.items() if day in f.index},
    )


def full_replay(session: Session, frames: dict[str, pd.DataFrame], day: pd.Timestamp) -> Replay:
    """Every stored bar up to ``day`` through Backtrader, with the state after ``day``."""
    s = session
    return simulate(
        frames, s.params, s.costs, s.features, s.start, s.run_id, s.cash, capture_dates=(day,)
    )


def sealed(session: Session, replay: Replay, frames: dict[str, pd.DataFrame], key: str) -> bytes:
    """The snapshot a full replay leaves after bar ``key`` (its EWMs re-run over the history)."""
    state, arrays = replay.states[key]
    features = {a: FeatureState.from_history(f, session.features) for a, f in frames.items()}
    return seal(state, arrays, features, key)


def trade_bar(
    session: Session, frames: dict[str, pd.DataFrame], bar: Bar, prior: str | None
) -> tuple[Replay, bytes]:
    """Rows and snapshot of ``bar``; ``frames`` hold the stored bars and ``bar``'s own,
    ``prior`` is the paper bar before it (None: this is the first)."""
    blob = None if prior is None else read_snapshot(session.conn, prior)
    key = bar.date.date().isoformat()
    if prior is None or blob is None:
        replay = full_replay(session, frames, bar.date)
        if key not in replay.states:
            raise PaperError(
                f"bar {key}: the strategy did not trade on it (is it before the "
                f"paper start {session.start.date()}?)"
            )
        return replay, sealed(session, replay, frames, key)
    return step_from(session, blob, frames, prior, bar)


def step_from(
    session: Session, blob: bytes, frames: dict[str, pd.DataFrame], prior: str, bar: Bar
) -> tuple[Replay, bytes]:
    """Trade ``bar`` from the snapshot ``blob`` of the paper bar ``prior``.

    A snapshot that does not fit the running strategy is refused in one line.
    """
    s = session
    try:
        return step(
            blob,
            bars_upto(frames, pd.Timestamp(prior)),
            bar,
            s.params,
            s.costs,
            s.features,
            s.start,
            s.run_id,
        )
    except SnapshotError as exc:
        raise refused(session, str(prior), str(exc)) from None

"""The determinism check on resume: re-derive the last bars and compare them with the state.

With ``K = session.verify_bars``, the last ``K`` traded bars are traded again
from the snapshot stored ``K`` bars back, exactly as the loop traded them
(:func:`backtests.paper.step.step`); their ledger rows and every snapshot on
the way must equal the stored ones. A stored snapshot or ledger row that does
not follow from the strategy, the checkpoint and the stored bars is refused
with the date and what differs, and nothing is traded on it. The work does
not grow with the history.

A state with fewer than ``K + 1`` stored snapshots (a young state, or one
written before snapshots existed) is checked the old way, by replaying every
stored bar once; the snapshot of its last bar is stored then, so the next
bars need no replay.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from metabt.backtests.paper.carry import (
    full_replay,
    read_snapshot,
    refused,
    sealed,
    step_from,
    stored_bar,
    write_snapshot,
)
from metabt.backtests.paper.ledger import PaperError, first_difference, read_rows, transaction
from metabt.backtests.paper.simulate import rows_on
from metabt.backtests.paper.snapshot import SnapshotError, decode

if TYPE_CHECKING:
    from metabt.backtests.paper.session import Session

log = logging.getLogger(__name__)


def _diverged(session: Session, what: str) -> PaperError:
    return PaperError(
        f"{session.state_dir}: re-deriving the stored bars does not reproduce the stored "
        f"ledger ({what}); the code, the checkpoint or the stored bars changed. Nothing "
        f"was traded: re-create the state with `metabt paper rebuild --state "
        f"{session.state_dir}` or start a new --state folder"
    )


def state_difference(stored: bytes, derived: bytes) -> str | None:
    """The first field where two snapshots differ, to the bit (None when they hold the same).

    Compared decoded: the order of safetensors' metadata keys is not fixed.
    """
    if stored == derived:
        return None
    a, arrays_a = decode(stored)
    b, arrays_b = decode(derived)
    for name in sorted(set(arrays_a) | set(arrays_b)):
        x, y = arrays_a.get(name), arrays_b.get(name)
        if x is None or y is None or x.shape != y.shape or x.tobytes() != y.tobytes():
            return f"array {name}"
    return _tree_difference(a, b, "state")


def _tree_difference(a: object, b: object, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _tree_difference(a.get(key), b.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _tree_difference(x, y, f"{path}.{i}")
            if found:
                return found
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return None if same else f"{path}: stored {a!r}, re-derived {b!r}"


def verify(session: Session) -> None:
    """Re-derive the last ``session.verify_bars`` bars (module doc); raise on a difference."""
    s = session
    if s.last_bar is None:
        return
    k = s.verify_bars
    days = [
        r[0]
        for r in s.conn.execute(
            "SELECT date FROM processed ORDER BY bar_no DESC LIMIT ?", (k + 1,)
        ).fetchall()
    ][::-1]
    base = read_snapshot(s.conn, days[0]) if len(days) == k + 1 else None
    if base is None:
        _verify_by_full_replay(s)
        return
    blob = base
    for prior, day in zip(days, days[1:]):
        bar = stored_bar(s.frames, pd.Timestamp(day))
        replay, blob = step_from(s, blob, s.frames, prior, bar)
        diff = first_difference(read_rows(s.conn, date=day), rows_on(replay.rows, day))
        if diff is not None:
            raise _diverged(s, f"bar {day}: {diff}")
        stored = read_snapshot(s.conn, day)
        try:
            what = "it is missing" if stored is None else state_difference(stored, blob)
        except SnapshotError as exc:
            what = str(exc)
        if what is not None:
            raise refused(s, day, f"it differs from the re-derived state: {what}")
    log.info("resumed %s: the last %d bars re-derived, last %s", s.state_dir, k, days[-1])


def _verify_by_full_replay(s: Session) -> None:
    assert s.last_bar is not None
    replay = full_replay(s, s.frames, s.last_bar)
    diff = first_difference(read_rows(s.conn), replay.rows)
    if diff is not None:
        raise _diverged(s, diff)
    key = s.last_bar.date().isoformat()
    if read_snapshot(s.conn, key) is None:
        with transaction(s.conn):
            blob = sealed(s, replay, s.frames, key)
            write_snapshot(s.conn, key, s.n_processed, blob, s.verify_bars + 1)
    log.info(
        "resumed %s: %d bars reproduced, last %s", s.state_dir, s.n_processed, s.last_bar.date()
    )

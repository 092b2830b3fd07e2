"""On resume: the source's bars that were already traded must be the stored ones.

A vendor revises a past bar, or ``--data`` now points at another file: the
ledger was built on bars the source no longer gives, and continuing would mix
two histories without anyone knowing. So the overlap is compared field by
field; the first difference is refused with its date, asset and field, unless
``--accept-revised-history`` is given, and then every difference is logged in
the ledger's ``revisions`` table (the stored bars, what was traded on, stay).
A difference accepted once stays accepted on later resumes.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import pandas as pd

from metabt.backtests.paper.ledger import PaperError, transaction

if TYPE_CHECKING:
    from metabt.backtests.paper.session import Session

log = logging.getLogger(__name__)

FIELDS = ("open", "high", "low", "close", "volume")
GONE, ADDED = "(bar gone)", "(new bar)"

Change = tuple[str, str, str, float, float]  # date, asset, field, traded, source


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def differences(
    stored: dict[str, pd.DataFrame], fresh: dict[str, pd.DataFrame], last: pd.Timestamp
) -> list[Change]:
    """Every field where ``fresh`` differs from ``stored`` on dates both cover, up to ``last``."""
    out: list[Change] = []
    for asset, mine in stored.items():
        theirs = fresh.get(asset)
        if theirs is None or theirs.empty or mine.empty:
            continue
        lo = max(mine.index[0], theirs.index[0])
        hi = min(last, theirs.index[-1])
        a = mine.loc[(mine.index >= lo) & (mine.index <= hi)]
        b = theirs.loc[(theirs.index >= lo) & (theirs.index <= hi)]
        for day in a.index.union(b.index):
            key = day.date().isoformat()
            if day not in b.index:
                out.append((key, asset, GONE, float(a.loc[day, "close"]), 0.0))
            elif day not in a.index:
                out.append((key, asset, ADDED, 0.0, float(b.loc[day, "close"])))
            else:
                out.extend(
                    (key, asset, f, float(a.loc[day, f]), float(b.loc[day, f]))
                    for f in FIELDS
                    if not _same(float(a.loc[day, f]), float(b.loc[day, f]))
                )
    return sorted(out)


def _describe(change: Change) -> str:
    day, asset, field, traded, now = change
    if field == GONE:
        return f"the source no longer has the {day} bar of {asset}, which was traded"
    if field == ADDED:
        return f"the source now has a {day} bar of {asset} that was not there when trading"
    return f"the {day} bar of {asset} differs in {field}: {traded:g} traded, {now:g} now"


def check_history(session: Session, accept: bool) -> list[Change]:
    """Refuse (or with ``accept`` log) changes of already traded bars in the session's source.

    Raises
    ------
    PaperError
        A stored bar differs from the source's bar of the same date and asset,
        and ``accept`` is False.

    Returns
    -------
    list
        The changes accepted now (empty when the history agrees or was accepted before).
    """
    if session.last_bar is None or not session.frames:
        return []
    first = min(f.index[0] for f in session.frames.values() if not f.empty)
    fresh = session.source.bars_between(first, session.last_bar)
    changes = differences(session.frames, fresh, session.last_bar)
    known = set(session.conn.execute("SELECT date, asset, field, source FROM revisions").fetchall())
    new = [c for c in changes if (c[0], c[1], c[2], c[4]) not in known]
    if not new:
        return []
    if not accept:
        more = f" (and {len(new) - 1} more changes)" if len(new) > 1 else ""
        raise PaperError(
            f"{session.state_dir}: {_describe(new[0])}{more}: a vendor revision or "
            "another file; the ledger keeps what was traded. Restore the original "
            "data, or pass --accept-revised-history to continue (the changes are "
            "logged in the ledger)"
        )
    now = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
    with transaction(session.conn):
        session.conn.executemany(
            "INSERT OR IGNORE INTO revisions (date, asset, field, traded, source, logged) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(*c, now) for c in new],
        )
    log.warning(
        "%s: accepted %d revised past bar fields (first: %s); logged in the ledger",
        session.state_dir,
        len(new),
        _describe(new[0]),
    )
    return new

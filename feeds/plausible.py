"""Plausibility of well-formed daily bars: values a real market cannot print.

:mod:`feeds.validate` checks that every cell is a number where a number
belongs; this module checks that the numbers could be a market's daily bars.
A file can be perfectly formed and still wrong: a price of 1e308 overflows the
first return computed from it, a single bar printed x1000 is traded as if it
happened, a three-month hole becomes one daily return, and intraday rows become
"days". Each is refused with one line naming the row and the fix; the two that
can be genuine (a huge real move, a real trading halt) have an explicit opt-in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from metabt.feeds.errors import DataError

#: No traded instrument is quoted above this; 1e308 and friends are bad prints.
MAX_PRICE = 1e9
#: Shares or contracts in one day; beyond this the column is not a volume.
MAX_VOLUME = 1e15
#: A one-bar move beyond this factor (either way) that comes back is a bad print.
JUMP_FACTOR = 10.0
#: Calendar days between consecutive bars beyond which the gap is one fake "daily" return.
MAX_GAP_DAYS = 30

Where = Callable[[int], str]


def check_limits(cols: dict[str, np.ndarray], where: Where) -> None:
    """Refuse a price above :data:`MAX_PRICE` or a volume above :data:`MAX_VOLUME`."""
    for name, values in cols.items():
        limit = MAX_VOLUME if name == "Volume" else MAX_PRICE
        bad = values > limit
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(
                f"{where(pos)}: {name} is {values[pos]:g}, above {limit:g}; no market "
                "trades there, it is a bad print: fix or delete that row"
            )


def check_one_bar_per_day(dates: pd.DatetimeIndex, where: Where) -> None:
    """Refuse several bars on one calendar date (intraday data)."""
    days = dates.normalize()
    dup = days.duplicated()
    if dup.any():
        pos = int(np.argmax(dup))
        raise DataError(
            f"{where(pos)}: a second bar on {days[pos].date()} (intraday data?); "
            "metabt works on daily bars: resample to one bar per day "
            "(df.resample('1D').agg(...)) and re-run"
        )


def check_jumps(ohlc: np.ndarray, where: Where, allow: bool) -> None:
    """Refuse a bar that jumps beyond x10 or /10 from the previous close and comes back.

    Parameters
    ----------
    ohlc : ndarray, shape (n, 4)
        Open, High, Low, Close (raw, as written in the file).
    where : callable
        Position -> "file: line N (date)" for the message.
    allow : bool
        ``--allow-jumps``: the user says such moves are genuine; nothing is checked.
    """
    if allow or len(ohlc) < 2:
        return
    close = ohlc[:, 3]
    prev = close[:-1, None]
    ratio = ohlc[1:] / prev
    jumped = ((ratio > JUMP_FACTOR) | (ratio < 1.0 / JUMP_FACTOR)).any(axis=1)
    # "Comes back": the next close is again within the factor of the close before the jump.
    # A last bar cannot show it comes back, and a x10 print there is traded just the same.
    back = np.ones_like(jumped)
    after = close[2:] / close[:-2]
    back[:-1] = (after <= JUMP_FACTOR) & (after >= 1.0 / JUMP_FACTOR)
    bad = jumped & back
    if bad.any():
        i = int(np.argmax(bad))
        worst = ratio[i][np.argmax(np.abs(np.log(ratio[i])))]
        move = f"x{worst:,.0f}" if worst > 1 else f"/{1.0 / worst:,.0f}"
        raise DataError(
            f"{where(i + 1)}: the bar moves {move} from the previous close "
            f"{close[i]:g} and comes back (a bad print?); fix that row, or pass "
            "--allow-jumps if the move is genuine"
        )


def check_gaps(dates: pd.DatetimeIndex, where: Where, source: str, allow: bool) -> None:
    """Refuse (or with ``allow`` warn about) more than :data:`MAX_GAP_DAYS` between bars."""
    if len(dates) < 2:
        return
    # In days whatever the index's resolution (pandas 3 may store s, ms, us or ns).
    days = np.diff(dates.to_numpy().astype("datetime64[D]").astype(np.int64))
    wide = np.flatnonzero(days > MAX_GAP_DAYS)
    if not wide.size:
        return
    i = int(wide[0])
    what = (
        f"{days[i]} calendar days between the bars of {dates[i].date()} and {dates[i + 1].date()}"
    )
    if not allow:
        raise DataError(
            f"{where(i + 1)}: {what}, more than {MAX_GAP_DAYS}; the gap would "
            "count as one daily return. Fill the missing bars, cut the file, or "
            "pass --allow-gaps to accept it"
        )
    more = f" (and {wide.size - 1} more)" if wide.size > 1 else ""
    warnings.warn(
        f"{source}: {what}{more} accepted by --allow-gaps; each gap counts as one daily return",
        UserWarning,
        stacklevel=3,
    )

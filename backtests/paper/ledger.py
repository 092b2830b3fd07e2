"""The paper-trading state: one SQLite file and one lock file in the ``--state`` folder.

Everything a bar changes (the bar itself, the orders decided on it, the fills
at its open, positions, cash, equity, target weights, adaptation events) is
written in ONE transaction, so a crash at any point leaves the state either
before the bar or after it, never half-way. The database runs in WAL mode with
``synchronous=FULL``: a committed bar survives a power cut, an uncommitted one
is rolled back on the next open.

Every ledger row has a natural key (order ids are ``run:asset:date:seq``) and a
UNIQUE constraint on it; rows are written with ``INSERT OR IGNORE`` and then
compared with what is stored, so processing a bar twice inserts nothing and a
bar that would write *different* rows is refused instead of silently kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING

from metabt.feeds.errors import DataError

if TYPE_CHECKING:
    from typing_extensions import Self

DB_FILE = "paper.sqlite"
LOCK_FILE = "paper.lock"

#: Ledger tables: columns in order (``date`` first everywhere) and the natural key.
LEDGER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "orders": (
        (
            "date",
            "asset",
            "seq",
            "order_id",
            "run_id",
            "target_weight",
            "order_target",
            "size",
            "ref_price",
        ),
        ("order_id",),
    ),
    "fills": (
        ("date", "asset", "fill_id", "order_id", "size", "price", "value", "commission"),
        ("fill_id",),
    ),
    "order_status": (("date", "order_id", "status"), ("order_id", "status")),
    "positions": (("date", "asset", "size", "close", "value"), ("date", "asset")),
    "targets": (("date", "asset", "weight"), ("date", "asset")),
    "account": (("date", "cash", "equity"), ("date",)),
    "adaptations": (
        ("date", "asset", "seq", "trigger", "window", "loss_before", "loss_after"),
        ("date", "asset", "seq"),
    ),
}
BAR_COLUMNS = ("date", "asset", "open", "high", "low", "close", "volume", "live")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bars (
    date TEXT NOT NULL, asset TEXT NOT NULL, open REAL NOT NULL, high REAL NOT NULL,
    low REAL NOT NULL, close REAL NOT NULL, volume REAL NOT NULL, live INTEGER NOT NULL,
    PRIMARY KEY (date, asset));
CREATE TABLE IF NOT EXISTS processed (
    date TEXT PRIMARY KEY, bar_no INTEGER NOT NULL UNIQUE, n_orders INTEGER NOT NULL,
    n_fills INTEGER NOT NULL, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    date TEXT NOT NULL, asset TEXT NOT NULL, seq INTEGER NOT NULL, order_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL, target_weight REAL NOT NULL, order_target REAL NOT NULL,
    size REAL NOT NULL, ref_price REAL NOT NULL, UNIQUE (run_id, asset, date, seq));
CREATE TABLE IF NOT EXISTS fills (
    date TEXT NOT NULL, asset TEXT NOT NULL, fill_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (order_id), size REAL NOT NULL,
    price REAL NOT NULL, value REAL NOT NULL, commission REAL NOT NULL);
CREATE TABLE IF NOT EXISTS order_status (
    date TEXT NOT NULL, order_id TEXT NOT NULL REFERENCES orders (order_id),
    status TEXT NOT NULL, PRIMARY KEY (order_id, status));
CREATE TABLE IF NOT EXISTS positions (
    date TEXT NOT NULL, asset TEXT NOT NULL, size REAL NOT NULL, close REAL NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (date, asset));
CREATE TABLE IF NOT EXISTS targets (
    date TEXT NOT NULL, asset TEXT NOT NULL, weight REAL NOT NULL, PRIMARY KEY (date, asset));
CREATE TABLE IF NOT EXISTS account (date TEXT PRIMARY KEY, cash REAL NOT NULL,
    equity REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revisions (
    date TEXT NOT NULL, asset TEXT NOT NULL, field TEXT NOT NULL, traded REAL,
    source REAL, logged TEXT NOT NULL, PRIMARY KEY (date, asset, field, source));
CREATE TABLE IF NOT EXISTS snapshots (
    date TEXT PRIMARY KEY, bar_no INTEGER NOT NULL UNIQUE, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS adaptations (
    date TEXT NOT NULL, asset TEXT NOT NULL, seq INTEGER NOT NULL, "trigger" TEXT NOT NULL,
    "window" INTEGER NOT NULL, loss_before REAL NOT NULL, loss_after REAL NOT NULL,
    PRIMARY KEY (date, asset, seq));
"""

Rows = dict[str, list[tuple]]


class PaperError(DataError):
    """The paper state cannot be used as asked (locked, diverged, mismatched); one line."""


class StateLock:
    """An exclusive ``flock`` on ``paper.lock``: one writer per state folder.

    The OS drops the lock when the holding process dies (even by SIGKILL), so
    a crashed run never leaves a stale lock behind; the pid written into the
    file only serves the error message.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> Self:
        folder = self.path.parent
        check_state_dir(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PaperError(
                f"{folder}: cannot write the paper state ({exc.strerror}); "
                "`metabt paper run` needs a writable folder (`metabt paper status` "
                "reads a read-only one)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PaperError(
                f"{self.path.parent}: this paper state is in use by another "
                f"`metabt paper run` (pid {holder}); stop that process first or "
                "use another --state folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def db_path(state_dir: Path) -> Path:
    return Path(state_dir) / DB_FILE


def check_state_dir(state_dir: Path) -> None:
    """Refuse a ``--state`` that names a file (a state is a folder)."""
    state = Path(state_dir)
    if state.exists() and not state.is_dir():
        raise PaperError(
            f"--state {state}: is a file, not a folder; pass the folder of a "
            "paper state (or a new folder to start one)"
        )


def damaged(state_dir: Path, what: str) -> PaperError:
    """The one message for a state database that cannot be trusted, with the way out."""
    return PaperError(
        f"{db_path(state_dir)}: the paper state is damaged ({what}); rebuild it "
        f"from its config, checkpoint and bars with `metabt paper rebuild --state "
        f"{state_dir}` (the damaged file is kept beside it)"
    )


def _open(path: Path, read_only: bool) -> sqlite3.Connection:
    if not read_only:
        if path.is_file() and path.stat().st_size > 0:
            # Checked through a connection that writes nothing (no -wal, no -shm, no
            # journal-mode change): a damaged file must stay exactly as it was found.
            _check_integrity(
                sqlite3.connect(f"file:{path}?immutable=1", uri=True), path.parent, keep=False
            )
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        return conn
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        _check_integrity(conn, path.parent)
        return conn
    except sqlite3.OperationalError as exc:
        if "unable to open" not in str(exc) and "readonly" not in str(exc):
            raise
        # A WAL database in a folder we may not write (no -shm can be made): no
        # writer can be running there either, so reading it as immutable is safe.
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
        _check_integrity(conn, path.parent)
        return conn


def _check_integrity(conn: sqlite3.Connection, state_dir: Path, keep: bool = True) -> None:
    """Raise ``damaged`` unless ``PRAGMA integrity_check`` is ok; close ``conn`` unless ``keep``."""
    try:
        ok = integrity_ok(conn)
    except BaseException:
        conn.close()
        raise
    if not ok:
        conn.close()
        raise damaged(state_dir, "PRAGMA integrity_check failed")
    if not keep:
        conn.close()


def connect(state_dir: Path, read_only: bool = False) -> sqlite3.Connection:
    """Open the state database (autocommit mode: transactions are explicit).

    Runs ``PRAGMA integrity_check`` first: a truncated or overwritten file is
    refused with a way to rebuild it, never read half-way.

    Raises
    ------
    PaperError
        ``state_dir`` is a file, holds no state (read-only), is not writable,
        or the database is damaged.
    """
    check_state_dir(state_dir)
    path = db_path(state_dir)
    if read_only and not path.is_file():
        raise PaperError(
            f"{state_dir}: no paper state here ({DB_FILE} missing); start one "
            "with `metabt paper run CONFIG --state DIR`"
        )
    conn = None
    try:
        conn = _open(path, read_only)
        conn.execute("SELECT count(*) FROM meta").fetchone()
    except sqlite3.OperationalError as exc:
        if conn is not None:
            conn.close()
        text = str(exc)
        if read_only and ("readonly" in text or "unable to open" in text):
            raise PaperError(
                f"{state_dir}: cannot read the paper state ({text}); check the folder's permissions"
            ) from None
        if "readonly" in text or "unable to open" in text:
            raise PaperError(
                f"{state_dir}: cannot open the paper state for writing ({text}); "
                "`metabt paper run` needs a writable folder, `metabt paper "
                "status` reads a read-only one"
            ) from None
        raise damaged(state_dir, text) from None
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        raise damaged(state_dir, str(exc)) from None
    except PaperError:
        if conn is not None:
            conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; anything raised rolls the whole bar back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def write_meta(conn: sqlite3.Connection, values: dict[str, str]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", sorted(values.items())
    )


def insert_bars(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    """Insert bar rows (``BAR_COLUMNS`` order); rows already there are left alone."""
    before = conn.total_changes
    conn.executemany(
        f"INSERT OR IGNORE INTO bars ({', '.join(BAR_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(BAR_COLUMNS))})",
        rows,
    )
    return conn.total_changes - before


def read_bars(conn: sqlite3.Connection) -> list[tuple]:
    return conn.execute(
        f"SELECT {', '.join(BAR_COLUMNS)} FROM bars ORDER BY asset, date"
    ).fetchall()


def insert_rows(conn: sqlite3.Connection, rows: Rows) -> int:
    """``INSERT OR IGNORE`` every ledger row; returns how many were new."""
    before = conn.total_changes
    for table, items in rows.items():
        cols = LEDGER[table][0]
        quoted = ", ".join(f'"{c}"' for c in cols)
        conn.executemany(
            f"INSERT OR IGNORE INTO {table} ({quoted}) VALUES ({', '.join('?' * len(cols))})", items
        )
    return conn.total_changes - before


def read_rows(conn: sqlite3.Connection, date: str | None = None, upto: str | None = None) -> Rows:
    """Ledger rows in key order: all of them, those dated ``date``, or those ``<= upto``."""
    out: Rows = {}
    for table, (cols, key) in LEDGER.items():
        quoted = ", ".join(f'"{c}"' for c in cols)
        where = ""
        args: tuple[str, ...] = ()
        if date is not None:
            where, args = "WHERE date = ?", (date,)
        elif upto is not None:
            where, args = "WHERE date <= ?", (upto,)
        order = ", ".join(f'"{c}"' for c in key)
        out[table] = conn.execute(
            f"SELECT {quoted} FROM {table} {where} ORDER BY {order}", args
        ).fetchall()
    return out


def sort_rows(rows: Rows) -> Rows:
    """Rows in the same key order :func:`read_rows` returns."""
    out: Rows = {}
    for table, items in rows.items():
        cols, key = LEDGER[table]
        idx = [cols.index(k) for k in key]
        out[table] = sorted((tuple(r) for r in items), key=lambda r: tuple(r[i] for i in idx))
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        # Last-bit differences (another BLAS, another CPU) are not a divergence.
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
        )
    return a == b


def first_difference(stored: Rows, rebuilt: Rows) -> str | None:
    """Where two ledgers first differ (``None`` when they agree), as a short phrase."""
    for table in LEDGER:
        a, b = stored.get(table, []), rebuilt.get(table, [])
        for i in range(max(len(a), len(b))):
            ra = a[i] if i < len(a) else None
            rb = b[i] if i < len(b) else None
            if (
                ra is None
                or rb is None
                or len(ra) != len(rb)
                or not all(_same(x, y) for x, y in zip(ra, rb))
            ):
                return f"{table}: stored {ra}, rebuilt {rb}"
    return None


def integrity_ok(conn: sqlite3.Connection) -> bool:
    """``PRAGMA integrity_check`` says ``ok``."""
    return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def bars_digest(conn: sqlite3.Connection) -> str:
    """Digest of every stored bar: a sha256 chain with one link per date, in date order.

    A chain so that the loop extends it by the new bar alone
    (:func:`next_bars_digest`) instead of hashing the whole history each bar.
    """
    digest = ""
    rows = conn.execute(f"SELECT {', '.join(BAR_COLUMNS)} FROM bars ORDER BY date, asset")
    for _, day_rows in groupby(rows, key=lambda row: row[0]):
        digest = _link(digest, day_rows)
    return digest


def next_bars_digest(conn: sqlite3.Connection, previous: str, date: str) -> str:
    """:func:`bars_digest` after the bars of ``date`` (the last stored date) were added."""
    rows = conn.execute(
        f"SELECT {', '.join(BAR_COLUMNS)} FROM bars WHERE date = ? ORDER BY asset", (date,)
    )
    return _link(previous, rows)


def _link(previous: str, rows: Iterable[tuple]) -> str:
    digest = hashlib.sha256(previous.encode())
    for row in rows:
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def flat_bars_digest(conn: sqlite3.Connection) -> str:
    """sha256 of every stored bar in key order: what manifests held before the chain."""
    digest = hashlib.sha256()
    for row in conn.execute(f"SELECT {', '.join(BAR_COLUMNS)} FROM bars ORDER BY date, asset"):
        digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()

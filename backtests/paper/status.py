"""Read a paper state without disturbing the loop: status table, run folder, tear sheet.

The state is opened read-only (WAL lets a reader run beside the writer), so
``metabt paper status`` works while ``metabt paper run`` is trading. The run
folder written by :func:`export_run_folder` follows the backtest's contract
(``returns.csv`` with a ``meta_adaptive`` column, ``positions.csv``,
``trades.csv``, ``adaptations.csv``, ``study.json``, ``config.toml``), so
:func:`reports.build.build_reports` gives the same QuantStats tear sheet as for
a backtest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from metabt.backtests.config import dump_config, parse_config
from metabt.backtests.outdir import clear_run_folder
from metabt.backtests.paper.ledger import PaperError, connect, read_meta

STRATEGY = "meta_adaptive"
PERIODS_PER_YEAR = 252


@dataclass(frozen=True)
class PaperStatus:
    """The state of a paper run at its last processed bar."""

    state_dir: Path
    run_id: str
    start: pd.Timestamp
    checkpoint: str
    n_bars: int
    last_bar: pd.Timestamp | None
    cash: float
    equity: float
    positions: pd.DataFrame  # asset, size, close, value, weight (target)
    pending: pd.DataFrame  # orders decided on the last bar, filled at the next open
    last_adaptation: dict | None
    mean_seconds: float | None


def _frame(conn, sql: str, args: tuple = ()) -> pd.DataFrame:
    cur = conn.execute(sql, args)
    return pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])


def read_status(state_dir: Path) -> PaperStatus:
    """Positions, cash, equity, last bar and last adaptation of a paper state."""
    conn = connect(Path(state_dir), read_only=True)
    try:
        meta = read_meta(conn)
        if not meta:
            raise PaperError(
                f"{state_dir}: the paper state was never initialised; run "
                "`metabt paper run CONFIG --state DIR` first"
            )
        last, n, secs = conn.execute(
            "SELECT max(date), count(*), avg(seconds) FROM processed"
        ).fetchone()
        cash = equity = float(meta["cash"])
        positions = pending = pd.DataFrame()
        adaptation = None
        if last is not None:
            cash, equity = conn.execute(
                "SELECT cash, equity FROM account WHERE date = ?", (last,)
            ).fetchone()
            positions = _frame(
                conn,
                "SELECT p.asset, p.size, p.close, p.value, t.weight AS target "
                "FROM positions p LEFT JOIN targets t ON t.date = p.date "
                "AND t.asset = p.asset WHERE p.date = ? ORDER BY p.asset",
                (last,),
            )
            pending = _frame(
                conn,
                "SELECT asset, target_weight, size, ref_price FROM orders "
                "WHERE date = ? ORDER BY asset, seq",
                (last,),
            )
            row = _frame(
                conn,
                'SELECT date, asset, "trigger", "window", loss_before, loss_after '
                "FROM adaptations ORDER BY date DESC, asset DESC, seq DESC LIMIT 1",
            )
            adaptation = row.iloc[0].to_dict() if len(row) else None
        return PaperStatus(
            Path(state_dir),
            meta["run_id"],
            pd.Timestamp(meta["start"]),
            meta["checkpoint"],
            int(n),
            None if last is None else pd.Timestamp(last),
            float(cash),
            float(equity),
            positions,
            pending,
            adaptation,
            None if secs is None else float(secs),
        )
    finally:
        conn.close()


def print_status(status: PaperStatus, console: Console) -> None:
    """Rich tables: the account, the book, the orders waiting for the next open."""
    head = Table(title=f"paper run {status.run_id} ({status.state_dir})", show_header=False)
    head.add_column("key")
    head.add_column("value", justify="right")
    head.add_row("start", str(status.start.date()))
    head.add_row("last bar", "none yet" if status.last_bar is None else str(status.last_bar.date()))
    head.add_row("bars traded", str(status.n_bars))
    head.add_row("cash", f"{status.cash:,.2f}")
    head.add_row("equity", f"{status.equity:,.2f}")
    a = status.last_adaptation
    head.add_row(
        "last adaptation",
        "none"
        if a is None
        else f"{a['date']} {a['asset']} ({a['trigger']}, {int(a['window'])} bars, loss "
        f"{a['loss_before']:.4f} -> {a['loss_after']:.4f})",
    )
    head.add_row("checkpoint", status.checkpoint)
    if status.mean_seconds is not None:
        head.add_row("mean seconds per bar", f"{status.mean_seconds:.3f}")
    console.print(head)
    if len(status.positions):
        book = Table(title=f"positions at the close of {status.last_bar.date()}")
        for col in ("asset", "size", "close", "value", "target weight"):
            book.add_column(col, justify="left" if col == "asset" else "right")
        for r in status.positions.itertuples(index=False):
            book.add_row(
                r.asset,
                f"{r.size:,.0f}",
                f"{r.close:,.2f}",
                f"{r.value:,.2f}",
                "" if pd.isna(r.target) else f"{r.target:+.4f}",
            )
        console.print(book)
    if len(status.pending):
        orders = Table(title="orders to fill at the next open")
        for col in ("asset", "target weight", "size", "at close"):
            orders.add_column(col, justify="left" if col == "asset" else "right")
        for r in status.pending.itertuples(index=False):
            orders.add_row(
                r.asset, f"{r.target_weight:+.4f}", f"{r.size:,.0f}", f"{r.ref_price:,.2f}"
            )
        console.print(orders)


def export_run_folder(state_dir: Path, out: Path) -> Path:
    """Write the backtest's run-folder files from a paper state; return ``out``.

    Raises
    ------
    PaperError
        The state has no traded bar yet.
    """
    conn = connect(Path(state_dir), read_only=True)
    try:
        meta = read_meta(conn)
        account = _frame(conn, "SELECT date, equity FROM account ORDER BY date")
        if account.empty:
            raise PaperError(f"{state_dir}: no bar traded yet; nothing to report")
        targets = _frame(conn, "SELECT date, asset, weight FROM targets ORDER BY date, asset")
        trades = _frame(
            conn,
            "SELECT date, asset, size, price, value, commission FROM fills ORDER BY date, fill_id",
        )
        events = _frame(
            conn,
            'SELECT date, asset, "trigger", "window", loss_before, loss_after '
            "FROM adaptations ORDER BY date, asset, seq",
        )
    finally:
        conn.close()
    out = clear_run_folder(Path(out))
    equity = account.set_index(pd.DatetimeIndex(pd.to_datetime(account["date"]), name="date"))
    # The first return is measured from the starting cash, as the backtest's TimeReturn does.
    before = pd.Series([float(meta["cash"])])
    values = pd.concat([before, equity["equity"].reset_index(drop=True)], ignore_index=True)
    returns = pd.DataFrame(
        {STRATEGY: (values / values.shift(1) - 1.0).iloc[1:].to_numpy()}, index=equity.index
    )
    returns.to_csv(out / "returns.csv", date_format="%Y-%m-%d")
    for name, frame in (("positions", targets), ("trades", trades), ("adaptations", events)):
        frame.insert(1, "strategy", STRATEGY)
        frame.to_csv(out / f"{name}.csv", index=False)
    config = parse_config(json.loads(meta["config_json"]), f"{state_dir} (stored config)")
    dump_config(config, out / "config.toml")
    study = {
        "title": f"{config.title} (paper run {meta['run_id']})",
        "periods_per_year": PERIODS_PER_YEAR,
        "split": meta["start"],
        "seed": config.seed,
        "n_trials": {STRATEGY: 1},
        "train_best": {},
        "regime_changes": [],
    }
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    return out


def build_paper_report(state_dir: Path, out: Path, console: Console | None = None) -> dict:
    """Export the run folder and build the QuantStats tear sheet and metrics in it."""
    from metabt.reports.build import build_reports

    return build_reports(export_run_folder(state_dir, out), console=console)

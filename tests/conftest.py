"""Shared fixtures and helpers: small data (real or seeded), a CLI runner, no-look-ahead checks.

The plain functions are imported by the test modules (``from conftest import random_frames``):
pytest puts this folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg", force=True)

from metabt.backtests.cli import main
from metabt.backtests.paper.ledger import DB_FILE, read_rows
from metabt.feeds.loaders import load_sample


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def invoke_cli(*args: object) -> CliResult:
    """Run ``metabt ARGS`` in-process through the real entry point (error handling included).

    Usable where a fixture is not (module-scoped fixtures); tests take the ``run_cli`` fixture.
    """
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, sys.argv = sys.argv, ["metabt", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def run_cli() -> Callable[..., CliResult]:
    """``metabt ARGS`` in-process: ``run_cli("backtest", path).code / .out / .err``."""
    return invoke_cli


@pytest.fixture(scope="session")
def spy() -> pd.DataFrame:
    """Real SPY daily bars, 2004-2009 (includes the 2008 crash)."""
    frame = load_sample(["SPY"])["SPY"]
    return frame.loc["2004":"2009"]


def one_line(result: CliResult, code: int = 2) -> str:
    """The single stderr line of a refused command (asserting there is exactly one)."""
    assert result.code == code, (result.code, result.err, result.out[-500:])
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    return lines[0]


def paper_ledger(state: Path) -> dict[str, list[tuple]]:
    """Every row a paper run keeps in its state folder, except wall-clock timings."""
    conn = sqlite3.connect(state / DB_FILE)
    try:
        rows = read_rows(conn)
        rows["bars"] = conn.execute("SELECT * FROM bars ORDER BY date, asset").fetchall()
        rows["processed"] = conn.execute(
            "SELECT date, bar_no, n_orders, n_fills FROM processed ORDER BY date"
        ).fetchall()
        return rows
    finally:
        conn.close()


# -- seeded bars ----------------------------------------------------------------------------------


def random_frames(
    n_assets: int = 3,
    n_bars: int = 300,
    seed: int = 0,
    start: str = "2015-01-01",
    prefix: str = "A",
) -> dict[str, pd.DataFrame]:
    """Seeded random walks ``{prefix}0, {prefix}1, ...`` with overnight gaps.

    High/low touch the open or close on about half the bars, so a slipped fill can lie outside
    the bar and must still pay full slippage.
    """
    rng = np.random.default_rng(seed)
    idx = pd.bdate_range(start, periods=n_bars, name="date")
    frames = {}
    for i in range(n_assets):
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, n_bars)))
        prev = np.concatenate([[100.0], close[:-1]])
        open_ = prev * np.exp(rng.normal(0.0, 0.004, n_bars))
        extra = rng.uniform(0.0, 0.01, n_bars) * (rng.random(n_bars) < 0.5)
        frames[f"{prefix}{i}"] = pd.DataFrame(
            {
                "open": open_,
                "high": np.maximum(open_, close) * (1 + extra),
                "low": np.minimum(open_, close) * (1 - extra),
                "close": close,
                "volume": rng.uniform(1e5, 1e6, n_bars),
            },
            index=idx,
        )
    return frames


# -- no look-ahead: the future cut off or made absurd must not change anything up to t -------------


def cut_at(frames: dict[str, pd.DataFrame], t: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Every frame truncated after bar ``t``."""
    return {symbol: frame.loc[:t] for symbol, frame in frames.items()}


def absurd_after(frames: dict[str, pd.DataFrame], t: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Every frame with prices after ``t`` replaced by huge, rising values."""
    out = {}
    for symbol, frame in frames.items():
        g = frame.copy()
        after = g.index > t
        g.loc[after, ["open", "high", "low", "close"]] = 1e6 * (1 + np.arange(after.sum()))[:, None]
        out[symbol] = g
    return out


def upto(result, t: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.Series]:
    """A backtest result's weights, trades, events and returns dated up to ``t``."""
    w = result.weights[result.weights["date"] <= t].reset_index(drop=True)
    tr = result.trades[result.trades["date"] <= t].reset_index(drop=True)
    ev = pd.DataFrame(result.events)
    ev = ev[pd.to_datetime(ev["date"]) <= t].reset_index(drop=True) if len(ev) else ev
    return w, tr, ev, result.returns.loc[:t]


def assert_same_upto(result, expected, t: pd.Timestamp) -> None:
    """Weights, trades, events and returns of two backtests agree on every bar up to ``t``."""
    got, want = upto(result, t), upto(expected, t)
    for a, b in zip(got[:3], want[:3]):
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_series_equal(got[3], want[3])


def paper_checkpoint(config_path: Path, start: object, out: Path) -> Path:
    """A checkpoint meta-trained on the config's bars before ``start``, saved to ``out``."""
    from metabt.backtests.config import build_specs, load_config
    from metabt.backtests.data import load_study_data
    from metabt.feeds.loaders import slice_period
    from metabt.metamodels.model_io import save_model
    from metabt.metamodels.trainer import meta_train

    config = load_config(config_path)
    specs = build_specs(config)
    frames = load_study_data(config).frames
    model = meta_train(
        slice_period(frames, config.data.start, start),
        specs.features,
        specs.task,
        specs.policy,
        specs.objective,
        specs.train,
        config.data.start,
        start,
        progress=False,
    )
    return save_model(model, out, config.model_dump(mode="json", exclude_none=True))

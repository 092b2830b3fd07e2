"""Paper trading: same orders as the backtest, crash-safe ledger, resume, lock, refusals, status."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import types
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import paper_checkpoint, paper_ledger

from metabt.backtests.config import build_specs, load_config
from metabt.backtests.data import load_study_data
from metabt.backtests.paper.ledger import DB_FILE, PaperError, StateLock, integrity_ok
from metabt.backtests.paper.loop import CRASH_ENV, PaperLoop
from metabt.backtests.paper.session import PaperOptions, open_session
from metabt.backtests.paper.sources import ReplaySource, YahooSource
from metabt.backtests.paper.status import export_run_folder
from metabt.backtests.runner import meta_runs
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.loaders import slice_period
from metabt.metamodels.model_io import load_model, save_model
from metabt.strategies.engine import run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

ROOT = Path(__file__).resolve().parents[1]
START = pd.Timestamp("2008-03-18")  # 9 paper bars up to the config's end, 2008-03-31
CONFIG = """
title = "paper test"
study = "basket"
seed = 1

[data]
source = "sample"
symbols = ["SPY", "TLT", "XLE"]
start = "2005-03-01"
split = "2008-01-02"
end = "2008-03-31"

[meta]
meta_steps = 4
tasks_per_step = 8
eval_every = 2
val_tasks = 16

[strategy]
warmup_bars = 280  # more than the 253-bar feature warm-up
# every change of target is ordered, so the paper and backtest orders have something to agree on
rebalance_threshold = 0.0
"""


def _options(paper, state: Path, **kw) -> PaperOptions:
    return PaperOptions(
        config_path=paper.config, state_dir=state, model=paper.ckpt, start=START.date(), **kw
    )


def _run(options: PaperOptions) -> int:
    session = open_session(options, progress=False)
    try:
        return PaperLoop(session).run(max_bars=options.max_bars)
    finally:
        session.close()


def _cli(paper, state: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "metabt",
        "paper",
        "run",
        str(paper.config),
        "--state",
        str(state),
        "--model",
        str(paper.ckpt),
        "--start",
        str(START.date()),
        *extra,
    ]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """A small config, a checkpoint trained before START, an uninterrupted paper run, a backtest."""
    root = tmp_path_factory.mktemp("paper")
    config_path = root / "paper.toml"
    config_path.write_text(CONFIG)
    ckpt = paper_checkpoint(config_path, START, root / "ckpt")
    paper = types.SimpleNamespace(config=config_path, ckpt=ckpt, root=root)
    paper.state = root / "baseline"
    assert _run(_options(paper, paper.state)) == 9
    paper.ledger = paper_ledger(paper.state)

    # What `metabt backtest` runs for meta_adaptive, with the paper start as the split.
    config = load_config(config_path)
    specs = build_specs(config)
    frames = load_study_data(config).frames
    loaded, _ = load_model(ckpt)
    models = {"meta": [loaded], "erm": [loaded], "random": [loaded]}
    params = meta_runs(config, models, specs)["meta_adaptive"]
    first = START - pd.tseries.offsets.BDay(config.strategy.warmup_bars)
    paper.frames = slice_period(frames, first, None)
    paper.backtest = run_backtest(
        paper.frames,
        MetaAdaptiveStrategy,
        params,
        specs.costs,
        trade_start=START,
        feed_factory=lambda s, f: make_feature_feed(s, f, specs.features),
    )
    paper.costs = specs.costs
    return paper


# -- the same strategy code as the backtest ------------------------------------------------------


def test_paper_targets_orders_and_fills_match_the_backtest(paper):
    rows, bt_res = paper.ledger, paper.backtest
    weights = {(d.date().isoformat(), a): w for d, a, w in bt_res.weights.itertuples(index=False)}
    assert {(d, a): w for d, a, w in rows["targets"]} == weights
    assert len(rows["orders"]) > 10 and len(rows["fills"]) > 10
    # Each order carries the backtest's target weight for that asset and day...
    for day, asset, _seq, _oid, _run, target, *_ in rows["orders"]:
        assert target == weights[(day, asset)]
    # ...and fills at the next open exactly as the backtest's trades do (price, size, costs).
    trades = bt_res.trades.assign(date=bt_res.trades["date"].dt.strftime("%Y-%m-%d"))
    expected = sorted(
        map(tuple, trades[["date", "asset", "size", "price", "commission"]].itertuples(index=False))
    )
    got = sorted((d, a, size, price, comm) for d, a, _f, _o, size, price, _v, comm in rows["fills"])
    assert got == expected
    # Every order but those of the last bar has filled on the next trading day.
    days = sorted({r[0] for r in rows["account"]})
    fills = {(r[3]): r for r in rows["fills"]}
    for day, _asset, _seq, oid, _run, _t, _tgt, size, _ref in rows["orders"]:
        if day != days[-1]:
            assert fills[oid][0] == days[days.index(day) + 1] and fills[oid][4] == size


def test_fills_are_next_open_plus_slippage(paper):
    slip = paper.costs.slippage_bps / 1e4
    for day, asset, _fid, _oid, size, price, _value, comm in paper.ledger["fills"]:
        opened = paper.frames[asset].loc[day, "open"]
        assert price == pytest.approx(opened * (1 + slip if size > 0 else 1 - slip), rel=1e-12)
        assert comm == pytest.approx(abs(size * price) * paper.costs.commission_bps / 1e4)


def test_equity_and_returns_match_the_backtest(paper, tmp_path):
    out = export_run_folder(paper.state, tmp_path / "run")
    returns = pd.read_csv(out / "returns.csv", index_col="date", parse_dates=True)
    pd.testing.assert_series_equal(
        returns["meta_adaptive"],
        paper.backtest.returns,
        check_names=False,
        check_freq=False,
        check_index_type=False,
        rtol=1e-12,
    )
    cash, equity = paper.ledger["account"][-1][1:]
    book = sum(v for d, *_, v in paper.ledger["positions"] if d == paper.ledger["account"][-1][0])
    assert equity == pytest.approx(cash + book, rel=1e-12)


# -- crash safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "point,bar", [("fetched", 1), ("orders", 4), ("fills", 2), ("committed", 5)]
)
def test_sigkill_at_any_point_then_restart_gives_the_uninterrupted_ledger(
    paper, tmp_path, point, bar
):
    processed = paper.ledger["processed"]
    if point in ("orders", "fills"):  # the killed bar really had something to lose
        assert processed[bar - 1][2] > 0 and processed[bar - 1][3] > 0
    state = tmp_path / "state"
    crashed = _cli(paper, state, env={CRASH_ENV: f"{point}:{bar}"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    conn = sqlite3.connect(state / DB_FILE)
    kept = conn.execute("SELECT count(*) FROM processed").fetchone()[0]
    assert integrity_ok(conn)
    conn.close()
    assert kept == (bar if point == "committed" else bar - 1)

    resumed = _cli(paper, state)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} bars already traded" in resumed.stdout
    assert paper_ledger(state) == paper.ledger
    conn = sqlite3.connect(state / DB_FILE)
    assert integrity_ok(conn)
    conn.close()


def test_reprocessing_bars_inserts_nothing(paper, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(paper.state, state)
    session = open_session(_options(paper, state), progress=False)
    try:
        loop = PaperLoop(session)
        bars = ReplaySource(session.config).new_bars(None, START)
        for bar in bars:
            assert loop.process_bar(bar).inserted == 0
        changed = next(ReplaySource(session.config).new_bars(None, START))
        asset = next(iter(changed.rows))
        changed.rows[asset] = tuple(v * 1.01 for v in changed.rows[asset])
        with pytest.raises(PaperError, match="differs from the one already traded"):
            loop.process_bar(changed)
    finally:
        session.close()
    assert paper_ledger(state) == paper.ledger


def test_a_conflicting_row_for_the_next_bar_is_refused_and_nothing_is_written(paper, tmp_path):
    state = tmp_path / "state"
    assert _run(_options(paper, state, max_bars=3)) == 3
    session = open_session(_options(paper, state), progress=False)
    try:
        loop = PaperLoop(session)
        bar = next(session.source.new_bars(session.last_bar, session.start))
        day = bar.date.date().isoformat()
        asset, weight = next((a, w) for d, a, w in paper.ledger["targets"] if d == day)
        # Another writer (other code, other data) left a target for this bar that the
        # strategy does not decide; INSERT OR IGNORE alone would silently keep it.
        session.conn.execute(
            "INSERT INTO targets (date, asset, weight) VALUES (?, ?, ?)", (day, asset, weight + 0.5)
        )
        before = paper_ledger(state)
        with pytest.raises(PaperError, match="already holds other rows for this bar"):
            loop.process_bar(bar)
        assert session.last_bar < bar.date and session.n_processed == 3
    finally:
        session.close()
    after = paper_ledger(state)
    assert after == before
    assert day not in {row[0] for row in after["processed"]}
    assert day not in {row[0] for row in after["bars"]}


def test_resume_refuses_a_ledger_the_strategy_does_not_reproduce(paper, tmp_path):
    state = tmp_path / "state"
    shutil.copytree(paper.state, state)
    conn = sqlite3.connect(state / DB_FILE)
    conn.execute(
        "UPDATE positions SET size = size + 1 WHERE rowid = (SELECT max(rowid) FROM positions)"
    )
    conn.commit()
    conn.close()
    with pytest.raises(PaperError, match="does not reproduce the stored ledger"):
        open_session(_options(paper, state), progress=False)


# -- one writer, intact checkpoint ----------------------------------------------------------------


def test_second_writer_is_refused_with_a_clear_message(paper, tmp_path, run_cli):
    state = tmp_path / "state"
    with StateLock(state):
        result = run_cli(
            "paper",
            "run",
            paper.config,
            "--state",
            state,
            "--model",
            paper.ckpt,
            "--start",
            str(START.date()),
        )
    assert result.code == 2
    assert "in use by another `metabt paper run`" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (state / DB_FILE).exists()


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    script = (
        "import time; from metabt.backtests.paper.ledger import StateLock; "
        f"StateLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PaperError, match=f"pid {holder.pid}"):
            StateLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    StateLock(tmp_path).acquire().release()


def _tamper(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))


def test_corrupt_checkpoint_is_refused_and_nothing_is_traded(paper, tmp_path, run_cli):
    bad = tmp_path / "bad"
    shutil.copytree(paper.ckpt, bad)
    _tamper(bad)
    state = tmp_path / "state"
    result = run_cli(
        "paper", "run", paper.config, "--state", state, "--model", bad, "--start", str(START.date())
    )
    assert result.code == 2 and "sha256" in result.err
    conn = sqlite3.connect(state / DB_FILE)
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    conn.close()


def test_checkpoint_changed_under_a_running_state_is_refused(paper, tmp_path, run_cli):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(paper.ckpt, ckpt)
    state = tmp_path / "state"
    args = (
        "paper",
        "run",
        paper.config,
        "--state",
        state,
        "--model",
        ckpt,
        "--start",
        str(START.date()),
    )
    assert run_cli(*args, "--max-bars", "2").code == 0
    before = paper_ledger(state)
    # A valid checkpoint with other weights: it loads fine, but it is not what was traded.
    model, _ = load_model(ckpt)
    other = {k: v + 0.01 for k, v in model.params.items()}
    save_model(dataclasses.replace(model, params=other), ckpt, {})
    result = run_cli(*args)
    assert result.code == 2 and "changed since this paper state started" in result.err
    _tamper(ckpt)
    assert run_cli(*args).code == 2
    assert paper_ledger(state) == before


# -- status, report, sources, bad input --------------------------------------------------------


def test_status_prints_the_last_bar_and_equity(paper, run_cli):
    result = run_cli("paper", "status", "--state", paper.state)
    assert result.code == 0, result.err
    last_day, _cash, equity = paper.ledger["account"][-1]
    assert last_day == "2008-03-31"
    assert f"{equity:,.2f}" in result.out and last_day in result.out
    final = 1e6 * float(np.prod(1 + paper.backtest.returns.to_numpy()))
    assert equity == pytest.approx(final, rel=1e-9)


def test_report_writes_the_backtest_tear_sheet(paper, tmp_path, run_cli):
    out = tmp_path / "report"
    result = run_cli("paper", "report", "--state", paper.state, "--out", out)
    assert result.code == 0, result.err
    for name in (
        "tearsheet.html",
        "metrics.json",
        "returns.csv",
        "trades.csv",
        "positions.csv",
        "adaptations.csv",
        "study.json",
        "config.toml",
    ):
        assert (out / name).is_file(), name


def test_without_a_model_it_trains_only_on_bars_before_the_start(paper, tmp_path):
    state = tmp_path / "state"
    options = PaperOptions(
        config_path=paper.config, state_dir=state, start=START.date(), max_bars=1
    )
    assert _run(options) == 1
    _, last_bar = load_model(state / "model")
    assert last_bar < START


def test_yfinance_source_never_releases_a_bar_that_has_not_closed(paper, monkeypatch, tmp_path):
    today = date(2024, 3, 6)

    def download(symbol, **kw):
        # Like Yahoo: the answer runs past the requested end, today's half-formed bar included.
        index = pd.bdate_range(kw["start"], "2024-03-08", name="Date")
        close = 100.0 + np.arange(len(index), dtype=float)
        return pd.DataFrame(
            {
                "Open": close,
                "High": close + 1,
                "Low": close - 1,
                "Close": close,
                "Adj Close": close,
                "Volume": 1000.0,
            },
            index=index,
        )

    monkeypatch.setitem(sys.modules, "yfinance", types.SimpleNamespace(download=download))
    config = load_config(paper.config)
    closed = list(pd.bdate_range("2024-02-29", "2024-03-05"))
    source = YahooSource(config, tmp_path / "polls", today=lambda: today, sleep=lambda s: None)
    bars = source.poll(pd.Timestamp("2024-02-28"), pd.Timestamp("2024-01-02"))
    assert [b.date for b in bars] == closed
    assert set(bars[0].rows) == {"SPY", "TLT", "XLE"}

    # Even a download function that returns today's bar cannot get it acted on.
    def raw(symbols, start, end, **kw):
        return {s: download(s, start=str(start)).rename_axis("Date") for s in symbols}

    source = YahooSource(
        config, tmp_path / "polls", download=raw, today=lambda: today, sleep=lambda s: None
    )
    assert [
        b.date for b in source.poll(pd.Timestamp("2024-02-28"), pd.Timestamp("2024-01-02"))
    ] == closed


def test_bad_input_is_one_line_and_exit_2(paper, tmp_path, run_cli):
    cases = [
        (("paper", "run", tmp_path / "missing.toml", "--state", tmp_path / "s"), "no such config"),
        (
            ("paper", "run", paper.config, "--state", tmp_path / "s", "--source", "bloomberg"),
            "--source",
        ),
        (
            ("paper", "run", paper.config, "--state", tmp_path / "s", "--start", "18/03/2008"),
            "YYYY-MM-DD",
        ),
        (("paper", "status", "--state", tmp_path / "nothing"), "no paper state"),
        (
            ("paper", "run", paper.config, "--state", paper.state, "--start", "2008-03-19"),
            "trades from 2008-03-18",
        ),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.code == 2, args
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err

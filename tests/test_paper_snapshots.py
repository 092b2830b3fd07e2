"""Paper snapshots: bounded work per bar, resume == uninterrupted, a bad snapshot is refused."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import types

import numpy as np
import pandas as pd
import pytest
from conftest import paper_checkpoint, paper_ledger
from safetensors.numpy import save as save_arrays
from test_paper import CONFIG, START, _options

from metabt.backtests.paper import carry
from metabt.backtests.paper.feature_state import PRICES, TRAIL, FeatureState
from metabt.backtests.paper.ledger import DB_FILE, PaperError
from metabt.backtests.paper.loop import PaperLoop
from metabt.backtests.paper.session import open_session
from metabt.backtests.paper.simulate import simulate
from metabt.backtests.paper.snapshot import FORMAT, decode, encode
from metabt.backtests.paper.verify import state_difference
from metabt.feeds.features import FeatureSpec, compute_features, ewm_means, trailing_vol
from metabt.feeds.loaders import load_sample

N_BARS = 9  # the config's paper bars, 2008-03-18 .. 2008-03-31


def _run(options, **kw) -> list:
    session = open_session(options, progress=False)
    outcomes: list = []
    try:
        PaperLoop(session).run(max_bars=options.max_bars, on_bar=outcomes.append, **kw)
    finally:
        session.close()
    return outcomes


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """A checkpoint trained before START and an uninterrupted paper run with its outcomes."""
    root = tmp_path_factory.mktemp("snapshots")
    config_path = root / "paper.toml"
    config_path.write_text(CONFIG)
    ckpt = paper_checkpoint(config_path, START, root / "ckpt")
    paper = types.SimpleNamespace(config=config_path, ckpt=ckpt, root=root)
    paper.state = root / "uninterrupted"
    paper.outcomes = _run(_options(paper, paper.state, verify_bars=2))
    assert len(paper.outcomes) == N_BARS
    paper.ledger = paper_ledger(paper.state)
    return paper


def _snapshots(state) -> dict[str, bytes]:
    conn = sqlite3.connect(state / DB_FILE)
    try:
        return dict(conn.execute("SELECT date, blob FROM snapshots").fetchall())
    finally:
        conn.close()


def _replace_snapshot(state, day: str, blob: bytes) -> None:
    conn = sqlite3.connect(state / DB_FILE)
    conn.execute("UPDATE snapshots SET blob = ? WHERE date = ?", (blob, day))
    conn.commit()
    conn.close()


# -- bounded work ------------------------------------------------------------------------------


def test_work_per_bar_does_not_grow_with_the_history(paper):
    fed = [o.bars_fed for o in paper.outcomes]
    n_assets = 3
    # The first bar replays the warm-up once; every later bar feeds Backtrader the two
    # bars each asset's lags need and the new one, whatever the length of the history.
    assert fed[0] > 250 * n_assets
    assert fed[1:] == [3 * n_assets] * (N_BARS - 1)


def test_resume_re_derives_only_the_last_bars(paper, tmp_path, monkeypatch):
    state = tmp_path / "state"
    shutil.copytree(paper.state, state)

    def no_full_replay(*args, **kw):
        raise AssertionError("the whole history was replayed")

    monkeypatch.setattr(carry, "simulate", no_full_replay)
    session = open_session(_options(paper, state, verify_bars=2), progress=False)
    session.close()


def test_each_snapshot_is_the_state_of_an_uninterrupted_backtrader_run(paper, tmp_path):
    """Restore + one bar leaves the strategy, broker and features exactly where a run
    over every bar leaves them: detector, window, weights, orders, cash, all of it."""
    state = tmp_path / "state"
    shutil.copytree(paper.state, state)
    stored = _snapshots(state)
    assert len(stored) == 3  # --verify-bars 2 keeps 3
    session = open_session(_options(paper, state, verify_bars=2), progress=False)
    try:
        days = tuple(pd.Timestamp(d) for d in stored)
        replay = simulate(
            session.frames,
            session.params,
            session.costs,
            session.features,
            session.start,
            session.run_id,
            session.cash,
            capture_dates=days,
        )
        for day in stored:
            upto = carry.bars_upto(session.frames, pd.Timestamp(day))
            uninterrupted = carry.sealed(session, replay, upto, day)
            assert state_difference(uninterrupted, stored[day]) is None, day
    finally:
        session.close()


# -- resume == uninterrupted -------------------------------------------------------------------


def test_resuming_from_snapshots_gives_the_uninterrupted_ledger(paper, tmp_path):
    state = tmp_path / "state"
    for chunk in (1, 3, 2, 3):  # every resume after the first starts from a snapshot
        assert len(_run(_options(paper, state, max_bars=chunk, verify_bars=2))) == chunk
    assert paper_ledger(state) == paper.ledger
    resumed, uninterrupted = _snapshots(state), _snapshots(paper.state)
    assert sorted(resumed) == sorted(uninterrupted)
    for day, blob in resumed.items():
        assert state_difference(uninterrupted[day], blob) is None, day


# -- refusals ------------------------------------------------------------------------------------


def _edited(blob: bytes, edit) -> bytes:
    state, arrays = decode(blob)
    edit(state, arrays)
    return encode(state, arrays)


def _more_cash(state, arrays) -> None:
    state["broker"]["cash"] += 1000.0


def _detector_moved(state, arrays) -> None:
    name = "detectors._post"  # every asset's AR(1) BOCPD run posteriors
    arrays[name] = arrays[name] + 0.5


def _field_missing(state, arrays) -> None:
    del next(iter(state["strategy"]["assets"].values()))["regime_start"]


def _wrong_shape(state, arrays) -> None:
    name = next(k for k in arrays if k.endswith(".support_x"))
    arrays[name] = np.zeros((3, 2))


@pytest.mark.parametrize(
    "which,edit,needles",
    [
        ("last", _more_cash, ["state.broker.cash"]),
        # A changed detector either changes the next bars' rows or the snapshots after them.
        ("base", _detector_moved, ["does not reproduce", "differs from the re-derived state"]),
        ("base", _wrong_shape, ["support_x"]),
        ("base", _field_missing, ["state unreadable", "regime_start"]),
    ],
)
def test_a_tampered_snapshot_is_refused_and_nothing_is_traded(
    paper, tmp_path, which, edit, needles
):
    state = tmp_path / "state"
    shutil.copytree(paper.state, state)
    days = sorted(_snapshots(state))
    day = days[-1] if which == "last" else days[0]
    _replace_snapshot(state, day, _edited(_snapshots(state)[day], edit))
    before = paper_ledger(state)
    with pytest.raises(PaperError) as err:
        open_session(_options(paper, state, verify_bars=2), progress=False)
    message = str(err.value)
    assert any(n in message for n in needles) and "metabt paper rebuild" in message, message
    assert re.search(r"\d{4}-\d{2}-\d{2}", message) and "\n" not in message
    assert paper_ledger(state) == before


def test_a_snapshot_of_an_unknown_version_is_refused_in_one_line(paper, tmp_path, run_cli):
    state = tmp_path / "state"
    shutil.copytree(paper.state, state)
    day = max(_snapshots(state))
    meta = {"format": FORMAT, "version": "99", "state": json.dumps({})}
    _replace_snapshot(state, day, save_arrays({"x": np.zeros(1)}, metadata=meta))
    before = paper_ledger(state)
    result = run_cli(
        "paper", "run", paper.config, "--state", state, "--model", paper.ckpt,
        "--start", str(START.date()), "--verify-bars", "2",
    )  # fmt: skip
    assert result.code == 2
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.err, result.err
    assert day in line and "version '99'" in line and "metabt paper rebuild" in line, line
    assert str(state) in line
    assert paper_ledger(state) == before


# -- features: carried EWMs + a bounded window ---------------------------------------------------


def test_carried_ewms_are_pandas_to_the_bit():
    spec = FeatureSpec()
    for frame in load_sample(["SPY", "XLE"]).values():
        expected = ewm_means(frame, spec)
        state = FeatureState(spec)
        got: dict[str, list[float]] = {k: [] for k in expected}
        for close in frame["close"].to_numpy(dtype=float).tolist():
            state.push(close)
            for k in got:
                got[k].append(state.values[k])
        for k, series in expected.items():
            np.testing.assert_array_equal(np.array(got[k]), series.to_numpy(), err_msg=k)


@pytest.mark.parametrize(
    "spec", [FeatureSpec(), FeatureSpec(bar_shape=False, horizons=(), macd=())], ids=["all", "lean"]
)
def test_new_bar_features_equal_the_backtests(spec):
    frame = load_sample(["SPY"])["SPY"]
    full = compute_features(frame, spec).to_numpy()
    vol = trailing_vol(frame, spec).to_numpy()

    def rows(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        state = FeatureState.from_history(frame.iloc[:first], spec)
        feats, vols = [], []
        for i in range(first, first + n):
            state.push(float(frame["close"].iloc[i]))
            trail = frame.iloc[max(0, i - TRAIL + 1) : i + 1]
            f, v = state.row(trail[list(PRICES)].to_numpy(), lambda t=trail: t.index)
            feats.append(f)
            vols.append(v)
        return np.array(feats), np.array(vols)

    # Within the window the new bar's features are the backtest's, to the bit...
    feats, vols = rows(300, 5)
    np.testing.assert_array_equal(feats, full[300:305])
    np.testing.assert_array_equal(vols, vol[300:305])
    # ...and after 20 years only the rolling sums' rounding differs: nil in practice,
    # while the EWMs (which remember every bar) and so the vol stay exact.
    feats, vols = rows(len(frame) - 20, 20)
    np.testing.assert_array_equal(vols, vol[-20:])
    assert np.max(np.abs(feats - full[-20:])) < 1e-10

"""End to end through the CLI: the run-folder contract, reproducibility, no leak past the split."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from conftest import invoke_cli

from metabt.backtests.config import load_config

TINY = Path(__file__).parent / "data" / "tiny_basket.toml"
CONTRACT = [
    "config.toml",
    "metrics.json",
    "returns.csv",
    "positions.csv",
    "trades.csv",
    "adaptations.csv",
    "tearsheet.html",
    "comparison.md",
    "equity.png",
    "study.json",
    "model/model.safetensors",
    "model/model.json",
    "seeds.json",
]
STRATEGIES = [
    "meta_adaptive",
    "meta_frozen",
    "meta_calendar",
    "meta_random_init",
    "erm_static",
    "buy_and_hold",
    "sma_cross",
    "momentum",
    "rsi_reversion",
    "buy_and_hold_vt",
    "tsmom_vt",
    "autocorr",
]
METRICS = [
    "sharpe",
    "sortino",
    "cagr",
    "volatility",
    "max_drawdown",
    "calmar",
    "turnover",
    "n_trades",
    "n_adaptations",
]


class _Steps(logging.Handler):
    """Keeps the steps metabt logs (what a piped run's heartbeat line names)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


STEPS = _Steps()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    logger = logging.getLogger("metabt")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(STEPS)
    try:
        result = invoke_cli("backtest", TINY, "--out", out)
    finally:
        logger.removeHandler(STEPS)
        logger.setLevel(level)
    assert result.code == 0, result.err
    return out


def test_every_stage_of_a_run_is_logged_for_the_heartbeat(run_dir):
    # A piped run prints "... still working, N s: <last logged step>": each stage must
    # log itself, or the line names a step that ended long ago.
    steps = STEPS.messages
    names = load_config(TINY).comparators.names
    expected = [
        "meta-training",
        *(f"tuning {name} on the training period" for name in names),
        "test period: 0 of",
        "writing the reports",
    ]
    at = [next((i for i, m in enumerate(steps) if m.startswith(e)), -1) for e in expected]
    assert -1 not in at and at == sorted(at), (expected, steps)
    done = [m for m in steps if m.startswith("test period:")]
    total = int(done[0].split(" of ")[1].split()[0])
    assert len(done) == total + 1 and done[-1].startswith(f"test period: {total} of {total}")


def test_run_folder_holds_every_contract_file(run_dir):
    for name in CONTRACT:
        assert (run_dir / name).is_file(), name
    returns = pd.read_csv(run_dir / "returns.csv", index_col="date", parse_dates=True)
    assert list(returns.columns) == STRATEGIES
    assert returns.index.min() >= pd.Timestamp("2008-01-02")
    assert returns.index.max() <= pd.Timestamp("2009-06-30")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == set(STRATEGIES)
    for name in STRATEGIES:
        assert set(METRICS) <= set(metrics[name]), name
    adaptations = pd.read_csv(run_dir / "adaptations.csv", parse_dates=["date"])
    assert adaptations["date"].min() >= pd.Timestamp("2008-01-02")
    assert metrics["meta_adaptive"]["n_adaptations"] == int(
        ((adaptations["strategy"] == "meta_adaptive") & (adaptations["trigger"] != "alarm")).sum()
    )
    seeds = json.loads((run_dir / "seeds.json").read_text())
    assert len(seeds["meta_adaptive"]["seeds"]) == 2
    assert metrics["meta_frozen"]["n_adaptations"] == 0


def test_metrics_match_quantstats_on_returns_csv(run_dir):
    returns = pd.read_csv(run_dir / "returns.csv", index_col="date", parse_dates=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in STRATEGIES:
        r = returns[name]
        assert metrics[name]["sharpe"] == pytest.approx(
            qs.stats.sharpe(r, periods=252), rel=1e-9, abs=1e-12
        )
        assert metrics[name]["max_drawdown"] == pytest.approx(qs.stats.max_drawdown(r), rel=1e-9)


def test_resolved_config_reproduces_the_run(run_dir, tmp_path, run_cli):
    resolved = load_config(run_dir / "config.toml")
    assert resolved == load_config(TINY)
    again = tmp_path / "again"
    result = run_cli("backtest", run_dir / "config.toml", "--out", again)
    assert result.code == 0, result.err
    assert (again / "metrics.json").read_text() == (run_dir / "metrics.json").read_text()
    pd.testing.assert_frame_equal(
        pd.read_csv(again / "positions.csv"), pd.read_csv(run_dir / "positions.csv")
    )


SHORT_END = "2008-12-31"  # the tiny study cut six months early, split unchanged


@pytest.fixture(scope="module")
def short_run_dir(tmp_path_factory) -> Path:
    """The tiny study with every bar after SHORT_END dropped."""
    out = tmp_path_factory.mktemp("runs") / "short"
    result = invoke_cli("backtest", TINY, "--end", SHORT_END, "--out", out)
    assert result.code == 0, result.err
    return out


def test_data_after_a_date_does_not_change_positions_before_it(run_dir, short_run_dir):
    full = pd.read_csv(run_dir / "positions.csv", parse_dates=["date"])
    part = pd.read_csv(short_run_dir / "positions.csv", parse_dates=["date"])
    full = full[full["date"] <= SHORT_END].reset_index(drop=True)
    assert len(part) == len(full) > 0
    pd.testing.assert_frame_equal(part, full)


def test_comparators_are_tuned_on_bars_before_the_split_only(run_dir):
    # The in-sample Sharpes in study.json pick the "best static" comparator; they must
    # be what a grid search sees on frames that end the day before the split.
    from metabt.backtests.config import build_specs
    from metabt.feeds.loaders import load_sample, slice_period
    from metabt.strategies.static import DEFAULT_GRIDS
    from metabt.strategies.tuning import tune_static

    config = load_config(TINY)
    split = pd.Timestamp(config.data.split)
    frames = slice_period(load_sample(list(config.data.symbols)), config.data.start, split)
    assert all(f.index.max() < split for f in frames.values())
    start = pd.Timestamp(config.data.start) + pd.tseries.offsets.BDay(config.strategy.warmup_bars)
    recorded = json.loads((run_dir / "study.json").read_text())["train_best"]
    assert set(recorded) == set(config.comparators.names)
    for name in config.comparators.names:
        grid = config.comparators.grids.get(name, DEFAULT_GRIDS[name])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*scored from")
            expected = tune_static(
                frames, name, grid, build_specs(config).costs, start, split, n_jobs=1
            )
        assert recorded[name] == pytest.approx(expected.best_score, rel=1e-12, abs=1e-12), name


def test_truncating_the_test_period_changes_no_tuning_result(run_dir, short_run_dir):
    def tuning(folder: Path) -> dict:
        study = json.loads((folder / "study.json").read_text())
        return {"train_best": study["train_best"], "n_trials": study["n_trials"]}

    assert tuning(short_run_dir) == tuning(run_dir)


def test_the_checkpoint_never_saw_the_test_period(run_dir):
    model = json.loads((run_dir / "model" / "model.json").read_text())
    assert model["training_period"]["end"] < "2008-01-02"
    assert model["config"]["data"]["split"] == "2008-01-02"


def test_a_later_split_trains_on_more_data(tmp_path, run_cli):
    from metabt.metamodels.model_io import load_model

    periods, weights = [], []
    for split in ("2007-06-01", "2008-01-02"):
        out = tmp_path / split
        result = run_cli("train", TINY, "--split", split, "--out", out)
        assert result.code == 0, result.err
        # The periods are printed as the dates of the first and last bar used.
        found = re.search(
            r"trained on bars (\S+) \.\. (\S+), validated on bars (\S+) \.\. (\S+)", result.out
        )
        assert found, result.out
        first, last_train, first_val, last_val = map(pd.Timestamp, found.groups())
        assert first < last_train < first_val <= last_val < pd.Timestamp(split)
        model, last_bar = load_model(out)
        assert last_bar < pd.Timestamp(split)
        periods.append(last_bar)
        weights.append(model.params["w0"].numpy())
    assert periods[0] < periods[1]
    assert not np.array_equal(weights[0], weights[1])


def test_a_checkpoint_that_saw_the_test_period_is_refused(run_dir, run_cli, tmp_path):
    result = run_cli(
        "backtest",
        TINY,
        "--split",
        "2007-06-01",
        "--model",
        run_dir / "model",
        "--out",
        tmp_path / "leak",
    )
    assert result.code == 2
    assert "seen the test period" in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["backtest", "nope.toml"], "no such config file"),
        (["backtest", str(TINY), "--symbols", "../x"], "not a valid ticker"),
        (["backtest", str(TINY), "--split", "2004-01-01"], "must be before"),
        (["backtest", str(TINY), "--data", "/nonexistent"], "no such folder"),
        (["backtest", str(TINY), "--refit-every", "sometimes"], "--refit-every"),
        (["report", "/nonexistent"], "not a folder"),
        (["backtest", str(TINY), "--start", "2007-09-01"], "training before the split"),
    ],
)
def test_bad_command_lines_give_one_clear_line(run_cli, args, needle):
    result = run_cli(*args)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.err


def test_unknown_config_key_names_it(tmp_path, run_cli):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("meta_steps", "meta_stpes"))
    result = run_cli("backtest", bad)
    assert result.code == 2
    assert "meta.meta_stpes" in result.err and "did you mean 'meta.meta_steps'" in result.err


def test_report_rebuilds_identical_metrics(run_dir, run_cli):
    before = (run_dir / "metrics.json").read_text()
    (run_dir / "metrics.json").unlink()
    result = run_cli("report", run_dir)
    assert result.code == 0, result.err
    assert (run_dir / "metrics.json").read_text() == before
    assert np.isfinite(json.loads(before)["meta_adaptive"]["sharpe"])


def test_walk_forward_retrains_on_data_before_each_step(tmp_path, run_cli):
    out = tmp_path / "wf"
    result = run_cli("backtest", TINY, "--refit-every", "6m", "--out", out)
    assert result.code == 0, result.err
    returns = pd.read_csv(out / "returns.csv", index_col="date", parse_dates=True)
    assert returns.index.is_unique and returns.index.min() >= pd.Timestamp("2008-01-02")
    refits = sorted(p.name for p in out.glob("model-*"))
    assert refits == ["model-2008-07-02", "model-2009-01-02"]
    for folder in ["model", *refits]:
        meta = json.loads((out / folder / "model.json").read_text())
        split = "2008-01-02" if folder == "model" else folder.removeprefix("model-")
        assert meta["training_period"]["end"] < split
    # every step trades the whole test period: no gap between segments
    business_days = pd.bdate_range(returns.index.min(), returns.index.max())
    assert len(returns) > 0.95 * len(business_days)


def test_prediction_stats_score_a_perfect_and_a_useless_signal(spy):
    from metabt.backtests.data import StudyData
    from metabt.backtests.study import prediction_stats
    from metabt.feeds.features import FeatureSpec, compute_labels

    spec = FeatureSpec()
    outcome = compute_labels(spy, spec).dropna()
    rng = np.random.default_rng(0)
    rows = []
    for date, y in outcome.items():
        rows.append({"date": date, "strategy": "perfect", "asset": "SPY", "weight": 0.5 * y})
        rows.append(
            {"date": date, "strategy": "coin", "asset": "SPY", "weight": rng.choice([-0.5, 0.5])}
        )
    stats = prediction_stats(StudyData({"SPY": spy}, None, "test"), pd.DataFrame(rows), spec)
    assert stats["perfect"]["direction_accuracy"] == pytest.approx(1.0)
    assert stats["perfect"]["ic_time_series"] == pytest.approx(1.0)
    assert abs(stats["coin"]["direction_accuracy"] - 0.5) < 0.05
    assert abs(stats["coin"]["ic_time_series"]) < 0.07


def test_demo_runs_offline_end_to_end(tmp_path, run_cli, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    out = tmp_path / "demo"
    # The whole demo config, lighter: two meta-training seeds, shorter meta-training and two
    # comparators (the release check in .ci/run runs the full `metabt demo` from the wheel).
    result = run_cli(
        "demo",
        "--out",
        out,
        "--set",
        "ensemble.seeds=2",
        "--set",
        "meta.meta_steps=150",
        "--set",
        'comparators.names=["sma_cross", "buy_and_hold_vt"]',
    )
    assert result.code == 0, result.err
    assert f"tear sheet: {out / 'tearsheet.html'}" in result.out
    for name in CONTRACT:
        assert (out / name).is_file(), name
    verdict = (out / "comparison.md").read_text()
    assert (
        ("meta_adaptive beat" in verdict)
        or ("meta_adaptive lost to" in verdict)
        or ("meta_adaptive was level with" in verdict)
    )

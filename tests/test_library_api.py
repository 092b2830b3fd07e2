"""metabt as a library: the public API, the in-sample guard, optstrategy, the README's script.

A Backtrader user imports ``metabt``, loads a checkpoint, adds feeds, the strategy
and analyzers. These tests run exactly that, on a small checkpoint trained here
on the bundled sample (bars before 2008 only).
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

import metabt
from metabt.backtests.config import (
    DetectorConfig,
    StrategyConfig,
    build_specs,
    load_config,
    tomllib,
)
from metabt.backtests.data import load_study_data
from metabt.backtests.training import train_meta
from metabt.feeds.loaders import load_sample, sample_data_dir
from metabt.metamodels.model_io import save_model

ROOT = Path(__file__).resolve().parents[1]
SPLIT = pd.Timestamp("2008-01-02")
CONFIG = f"""
title = "library test"
study = "basket"
seed = 1

[data]
source = "sample"
symbols = ["SPY", "TLT", "XLE"]
start = "2005-03-01"
split = "{SPLIT.date()}"

[meta]
meta_steps = 4
tasks_per_step = 8
eval_every = 2
val_tasks = 16
"""
# Two years of feature warm-up, then some test bars: quick, and long enough to adapt.
FIRST, LAST = "2007-01-01", "2008-12-31"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint folder trained (and validated) on bars before SPLIT only."""
    root = tmp_path_factory.mktemp("library")
    path = root / "study.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    specs = build_specs(config)
    model = train_meta(load_study_data(config).frames, config, specs, SPLIT, progress=False)
    return save_model(model, root / "model", config.model_dump(mode="json", exclude_none=True))


def _cerebro(policy: object, maxcpus: int = 1) -> bt.Cerebro:
    cerebro = bt.Cerebro(maxcpus=maxcpus)
    for symbol, frame in load_sample(["SPY", "TLT"]).items():
        cerebro.adddata(metabt.feature_feed(frame.loc[FIRST:LAST], policy, name=symbol))
    cerebro.broker.setcommission(commission=0.0005)
    cerebro.addanalyzer(metabt.AdaptationAnalyzer, _name="adaptation")
    return cerebro


def _run(checkpoint: Path, trade_start: str, **params: object) -> dict:
    policy = metabt.load_policy(checkpoint)
    cerebro = _cerebro(policy)
    cerebro.addstrategy(
        metabt.MetaAdaptiveStrategy, policy=policy, trade_start=trade_start, **params
    )
    (strategy,) = cerebro.run()
    return strategy.analyzers.adaptation.get_analysis()


def test_import_metabt_loads_neither_torch_nor_backtrader():
    code = "import sys, metabt; print(sorted({'torch', 'backtrader'} & set(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_command_line_refuses_a_bad_key_without_loading_torch_or_quantstats():
    # A typo in --set should be named at once, not after seconds of importing the learners.
    config = ROOT / "backtests" / "configs" / "basket.toml"
    code = (
        "import sys\n"
        "from metabt.backtests.cli import main\n"
        f"sys.argv = ['metabt', 'backtest', {str(config)!r}, '--set', 'strategy.min_windw=3']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, sorted({'torch', 'quantstats'} & set(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert "did you mean 'strategy.min_window'?" in out.stderr


def test_load_policy_carries_its_features_and_training_period(checkpoint):
    policy = metabt.load_policy(checkpoint)
    specs = build_specs(load_config(checkpoint.parent / "study.toml"))
    assert policy.feature_spec == specs.features
    assert policy.feature_names == specs.features.names
    # Training and validation used bars before the split: the last one is the day before.
    assert policy.training_period[0] == pd.Timestamp("2005-03-01")
    assert policy.trained_until == SPLIT - pd.Timedelta(days=1)


def test_in_sample_trading_is_refused_naming_both_dates(checkpoint):
    with pytest.raises(metabt.InSampleError) as err:
        _run(checkpoint, trade_start="2007-10-01")
    message = str(err.value)
    assert "2008-01-01" in message and "2007-10-01" in message
    assert "allow_in_sample=True" in message


def test_allow_in_sample_runs_and_the_analyzer_marks_it(checkpoint):
    got = _run(checkpoint, trade_start="2007-10-01", allow_in_sample=True)
    assert got["in_sample"] is True
    assert got["first_traded"] == dt.date(2007, 10, 1)
    assert got["trained_until"] == dt.date(2008, 1, 1)


def test_out_of_sample_run_reports_its_adaptations_from_the_first_traded_bar(checkpoint):
    got = _run(checkpoint, trade_start=str(SPLIT.date()))
    assert got["in_sample"] is False and got["first_traded"] == SPLIT.date()
    events = got["events"]
    adaptations = [e for e in events if e["trigger"] != "alarm"]
    assert got["n_adaptations"] == len(adaptations) > 0
    assert all(e["date"] >= SPLIT.date() for e in events)  # warm-up events are not the run's
    assert {e["asset"] for e in adaptations} == {"SPY", "TLT"}
    for e in adaptations:
        assert e["trigger"] == "regime" and 20 <= e["window"] <= 120
        assert e["start"] < e["date"] and e["loss_before"] == e["loss_before"]  # not NaN


def test_feature_feed_reads_a_backtrader_feed_like_its_dataframe(checkpoint):
    policy_spec = metabt.load_policy(checkpoint).feature_spec
    frame = load_sample(["SPY"])["SPY"].loc[FIRST:LAST]
    lines = {}
    for kind, data in (("frame", frame), ("feed", bt.feeds.PandasData(dataname=frame))):
        cerebro = bt.Cerebro()
        cerebro.adddata(metabt.feature_feed(data, policy_spec, name="SPY"))
        cerebro.addstrategy(bt.Strategy)
        (strategy,) = cerebro.run()
        feed = strategy.datas[0]
        lines[kind] = {n: list(getattr(feed.lines, n).array) for n in ("close", "mom_21", "vol")}
    assert len(lines["frame"]["close"]) == len(frame)
    for name, values in lines["frame"].items():
        np.testing.assert_allclose(lines["feed"][name], values, rtol=1e-12, err_msg=name)
    bad = frame.copy()
    bad.iloc[5, bad.columns.get_loc("high")] = -1.0
    with pytest.raises(metabt.DataError, match=r"SPY.*row 5 \(2007-01-10\): High is -1"):
        metabt.feature_feed(bad, policy_spec, name="SPY")


@pytest.mark.parametrize("as_path", [False, True], ids=["policy", "checkpoint path"])
def test_optstrategy_over_two_params_in_two_processes_returns_four_results(checkpoint, as_path):
    policy = metabt.load_policy(checkpoint)
    cerebro = _cerebro(policy, maxcpus=2)
    cerebro.optstrategy(
        metabt.MetaAdaptiveStrategy,
        policy=[str(checkpoint) if as_path else policy],
        trade_start=[str(SPLIT.date())],
        min_window=[20, 40],
        readapt_every=[5, 10],
    )
    results = cerebro.run()
    assert len(results) == 4
    combos = {(r[0].p.min_window, r[0].p.readapt_every) for r in results}
    assert combos == {(20, 5), (20, 10), (40, 5), (40, 10)}
    counts = {}
    for (run,) in results:
        got = run.analyzers.adaptation.get_analysis()
        windows = [e["window"] for e in got["events"] if e["trigger"] != "alarm"]
        assert windows and min(windows) >= run.p.min_window  # each ran its own params
        counts[(run.p.min_window, run.p.readapt_every)] = got["n_adaptations"]
    # Re-adapting every 10 bars adapts about half as often as every 5.
    for mw in (20, 40):
        assert counts[(mw, 10)] < counts[(mw, 5)]


def _readme_library_example() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    found = [b for b in blocks if "metabt.AdaptationAnalyzer" in b and "cerebro.run()" in b]
    assert len(found) == 1, "README must hold one library example using AdaptationAnalyzer"
    return found[0]


def test_readme_library_example_runs_outside_the_repository_next_to_a_users_strategies_py(
    checkpoint, tmp_path
):
    code = _readme_library_example()
    assert len(code.strip().splitlines()) <= 20
    # The user's own files: strategies.py (which must not shadow metabt's), CSVs, a checkpoint.
    (tmp_path / "strategies.py").write_text("MINE = 'the user strategies module'\n")
    shutil.copytree(checkpoint, tmp_path / "runs" / "demo" / "model")
    symbols = re.findall(r'"([A-Z]{2,4})"', code.split("for symbol in", 1)[1].split("\n")[0])
    assert symbols, "the example should loop over CSVs of named symbols"
    (tmp_path / "data").mkdir()
    for symbol in symbols:
        lines = (sample_data_dir() / f"{symbol}.csv").read_text().splitlines()
        keep = [x for x in lines[1:] if "2010-01-01" <= x[:10] <= "2013-06-30"]
        (tmp_path / "data" / f"{symbol}.csv").write_text("\n".join(lines[:1] + keep) + "\n")
    (tmp_path / "example.py").write_text(
        code + "\nimport strategies\n\nprint(strategies.MINE)\nprint(adaptation['events'][0])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "the user strategies module" in text
    assert re.search(r"Sharpe -?\d", text) and re.search(r"max drawdown % \d", text), text
    assert re.search(r"[1-9]\d* adaptations; in-sample: False", text), text
    assert "'trigger':" in text and "'loss_before':" in text


def test_the_version_is_written_once_in_pyproject(run_cli):
    written = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert metabt.__version__ == metadata.version("metabt") == written
    result = run_cli("--version")
    assert result.code == 0 and result.out.strip() == f"metabt {written}"


def _readme_params_table() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### `MetaAdaptiveStrategy`", 1)[1].split("Per asset and bar:", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", section, flags=re.M))


def test_one_set_of_defaults_in_the_class_the_config_and_the_readme():
    params = metabt.MetaAdaptiveStrategy.params
    documented = _readme_params_table()
    assert set(documented) == set(params._getkeys())  # every param documented, no stale one
    for name, text in documented.items():
        if name != "policy":
            assert ast.literal_eval(text.strip("`")) == getattr(params, name), name
    strategy, detector = StrategyConfig(), DetectorConfig()
    shared = set(StrategyConfig.model_fields) & set(params._getkeys())
    assert {"min_window", "max_window", "readapt_every", "vol_target"} <= shared
    for name in shared:
        assert getattr(strategy, name) == getattr(params, name), name
    assert detector.name == params.detector

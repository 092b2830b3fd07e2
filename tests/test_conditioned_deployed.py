"""Context and memory checkpoints trade in the service and the paper loop as in a backtest.

The forward-pass learners plug into ``MetaAdaptiveStrategy`` through the same
policy interface as MAML, so ``metabt serve`` and ``metabt paper`` run them with
no code of their own. These tests hold them to the same promise as the MAML
policy: ``/signal``'s decision on a history's last bar and the paper loop's
targets are the backtest's.
"""

from __future__ import annotations

import pandas as pd
import pytest
from test_serve import RAW_CONFIG

from metabt.backtests.config import build_specs, dump_config, parse_config
from metabt.backtests.data import load_study_data
from metabt.backtests.paper.loop import PaperLoop
from metabt.backtests.paper.session import PaperOptions, open_session
from metabt.backtests.runner import meta_adaptive_params, warmup_start
from metabt.backtests.serve.decision import decide_last_bar
from metabt.backtests.serve.registry import load_registry
from metabt.backtests.training import train_meta
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.loaders import slice_period
from metabt.metamodels.model_io import save_model
from metabt.strategies.engine import run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

PAPER_BARS = 4


@pytest.fixture(scope="module", params=["context", "memory"])
def deployed(request, tmp_path_factory):
    """A briefly trained checkpoint of one learner, served, and its test-period backtest."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    raw = {**RAW_CONFIG, "meta": {**RAW_CONFIG["meta"], "algorithm": name}}
    config = parse_config(raw, f"{name} deployment test config")
    specs = build_specs(config)
    frames = load_study_data(config).frames
    split = pd.Timestamp(config.data.split)
    model = train_meta(frames, config, specs, split, progress=False)
    save_model(model, root / "models" / name, config.model_dump(mode="json", exclude_none=True))
    served = load_registry(root / "models")[name]
    assert served.model.algorithm == name
    history = slice_period(frames, warmup_start(config, split), None)
    backtest = run_backtest(
        history,
        MetaAdaptiveStrategy,
        meta_adaptive_params(config, served.model, specs),
        specs.costs,
        trade_start=split,
        feed_factory=lambda s, f: make_feature_feed(s, f, specs.features),
    )
    return {
        "root": root,
        "config": config,
        "served": served,
        "history": history,
        "backtest": backtest,
        "split": split,
    }


def test_the_service_decision_is_the_backtest_decision(deployed):
    weights = deployed["backtest"].weights
    adapted = {pd.Timestamp(e["date"]) for e in deployed["backtest"].events}
    days = sorted(weights["date"].unique())
    # Days right after an adaptation (the context / memory read in force), and spread days.
    picked = sorted({d for d in days if d in adapted}.union(days[:: max(1, len(days) // 6)]))[:10]
    assert any(d in adapted for d in picked), "the test needs adaptations to mean anything"
    served = deployed["served"]
    for day in picked:
        frames = {s: f.loc[:day] for s, f in deployed["history"].items()}
        decision = decide_last_bar(served.model, frames, served.config)
        expected = weights.loc[weights["date"] == day].set_index("asset")["weight"]
        got = pd.Series({s: a["weight"] for s, a in decision.assets.items()})
        pd.testing.assert_series_equal(
            got.sort_index(), expected.sort_index(), check_names=False, atol=1e-12, rtol=0
        )


def test_the_paper_loop_trades_the_backtest_targets(deployed):
    import sqlite3

    from metabt.backtests.paper.ledger import DB_FILE

    root, config = deployed["root"], deployed["config"]
    config_path = root / "paper.toml"
    dump_config(config, config_path)
    state = root / "paper"
    session = open_session(
        PaperOptions(
            config_path=config_path,
            state_dir=state,
            model=deployed["served"].path,
            start=deployed["split"].date(),
        ),
        progress=False,
    )
    try:
        PaperLoop(session).run(max_bars=PAPER_BARS)
    finally:
        session.close()
    conn = sqlite3.connect(state / DB_FILE)
    try:
        rows = conn.execute(
            "SELECT date, asset, weight FROM targets ORDER BY date, asset"
        ).fetchall()
    finally:
        conn.close()
    paper = pd.DataFrame(rows, columns=["date", "asset", "weight"])
    assert paper["date"].nunique() == PAPER_BARS
    weights = deployed["backtest"].weights
    days = sorted(weights["date"].unique())[:PAPER_BARS]
    expected = weights[weights["date"].isin(days)].sort_values(["date", "asset"])
    assert paper["asset"].tolist() == expected["asset"].tolist()
    assert paper["date"].tolist() == [d.date().isoformat() for d in expected["date"]]
    pd.testing.assert_series_equal(
        paper["weight"], expected["weight"].reset_index(drop=True), check_names=False
    )

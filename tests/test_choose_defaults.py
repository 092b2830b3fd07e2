"""``metabt choose-defaults``: settings are chosen inside the training period, by one rule.

The honesty rules say a setting is never chosen on the test period, and that a setting every
meta variant shares is chosen by the same rule for all of them, not by the score of the one it
should flatter. These tests hold the command to both.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metabt.backtests import choose_defaults
from metabt.backtests.choose_defaults import choose, learned_mean, validation_config
from metabt.backtests.config import configs_dir, load_config

TINY = Path(__file__).parent / "data" / "tiny_basket.toml"
FAST = ["--set", "comparators.names=[]", "--set", "ensemble.per_seed_runs=false"]


@pytest.mark.parametrize("name", sorted(p.stem for p in configs_dir().glob("*.toml")))
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.95])
def test_the_validation_split_lies_inside_the_training_period(name, fraction):
    config = load_config(configs_dir() / f"{name}.toml")
    val = validation_config(config, fraction)
    assert config.data.start is None or val.data.start == config.data.start
    assert val.data.split < val.data.end < config.data.split  # no test bar is even loaded
    start = config.data.start or val.data.split
    assert start < val.data.split
    assert val.walk_forward.model_dump() == type(val.walk_forward)().model_dump()


def test_the_rule_scores_every_learned_row_and_nothing_else():
    sharpes = {
        "meta_adaptive": 1.0,
        "meta_context_calendar": 0.0,
        "erm_static": 0.5,
        "meta_oracle": None,  # a flat row has no Sharpe: left out, not counted as 0
        "buy_and_hold": 9.0,  # static rules are not what the setting changes
        "meta_adaptive#1": 9.0,  # one seed of the ensemble is not a row of its own
        "regime_bound": 9.0,
    }
    assert learned_mean(sharpes) == pytest.approx(0.5)
    assert learned_mean({"buy_and_hold": 1.0}) is None


def test_choose_averages_over_splits_and_needs_a_score_on_each():
    scores = {"a": [2.0, None], "b": [0.2, 0.4], "c": [0.5, 0.0], "d": [0.3, 0.3]}
    assert choose(scores) == ("b", pytest.approx(0.3))  # ties: the first listed
    assert choose({"a": [None]}) is None


def test_the_command_prints_each_split_and_picks_by_the_rule(run_cli, monkeypatch):
    # The studies themselves are replaced here (the next test runs them for real): what is
    # checked is that every candidate runs on every variant and the pick follows the rule.
    seen: list[tuple[str, int]] = []

    def fake(configs):
        rows = {}
        for candidate, config in configs.items():
            seen.append((candidate, config.seed))
            good = {"strategy.readapt_every=5": 1.0, "strategy.readapt_every=10": 0.0}[candidate]
            # meta_adaptive alone prefers 10 on seed 1; the rule over all rows picks 5.
            best_alone = 3.0 if candidate.endswith("10") and config.seed == 1 else 0.0
            rows[candidate] = {
                "meta_adaptive": best_alone,
                "meta_frozen": good,
                "erm_static": good,
                "buy_and_hold": 5.0,
            }
            if candidate.endswith("5"):  # a candidate may add rows: each gets its column
                rows[candidate]["meta_context"] = good
        return rows

    monkeypatch.setattr(choose_defaults, "validation_sharpes", fake)
    result = run_cli(
        "choose-defaults",
        TINY,
        "--candidate",
        "strategy.readapt_every=5",
        "--candidate",
        "strategy.readapt_every=10",
        "--also-on",
        "seed=2",
    )
    assert result.code == 0, result.err
    assert sorted(seen) == sorted(
        (f"strategy.readapt_every={n}", s) for n in (5, 10) for s in (1, 2)
    )
    assert "validation with seed=2:" in result.out
    rule = next(line for line in result.out.splitlines() if line.startswith("rule:"))
    assert "averaged over the config and 1 --also-on" in rule
    assert re.search(r"strategy\.readapt_every=5 \(0\.75\)", rule), rule
    assert "meta_context" in result.out
    assert "2 setting(s) validated" in result.out


def test_a_real_validation_run_scores_the_learned_rows(run_cli):
    result = run_cli(
        "choose-defaults",
        TINY,
        *FAST,
        "--set",
        "meta.meta_steps=4",
        "--candidate",
        "strategy.readapt_every=10",
    )
    assert result.code == 0, result.err
    values = {}
    for line in result.out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and re.fullmatch(r"-?\d+\.\d\d", cells[1]):
            values[cells[0]] = float(cells[1])
    learned = ["meta_adaptive", "meta_frozen", "meta_calendar", "meta_random_init", "erm_static"]
    assert set(learned) <= set(values), result.out
    assert values["learned mean"] == pytest.approx(
        sum(values[n] for n in learned) / len(learned), abs=0.011
    )
    assert "rule: the highest mean validation Sharpe" in result.out

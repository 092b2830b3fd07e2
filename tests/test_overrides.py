"""One override syntax: ``--set section.key=value`` on every command that takes a config.

Every bad input here must fail before any work starts, as one line that names where the bad
value came from (the TOML file and key, or the exact ``--set``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line

from metabt.backtests.config import ConfigError, configs_dir, load_config
from metabt.backtests.overrides import load_with_settings, parse_setting

TINY = Path(__file__).parent / "data" / "tiny_basket.toml"


def test_set_changes_the_named_keys_and_nothing_else():
    base = load_config(TINY)
    config = load_with_settings(
        TINY, ["meta.inner_steps=3", "policy.hidden=[8]", "seed=7", "meta.inner_steps=4"]
    )
    assert config.meta.inner_steps == 4  # the last --set of a key wins
    assert tuple(config.policy.hidden) == (8,)
    assert config.seed == 7
    changed = {
        section
        for section, values in config.model_dump().items()
        if values != base.model_dump()[section]
    }
    assert changed == {"meta", "policy", "seed"}


def test_a_table_for_a_section_sets_its_keys_and_keeps_the_others():
    base = load_config(TINY)  # horizons [5, 21], one MACD, hidden [16] ...
    dotted = load_with_settings(TINY, ["features.bar_shape=false", "volatility.meta.meta_steps=7"])
    tabled = load_with_settings(
        TINY, ["features={bar_shape=false}", "volatility={meta={meta_steps=7}}"]
    )
    assert tabled == dotted
    assert tabled.features.horizons == base.features.horizons
    assert tabled.features.macd == base.features.macd
    assert tabled.volatility.meta.tasks_per_step == base.volatility.meta.tasks_per_step
    # A dict-valued key is a value, not a section: a table replaces it whole.
    settings = load_with_settings(
        TINY, ["detector.settings={hazard=100.0}", "detector.settings={}"]
    )
    assert settings.detector.settings == {}
    with pytest.raises(ConfigError, match="bar_shap"):
        load_with_settings(TINY, ["features={bar_shap=false}"])


def test_a_bare_word_is_a_string_and_a_toml_literal_is_typed():
    assert parse_setting("policy.mode=long_only") == ("policy.mode", "long_only")
    assert parse_setting("walk_forward.refit_every=1y") == ("walk_forward.refit_every", "1y")
    assert parse_setting("meta.inner_lr=0.1") == ("meta.inner_lr", 0.1)
    assert parse_setting("strategy.long_only=true") == ("strategy.long_only", True)


def test_a_bad_period_in_a_toml_fails_at_load_naming_the_file_and_key(tmp_path, run_cli):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text() + '\n[walk_forward]\nrefit_every = "every year"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: walk_forward\.refit_every"):
        load_config(bad)
    line = one_line(run_cli("backtest", bad, "--out", tmp_path / "out"))
    assert str(bad) in line and "walk_forward.refit_every" in line
    assert "--refit-every" not in line  # the user never passed that flag
    assert not (tmp_path / "out").exists()


SET_TYPO = ["--set", "meta.inner_stpes=3"]


@pytest.mark.parametrize(
    "command",
    [
        ["demo"],
        ["backtest", str(TINY)],
        ["train", str(TINY), "--out", "{tmp}/model"],
        ["sweep", str(TINY), "--out", "{tmp}/sweep"],
        ["study", "basket"],
        ["choose-defaults", str(TINY)],
        ["paper", "run", str(TINY), "--state", "{tmp}/state"],
    ],
)
def test_every_command_with_a_config_takes_set_and_hints_a_typo(command, tmp_path, run_cli):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command] + SET_TYPO
    if command[0] in ("demo", "study", "backtest"):
        args += ["--out", str(tmp_path / "run")]
    line = one_line(run_cli(*args))
    assert line == (
        "error: --set meta.inner_stpes=3: unknown key 'meta.inner_stpes'; "
        "did you mean 'meta.inner_steps'?"
    )
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("seed", "use section.key=value"),
        ("meta.inner_steps=", "an empty value"),
        ("policy.hidden=[8", "is not a TOML list"),
        ("walk_forward.refit_every=soon", "walk_forward.refit_every: 'soon' is not a period"),
        ("strategy.min_window=1", "strategy.min_window must be greater than or equal to 2"),
        ("seed.x=1", "'seed' is a value, not a section"),
        ("meta.unadapted_weight=-1", "meta.unadapted_weight must be a number >= 0"),
    ],
)
def test_a_bad_set_names_itself(setting, needle, tmp_path, run_cli):
    line = one_line(run_cli("backtest", TINY, "--set", setting))
    assert "--set " in line and needle in line


def test_study_names_the_shipped_studies_and_hints_a_typo(run_cli):
    line = one_line(run_cli("study", "basekt"))
    assert "did you mean 'basket'?" in line
    shipped = sorted(path.stem for path in configs_dir().glob("*.toml"))
    assert f"(shipped: {', '.join(shipped)})" in line


def test_choose_defaults_checks_every_candidate_before_the_first_run(run_cli):
    line = one_line(
        run_cli("choose-defaults", TINY, "--candidate", "seed=2", "--candidate", "polcy.mode=x")
    )
    assert line.startswith("error: --candidate polcy.mode=x: unknown key 'polcy'")
    assert "did you mean 'policy'?" in line


@pytest.mark.parametrize("val_fraction, needle", [("0", "no validation split"), ("0.25", "best")])
def test_train_reports_the_step_it_kept_and_never_a_nan_loss(
    val_fraction, needle, tmp_path, run_cli
):
    # Without a validation split there is no validation loss: saying "nan" would read as a
    # training that diverged.
    result = run_cli(
        "train",
        TINY,
        "--out",
        tmp_path / "model",
        "--set",
        f"meta.val_fraction={val_fraction}",
        "--set",
        "ensemble.seeds=1",
    )
    assert result.code == 0, result.err
    line = next(x for x in result.out.splitlines() if x.startswith("saved"))
    assert needle in line and "nan" not in line, line
    assert ("validated on bars" in line) == (val_fraction != "0"), line

"""A sweep's cache of seed-independent work changes no file of a run folder.

The runs are real (tiny) studies on SPY from the bundled sample, like the sweep
tests; they run in this process so the test can count what was computed.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import tomllib
from rich.console import Console
from test_sweep import CONFIG

import metabt.backtests.shared_work as shared_work
from metabt.backtests.cli import run_to_folder
from metabt.backtests.config import parse_config
from metabt.backtests.shared_work import sweep_cache
from metabt.feeds.loaders import sample_data_dir

# Every file a run writes whose bytes are a function of the study alone (no dates of
# the run, no rendered HTML or PNG).
COMPARED = ("metrics.json", "returns.csv", "positions.csv", "trades.csv", "comparison.md")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bars")
    frame = pd.read_csv(sample_data_dir() / "SPY.csv")
    frame.loc[frame["Date"].between("2004-06-01", "2007-07-31")].to_csv(
        folder / "SPY.csv", index=False
    )
    text = CONFIG.format(data=folder).replace(
        'names = ["buy_and_hold"]', 'names = ["buy_and_hold", "sma_cross"]'
    )
    return tomllib.loads(text)


def _run(config: dict, seed: int, out: Path, cache=None) -> Path:
    study = parse_config({**config, "seed": seed}, "test config")
    out.mkdir()
    return run_to_folder(
        study, out, console=Console(file=io.StringIO()), n_jobs=1, progress=False, cache=cache
    )


def test_cached_runs_equal_uncached_runs_and_reuse_the_comparators(
    config, tmp_path, monkeypatch
) -> None:
    calls: list[str] = []
    tune = shared_work.tune_static

    def counted(frames, name, *args, **kwargs):
        calls.append(name)
        return tune(frames, name, *args, **kwargs)

    monkeypatch.setattr(shared_work, "tune_static", counted)
    cache = sweep_cache(tmp_path / "sweep")
    plain = _run(config, 0, tmp_path / "plain")
    assert sorted(calls) == ["buy_and_hold", "sma_cross"]
    first = _run(config, 0, tmp_path / "first", cache)
    second = _run(config, 1, tmp_path / "second", cache)
    # The cached run tuned each comparator once; the second seed tuned nothing.
    assert sorted(calls) == ["buy_and_hold", "buy_and_hold", "sma_cross", "sma_cross"]
    for name in COMPARED:
        assert (first / name).read_bytes() == (plain / name).read_bytes(), name
    # The seed changes the meta policy, never a static comparator's numbers.
    one = pd.read_csv(first / "returns.csv", index_col=0)
    two = pd.read_csv(second / "returns.csv", index_col=0)
    pd.testing.assert_frame_equal(one[["buy_and_hold"]], two[["buy_and_hold"]])
    assert not one["meta_adaptive"].equals(two["meta_adaptive"])


def test_the_cache_folder_changes_with_the_code(tmp_path, monkeypatch) -> None:
    before = Path(sweep_cache(tmp_path).location)
    monkeypatch.setattr(shared_work, "code_digest", lambda: "000000000000")
    after = Path(sweep_cache(tmp_path).location)
    assert before != after and before.parent == after.parent

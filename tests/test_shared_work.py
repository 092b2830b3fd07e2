"""A sweep's cache of seed-independent work changes no file of a run folder.

The runs are real (tiny) studies on SPY from the bundled sample, like the sweep
tests; they run in this process so the test can count what was computed.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import tomllib
from joblib import Memory
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


def _entries(cache, function: str) -> int:
    """How many results of ``function`` the sweep's cache holds."""
    return len(list(Path(cache.location).rglob(f"{function}/*/output.pkl")))


def test_each_seed_is_trained_and_traded_once_per_sweep(config, tmp_path) -> None:
    small = {**config, "ensemble": {"seeds": 3}}
    cache = sweep_cache(tmp_path / "sweep")
    first = _run(small, 0, tmp_path / "first", cache)
    # Seeds 0, 1, 2: each trained once, each traded once per ensemble variant.
    assert _entries(cache, "_trained_seed") == 3
    variants = _entries(cache, "_ran_seed") // 3
    assert variants >= 4 and _entries(cache, "_ran_seed") == 3 * variants
    second = _run(small, 1, tmp_path / "second", cache)
    # Seed 1 trades seeds 1, 2, 3: only seed 3 is new.
    assert _entries(cache, "_trained_seed") == 4
    assert _entries(cache, "_ran_seed") == 4 * variants
    # What was read back is what a run without the cache computes, byte for byte.
    for seed, cached in ((0, first), (1, second)):
        plain = _run(small, seed, tmp_path / f"plain{seed}")
        for name in (*COMPARED, "seeds.json"):
            assert (cached / name).read_bytes() == (plain / name).read_bytes(), (seed, name)


def test_the_cache_folder_changes_with_the_code(tmp_path, monkeypatch) -> None:
    before = Path(sweep_cache(tmp_path).location)
    monkeypatch.setattr(shared_work, "code_digest", lambda: "000000000000")
    after = Path(sweep_cache(tmp_path).location)
    assert before != after and before.parent == after.parent


def _slow_square(x: int, log: str) -> int:
    with open(log, "a") as f:  # one line per computation, whoever computes it
        f.write(f"{x}\n")
    time.sleep(0.2)
    return x * x


def test_two_workers_wanting_the_same_entries_compute_each_once(tmp_path) -> None:
    cache = Memory(location=str(tmp_path / "cache"), verbose=0)
    square = cache.cache(_slow_square)
    log = str(tmp_path / "computed.log")

    def worker() -> list[int]:
        calls = [(f"entry{x}", lambda x=x: square(x, log)) for x in range(6)]
        return shared_work.in_turn(cache, calls)

    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(worker), pool.submit(worker)]]
    assert results == [[x * x for x in range(6)]] * 2
    computed = Path(log).read_text().split()
    # Without the locks both would compute entry 0 first, then entry 1, ... in step.
    assert sorted(computed) == [str(x) for x in range(6)]

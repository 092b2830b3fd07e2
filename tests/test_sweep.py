"""`metabt sweep` on Dask: same results on any cluster, survives a killed worker, resumes exactly.

The sweeps are real: real worker processes running real (tiny) studies on two
ETFs from the bundled sample, written as a CSV folder so a test can change a file.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import invoke_cli

from metabt.backtests.config import load_config
from metabt.backtests.sweep import SweepError, expand, parse_grid, parse_seeds, parse_universes
from metabt.feeds.loaders import sample_data_dir
from metabt.reports.pbo import pbo_cscv

CONFIG = """
title = "sweep test"
study = "basket"
seed = 0

[data]
source = "csv"
path = "{data}"
symbols = ["SPY"]
start = "2005-03-01"
split = "2007-01-03"
end = "2007-07-31"

[meta]
meta_steps = 3
tasks_per_step = 8
eval_every = 3
val_tasks = 16

[features]
# short look-backs and windows: a few years of bars, and seconds per run
horizons = [5, 21]
macd = [[8, 24]]

[strategy]
warmup_bars = 100
max_window = 60

[comparators]
names = ["buy_and_hold"]

[ensemble]
# two meta-training seeds, not five: every run stays a true ensemble, at less cost
seeds = 2
"""


def _cli(*args: object) -> tuple[int, str]:
    """Exit code and stdout + stderr of ``metabt ARGS``."""
    result = invoke_cli(*args)
    return result.code, result.out + result.err


def _sweep(config: Path, data: Path, out: Path, *extra: object) -> tuple[int, str]:
    return _cli(
        "sweep",
        config,
        "--data",
        data,
        "--universe",
        "SPY",
        "--universe",
        "TLT",
        "--out",
        out,
        *extra,
    )


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: (p / "metrics.json").stat().st_mtime_ns for p in (out / "runs").iterdir()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bars")
    for symbol in ("SPY", "TLT"):
        frame = pd.read_csv(sample_data_dir() / f"{symbol}.csv")
        frame.loc[frame["Date"].between("2004-06-01", "2007-07-31")].to_csv(
            folder / f"{symbol}.csv", index=False
        )
    return folder


@pytest.fixture(scope="module")
def config(data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "sweep.toml"
    path.write_text(CONFIG.format(data=data))
    return path


@pytest.fixture(scope="module")
def local_sweep(config, data, tmp_path_factory) -> Path:
    """The reference: the default local backend (its own LocalCluster), undisturbed."""
    out = tmp_path_factory.mktemp("local")
    code, text = _sweep(config, data, out, "--workers", "2")
    assert code == 0, text
    assert "ran 2, failed 0" in text
    return out


@pytest.fixture(scope="module")
def cluster():
    """A separate, real Dask cluster: 2 single-threaded worker processes, addressed by URL."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as local,
        Client(local) as client,
    ):
        yield local.scheduler_address, client


def test_seeds_grid_and_universes_expand_to_their_product(config):
    base = load_config(config)
    grid = parse_grid(["meta.inner_steps=1,2", "policy.hidden=[8],[16, 8]"])
    assert grid == {"meta.inner_steps": [1, 2], "policy.hidden": [[8], [16, 8]]}
    runs = expand(
        base, parse_seeds("0-2,5"), grid, ["1y", None], parse_universes(["SPY", "SPY,TLT"], None)
    )
    assert len(runs) == 2 * 2 * 2 * 2 * 4
    assert len({r.hash for r in runs}) == len(runs)
    first = runs[0].config
    assert (
        first.seed,
        first.meta.inner_steps,
        first.policy.hidden,
        first.walk_forward.refit_every,
        first.data.symbols,
    ) == (0, 1, (8,), "1y", ["SPY"])
    assert [
        r.hash
        for r in expand(
            base, [0, 1, 2, 5], grid, ["1y", None], parse_universes(["SPY", "SPY,TLT"], None)
        )
    ] == [r.hash for r in runs]


def test_a_universes_file_names_symbol_lists_and_a_bad_entry_names_the_file(tmp_path):
    good = tmp_path / "universes.toml"
    good.write_text('bonds = ["TLT"]\nequity = ["SPY", "QQQ"]\n')
    assert parse_universes(["XLE,XLF"], good) == {
        "XLE+XLF": ["XLE", "XLF"],
        "bonds": ["TLT"],
        "equity": ["SPY", "QQQ"],
    }
    bad = tmp_path / "bad.toml"
    bad.write_text('equity = "SPY"\n')
    with pytest.raises(SweepError, match="bad.toml: equity must be a non-empty list"):
        parse_universes([], bad)


def test_a_mistyped_grid_key_is_one_line_naming_it(config, tmp_path):
    code, text = _cli("sweep", config, "--grid", "meta.inner_stepz=1,2", "--out", tmp_path)
    assert code == 2
    assert text.strip().splitlines() == [
        (
            "error: sweep point meta.inner_stepz=1, seed=0: unknown key 'meta.inner_stepz'; "
            "did you mean 'meta.inner_steps'?"
        )
    ]
    assert not (tmp_path / "runs").exists()


def test_a_dask_cluster_gives_the_local_sweep_csv_bit_for_bit(
    local_sweep, config, data, cluster, tmp_path
):
    address, _ = cluster
    code, text = _sweep(config, data, tmp_path, "--cluster", address)
    assert code == 0, text
    reference = (local_sweep / "sweep.csv").read_bytes()
    assert (tmp_path / "sweep.csv").read_bytes() == reference
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert set(table["universe"]) == {"SPY", "TLT"} and (table["status"] == "ok").all()
    assert (tmp_path / "robustness.md").is_file() and (tmp_path / "robustness.png").is_file()


def test_rerunning_a_finished_sweep_runs_nothing(local_sweep, config, data):
    before, table = _mtimes(local_sweep), (local_sweep / "sweep.csv").read_bytes()
    code, text = _sweep(config, data, local_sweep, "--workers", "2")
    assert code == 0, text
    assert "2 already finished, 0 to run" in text and "ran 0" in text
    assert _mtimes(local_sweep) == before
    assert (local_sweep / "sweep.csv").read_bytes() == table


def test_changing_one_data_file_reruns_exactly_the_runs_that_read_it(
    local_sweep, data, cluster, tmp_path
):
    # A copy of the finished sweep and of its data folder, elsewhere: moving data must not
    # re-run anything, changing a file must re-run only the runs that read it.
    out, moved = tmp_path / "sweep", tmp_path / "bars"
    shutil.copytree(local_sweep, out)
    shutil.copytree(data, moved)
    config = tmp_path / "sweep.toml"
    config.write_text(CONFIG.format(data=moved))
    old = pd.read_csv(out / "sweep.csv")
    before = _mtimes(out)
    tlt = pd.read_csv(moved / "TLT.csv")
    tlt.loc[len(tlt) - 1, "Volume"] = int(tlt.loc[len(tlt) - 1, "Volume"]) + 100
    tlt.to_csv(moved / "TLT.csv", index=False)

    code, text = _sweep(config, moved, out, "--cluster", cluster[0])
    assert code == 0, text
    assert "1 already finished, 1 to run" in text and "ran 1, failed 0" in text
    new = pd.read_csv(out / "sweep.csv")
    new_tlt = set(new.loc[new["universe"] == "TLT", "run"])
    assert set(_mtimes(out)) - set(before) == new_tlt
    assert new_tlt.isdisjoint(old["run"])
    spy = set(old.loc[old["universe"] == "SPY", "run"])
    assert set(new.loc[new["universe"] == "SPY", "run"]) == spy
    assert {k: v for k, v in _mtimes(out).items() if k in spy} == {
        k: v for k, v in before.items() if k in spy
    }


def test_a_run_that_fails_is_recorded_with_its_error_and_the_rest_is_reported(
    local_sweep, data, cluster, tmp_path
):
    out, short = tmp_path / "sweep", tmp_path / "bars"
    shutil.copytree(local_sweep, out)
    shutil.copytree(data, short)
    frame = pd.read_csv(data / "TLT.csv")
    frame.iloc[-300:].to_csv(short / "TLT.csv", index=False)  # too little history to train
    config = tmp_path / "sweep.toml"
    config.write_text(CONFIG.format(data=short))
    code, text = _sweep(config, short, out, "--cluster", cluster[0])
    assert code == 0, text
    assert "ran 0, failed 1" in text
    table = pd.read_csv(out / "sweep.csv")
    failed = table.loc[table["universe"] == "TLT"]
    assert list(failed["status"]) == ["failed"]
    assert failed["error"].iloc[0].startswith("DataError: ") and "\n" not in failed["error"].iloc[0]
    assert (table.loc[table["universe"] == "SPY", "status"] == "ok").all()
    assert "Failed runs" in (out / "robustness.md").read_text()


def test_a_worker_killed_mid_sweep_loses_no_run_and_changes_no_result(
    local_sweep, config, data, cluster, tmp_path
):
    address, client = cluster
    client.wait_for_workers(2, timeout=60)
    killed: list[str] = []

    def kill_the_busy_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy and list((tmp_path / "runs").glob(".*.partial")):
                time.sleep(1.0)  # inside the study, not at its edge
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_busy_worker, daemon=True)
    killer.start()
    code, text = _cli(
        "sweep",
        config,
        "--data",
        data,
        "--universe",
        "SPY",
        "--out",
        tmp_path,
        "--cluster",
        address,
    )
    killer.join(timeout=5)
    assert killed, "no worker was killed: the test did not test anything"
    assert code == 0, text
    assert "ran 1, failed 0" in text
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [rows[1].split(",")[0]]
    # The run the killed worker had started gives the uninterrupted sweep's lines, bit for bit.
    reference = (local_sweep / "sweep.csv").read_text().splitlines()
    assert rows == [reference[0], *(r for r in reference[1:] if ",SPY," in r)]


def _cscv_mean(edge: float, draws: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        returns = rng.normal(0.0, 0.01, size=(1000, 10))
        returns[:, 3] += edge
        values.append(pbo_cscv(returns).pbo)
    return float(np.mean(values))


def test_pbo_is_a_coin_flip_without_edge_and_low_with_a_real_one():
    assert 0.4 < _cscv_mean(0.0, draws=20, seed=1) < 0.6
    assert _cscv_mean(0.003, draws=5, seed=2) < 0.05

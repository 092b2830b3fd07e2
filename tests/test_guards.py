"""Nothing silent, nothing lost: each refused input, through the CLI, as one line.

Every row of the tables below is a mistake a careful user made. Each must end
in exit code 2 and exactly one line on stderr without a traceback, naming the
file / row / key, and must leave nothing written (no run folder, no state) or
the damaged thing untouched; where a flag accepts the input, the warning must
be where the user will look.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import invoke_cli, one_line, paper_ledger

from metabt.backtests.paper.ledger import DB_FILE
from metabt.backtests.paper.manifest import MANIFEST_FILE
from metabt.feeds.loaders import sample_data_dir

ROOT = Path(__file__).resolve().parents[1]
HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
SYMBOLS = ("SPY", "TLT", "XLE")
# Small enough that a whole backtest takes seconds: 4 meta-steps, two comparators.
CONFIG = """
title = "guards"
study = "basket"
seed = 1

[data]
source = "sample"
symbols = ["SPY", "TLT", "XLE"]
start = "2005-03-01"
split = "2008-01-02"
end = "2008-04-30"

[meta]
meta_steps = 4
tasks_per_step = 8
eval_every = 2
val_tasks = 16

[features]
# short look-backs and windows: a few years of bars, and seconds per run
horizons = [5, 21]
macd = [[8, 24]]

[strategy]
warmup_bars = 150
max_window = 60

[comparators]
names = ["buy_and_hold", "momentum"]

[comparators.grids]
momentum = { lookback = [63] }
"""
PAPER_START = "2008-03-18"


def sample_rows(symbol: str = "SPY", first: str = "2007-01-03", n: int = 60) -> list[str]:
    """``n`` real rows of the bundled file from ``first`` on."""
    lines = (sample_data_dir() / f"{symbol}.csv").read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(first))
    return lines[i : i + n]


def scaled(row: str, factor: float) -> str:
    date, *values = row.split(",")
    return ",".join([date, *(f"{float(v) * factor:.6g}" for v in values[:5]), values[5]])


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (to show nothing changed)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- data plausibility and layout: `metabt data validate` -----------------------------------------


def _rows_with(i: int, row: str) -> list[str]:
    rows = sample_rows()
    rows[i] = row
    return rows


def _bad_print(tmp: Path) -> list[Path]:
    rows = sample_rows()
    rows[20] = scaled(rows[20], 1000.0)
    return [write_csv(tmp / "JUMP.csv", rows)]


def _gap(tmp: Path) -> list[Path]:
    rows = sample_rows()
    return [write_csv(tmp / "GAP.csv", rows[:20] + rows[45:])]


def _symlink_out(tmp: Path) -> list[Path]:
    outside = write_csv(tmp / "elsewhere" / "SPY.csv", sample_rows())
    (tmp / "data").mkdir()
    (tmp / "data" / "SPY.csv").symlink_to(outside)
    return [tmp / "data"]


def _case_twins(tmp: Path) -> list[Path]:
    write_csv(tmp / "data" / "SPY.csv", sample_rows())
    write_csv(tmp / "data" / "spy.csv", sample_rows())
    return [tmp / "data"]


def _folder_as_csv(tmp: Path) -> list[Path]:
    write_csv(tmp / "data" / "TLT.csv", sample_rows("TLT"))
    (tmp / "data" / "SPY.csv").mkdir()
    return [tmp / "data"]


def _fifo(tmp: Path) -> list[Path]:
    path = tmp / "PIPE.csv"
    os.mkfifo(path)
    return [path]


def _non_utf8(tmp: Path) -> list[Path]:
    path = write_csv(tmp / "ENC.csv", sample_rows())
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b",\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    return [path]


DATA_CASES: dict[str, tuple[Callable[[Path], list[Path]], list[str]]] = {
    "price above 1e9": (
        lambda t: [write_csv(t / "BIG.csv", _rows_with(10, "2007-01-18,2e9,2e9,2e9,2e9,2e9,100"))],
        ["line 12", "above 1e+09"],
    ),
    "price 1e308": (
        lambda t: [
            write_csv(
                t / "HUGE.csv", _rows_with(10, "2007-01-18,1e308,1e308,1e308,1e308,1e308,100")
            )
        ],
        ["line 12", "1e+308"],
    ),
    "one bar x1000 that comes back": (_bad_print, ["line 22", "moves x1,0", "--allow-jumps"]),
    "gap of more than 30 days": (_gap, ["2007-01-31", "2007-03-09", "--allow-gaps"]),
    "several bars on one date": (
        lambda t: [
            write_csv(
                t / "INTRA.csv",
                [
                    "2020-01-02 09:30,10,11,9,10.5,10.5,100",
                    "2020-01-02 10:30,10.5,11,10,10.8,10.8,120",
                ],
            )
        ],
        ["line 3", "intraday", "daily bars"],
    ),
    "semicolon delimiter": (
        lambda t: [
            write_csv(
                t / "SEMI.csv",
                [r.replace(",", ";") for r in sample_rows()],
                HEADER.replace(",", ";"),
            )
        ],
        ["line 1", "';'"],
    ),
    "unquoted thousands separator": (
        lambda t: [
            write_csv(
                t / "THOU.csv", ["2020-01-02,1,234.50,1,240.00,1,230.00,1,235.00,1,235.00,100"]
            )
        ],
        ["line 2", "thousands separator"],
    ),
    "non-UTF-8 byte": (_non_utf8, ["line 4", "0xe9", "UTF-8"]),
    "folder where a CSV is expected": (_folder_as_csv, ["SPY.csv", "is a folder"]),
    "symlink leaving the data folder": (_symlink_out, ["SPY.csv", "symlink", "outside"]),
    "a FIFO where a CSV is expected (would block)": (_fifo, ["PIPE.csv", "not a regular file"]),
    "names differing only in case": (_case_twins, ["SPY.csv", "spy.csv", "differ only in case"]),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_implausible_or_misleading_data_is_refused_naming_the_cause(tmp_path, run_cli, case):
    build, needles = DATA_CASES[case]
    paths = build(tmp_path)
    before = snapshot(tmp_path)
    line = one_line(run_cli("data", "validate", *paths))
    for needle in needles:
        assert needle in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag,build", [("--allow-jumps", _bad_print), ("--allow-gaps", _gap)])
def test_a_flag_accepts_genuine_jumps_and_gaps(tmp_path, run_cli, flag, build):
    paths = build(tmp_path)
    result = run_cli("data", "validate", flag, *paths)
    assert result.code == 0, result.err
    assert "ok" in result.out
    # An accepted gap still tells the user it is there.
    assert ("2007-01-31" in result.err) == (flag == "--allow-gaps"), result.err


def test_data_validate_reports_every_bad_file(tmp_path, run_cli):
    folder = tmp_path / "data"
    write_csv(folder / "AAA.csv", _rows_with(5, "2007-01-10,1,1,1,,1,1"))
    write_csv(folder / "BBB.csv", sample_rows())
    write_csv(folder / "CCC.csv", sample_rows()[:20] + sample_rows()[45:])
    result = run_cli("data", "validate", folder)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in result.err, result.err
    assert "AAA.csv: line 7" in lines[0] and "CCC.csv" in lines[1]
    assert "ok" in result.out and "BBB.csv" in result.out


# -- command lines: symbols, period, --out, config -------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "guards.toml"
    path.write_text(CONFIG)
    return path


def _config_with(tmp: Path, old: str, new: str) -> Path:
    text = CONFIG.replace(old, new)
    assert text != CONFIG
    path = tmp / "edited.toml"
    path.write_text(text)
    return path


def _a_run_folder(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir()
    for name in ("config.toml", "study.json", "returns.csv"):
        (out / name).write_text("old run\n")
    return out


def _not_a_run_folder(tmp: Path) -> Path:
    out = tmp / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    return out


def _under_a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x\n")
    return tmp / "a_file" / "run"


CLI_CASES: dict[str, tuple[list[str], Callable[[Path], Path] | None, list[str]]] = {
    "--symbols ''": (["--symbols", ""], None, ["names no symbol"]),
    "--symbols ,": (["--symbols", ","], None, ["names no symbol"]),
    "--symbols A,,B": (["--symbols", "SPY,,TLT"], None, ["empty item"]),
    "duplicate symbols": (["--symbols", "SPY,TLT,SPY"], None, ["'SPY' is named twice"]),
    "duplicate symbols by case": (["--symbols", "SPY,spy"], None, ["named twice"]),
    "--start before the data": (
        ["--start", "1990-01-02"],
        None,
        ["SPY", "1990-01-02", "1998-01-02 .. 2021-03-31"],
    ),
    "--end after the data": (
        ["--end", "2030-01-02"],
        None,
        ["SPY", "2030-01-02", "1998-01-02 .. 2021-03-31"],
    ),
    "--out is an existing non-run folder": ([], _not_a_run_folder, ["not a metabt run folder"]),
    "--out holds a run, no --overwrite": ([], _a_run_folder, ["earlier run", "--overwrite"]),
    "--out under a file (not writable)": ([], _under_a_file, ["is a file, not a folder"]),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_backtest_refuses_bad_command_lines_before_any_work(tmp_path, run_cli, config, case):
    args, make_out, needles = CLI_CASES[case]
    out = make_out(tmp_path) if make_out else tmp_path / "run"
    before = snapshot(tmp_path)
    line = one_line(run_cli("backtest", config, "--out", out, *args))
    for needle in needles:
        assert needle in line, line
    assert snapshot(tmp_path) == before  # no run folder, nothing in the old one touched


CONFIG_CASES = {
    "a quoted int": (("meta_steps = 4", 'meta_steps = "4"'), ["meta.meta_steps", "'4'"]),
    "a yes for a bool": (
        ("warmup_bars = 150", 'warmup_bars = 150\nlong_only = "yes"'),
        ["strategy.long_only", "'yes'", "true or false"],
    ),
    "patience above its maximum": (
        ("eval_every = 2", "eval_every = 2\npatience = 5000"),
        ["meta.patience", "1000", "5000"],
    ),
    "meta_steps above its maximum": (
        ("meta_steps = 4", "meta_steps = 10000000"),
        ["meta.meta_steps", "100000"],
    ),
    "empty symbol list": (
        ('symbols = ["SPY", "TLT", "XLE"]', "symbols = []"),
        ["data.symbols is empty"],
    ),
    "a symbol twice": (
        ('symbols = ["SPY", "TLT", "XLE"]', 'symbols = ["SPY", "spy"]'),
        ["'SPY' twice"],
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_values_are_strict_and_bounded(tmp_path, run_cli, case):
    (old, new), needles = CONFIG_CASES[case]
    path = _config_with(tmp_path, old, new)
    line = one_line(run_cli("backtest", path, "--out", tmp_path / "run"))
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "run").exists()


def test_train_checks_its_out_before_training(tmp_path, run_cli, config):
    out = _under_a_file(tmp_path)
    before = snapshot(tmp_path)
    line = one_line(run_cli("train", config, "--out", out))
    assert "is a file, not a folder" in line, line
    assert snapshot(tmp_path) == before


# -- a whole (small) backtest: --overwrite, --allow-gaps, a corrupt report ------------------------


@pytest.fixture(scope="module")
def gap_data(tmp_path_factory) -> Path:
    """The three sample files, XLE with six weeks missing in 2006 (a genuine halt, say)."""
    folder = tmp_path_factory.mktemp("gapdata")
    for symbol in SYMBOLS:
        lines = (sample_data_dir() / f"{symbol}.csv").read_text().splitlines()
        if symbol == "XLE":
            lines = [x for x in lines if not "2006-06-01" <= x[:10] <= "2006-07-14"]
        (folder / f"{symbol}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_overwrite_replaces_a_run_and_an_accepted_gap_is_warned_in_it(
    tmp_path, run_cli, config, gap_data
):
    out = _a_run_folder(tmp_path)
    (out / "detection.json").write_text("{}\n")  # a file the new run does not write
    line = one_line(run_cli("backtest", config, "--data", gap_data, "--out", out, "--overwrite"))
    assert "2006-05-31" in line and "--allow-gaps" in line  # refused without the flag ...
    assert (out / "detection.json").is_file()  # ... and the old run is intact
    result = run_cli(
        "backtest", config, "--data", gap_data, "--out", out, "--overwrite", "--allow-gaps"
    )
    assert result.code == 0, result.err
    assert not (out / "detection.json").exists()  # the old run's files went first
    assert (out / "returns.csv").read_text() != "old run\n"
    assert (out / "metrics.json").is_file()
    log = (out / "warnings.log").read_text()
    assert "XLE" in log and "2006-05-31" in log and "--allow-gaps" in log

    # A report on returns below -100% in a day is refused as corrupt, nothing rewritten.
    returns = pd.read_csv(out / "returns.csv")
    returns.loc[5, "meta_adaptive"] = -1.5
    returns.to_csv(out / "returns.csv", index=False)
    before = snapshot(out)
    line = one_line(run_cli("report", out))
    assert "returns.csv" in line and "meta_adaptive" in line and "corrupt" in line, line
    assert snapshot(out) == before


# -- paper state damage, revised history, rebuild -----------------------------------------------


@pytest.fixture(scope="module")
def paper(tmp_path_factory, config):
    """A checkpoint trained before the paper start, and a state that traded 3 bars on a copy of
    the sample files."""
    import types

    root = tmp_path_factory.mktemp("paperguards")
    data = root / "data"
    data.mkdir()
    for symbol in SYMBOLS:
        shutil.copy(sample_data_dir() / f"{symbol}.csv", data / f"{symbol}.csv")

    def cli(*args: object) -> None:
        result = invoke_cli(*args)
        assert result.code == 0, (args, result.err)

    cli("train", config, "--split", PAPER_START, "--out", root / "ckpt", "--data", data)
    state = root / "state"
    cli(
        "paper",
        "run",
        config,
        "--state",
        state,
        "--model",
        root / "ckpt",
        "--start",
        PAPER_START,
        "--max-bars",
        "3",
        "--data",
        data,
    )
    return types.SimpleNamespace(
        root=root,
        data=data,
        state=state,
        ckpt=root / "ckpt",
        config=config,
        ledger=paper_ledger(state),
    )


def _run_args(paper, state: Path, *extra: str) -> list:
    return [
        "paper",
        "run",
        paper.config,
        "--state",
        state,
        "--model",
        paper.ckpt,
        "--start",
        PAPER_START,
        "--data",
        paper.data,
        *extra,
    ]


def _copy(paper, tmp: Path) -> Path:
    state = tmp / "state"
    shutil.copytree(paper.state, state)
    return state


def _truncate(state: Path) -> None:
    db = state / DB_FILE
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])


def _garbage(state: Path) -> None:
    (state / DB_FILE).write_bytes(b"this is not a database, it is a shopping list\n" * 200)


def _revised(paper, tmp: Path) -> Path:
    """The data folder with the High of SPY on 2008-03-19 (an already traded bar) revised."""
    data = tmp / "revised"
    shutil.copytree(paper.data, data)
    path = data / "SPY.csv"
    lines = path.read_text().splitlines()
    i = next(k for k, x in enumerate(lines) if x.startswith("2008-03-19"))
    cells = lines[i].split(",")
    cells[2] = f"{float(cells[2]) + 1.0:.2f}"
    lines[i] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return data


PAPER_CASES: dict[str, tuple[Callable, Callable, list[str]]] = {
    # name: (damage(paper, state, tmp), args(paper, state, tmp), needles)
    "truncated database": (
        lambda p, s, t: _truncate(s),
        lambda p, s, t: _run_args(p, s),
        ["damaged", "metabt paper rebuild"],
    ),
    "database replaced by garbage": (
        lambda p, s, t: _garbage(s),
        lambda p, s, t: _run_args(p, s),
        ["damaged", "metabt paper rebuild"],
    ),
    "status of a damaged database": (
        lambda p, s, t: _garbage(s),
        lambda p, s, t: ["paper", "status", "--state", s],
        ["damaged", "metabt paper rebuild"],
    ),
    "database deleted, manifest kept": (
        lambda p, s, t: (s / DB_FILE).unlink(),
        lambda p, s, t: _run_args(p, s),
        ["missing", "metabt paper rebuild"],
    ),
    "--state names a file": (
        lambda p, s, t: (shutil.rmtree(s), s.write_text("x\n")),
        lambda p, s, t: _run_args(p, s),
        ["is a file, not a folder"],
    ),
    "a traded bar revised in the source": (
        lambda p, s, t: _revised(p, t),
        lambda p, s, t: [*_run_args(p, s)[:-1], t / "revised"],
        ["2008-03-19", "SPY", "high", "--accept-revised-history"],
    ),
    "rebuild when the source's bars changed": (
        lambda p, s, t: (_garbage(s), _revised(p, t)),
        lambda p, s, t: ["paper", "rebuild", "--state", s, "--data", t / "revised"],
        ["cannot rebuild", "not the ones that were traded"],
    ),
    "paper report into a folder that is not a run folder": (
        lambda p, s, t: _not_a_run_folder(t),
        lambda p, s, t: ["paper", "report", "--state", s, "--out", t / "out"],
        ["not a metabt run folder"],
    ),
    "paper report over a run without --overwrite": (
        lambda p, s, t: _a_run_folder(t),
        lambda p, s, t: ["paper", "report", "--state", s, "--out", t / "out"],
        ["earlier run", "--overwrite"],
    ),
    "rebuild without a manifest": (
        lambda p, s, t: (s / MANIFEST_FILE).unlink(),
        lambda p, s, t: ["paper", "rebuild", "--state", s],
        ["cannot rebuild", "paper.json"],
    ),
}


@pytest.mark.parametrize("case", sorted(PAPER_CASES))
def test_a_damaged_or_changed_paper_state_is_refused_and_kept(paper, tmp_path, run_cli, case):
    damage, args, needles = PAPER_CASES[case]
    state = _copy(paper, tmp_path)
    damage(paper, state, tmp_path)
    before = snapshot(tmp_path)
    line = one_line(run_cli(*args(paper, state, tmp_path)))
    for needle in needles:
        assert needle in line, line
    assert snapshot(tmp_path) == before  # nothing lost, nothing written


def test_paper_start_after_the_last_bar_creates_no_state(paper, tmp_path, run_cli):
    state = tmp_path / "new"
    line = one_line(
        run_cli(
            "paper",
            "run",
            paper.config,
            "--state",
            state,
            "--model",
            paper.ckpt,
            "--start",
            "2008-06-02",
            "--data",
            paper.data,
        )
    )
    assert "2008-06-02" in line and "2008-04-30" in line, line
    assert not state.exists()


def test_accepted_revision_is_logged_and_trading_continues(paper, tmp_path, run_cli):
    state = _copy(paper, tmp_path)
    revised = _revised(paper, tmp_path)
    result = run_cli(
        *[*_run_args(paper, state)[:-1], revised], "--accept-revised-history", "--max-bars", "1"
    )
    assert result.code == 0, result.err
    assert "accepted 1 revised" in result.out
    conn = sqlite3.connect(state / DB_FILE)
    logged = conn.execute("SELECT date, asset, field FROM revisions").fetchall()
    conn.close()
    assert logged == [("2008-03-19", "SPY", "high")]
    # The ledger keeps what was traded: the stored bar is the original one.
    assert paper_ledger(state)["bars"][: len(paper.ledger["bars"])] == paper.ledger["bars"]
    # Accepted once is accepted: resuming again without the flag goes on.
    again = run_cli(*[*_run_args(paper, state)[:-1], revised], "--max-bars", "1")
    assert again.code == 0, again.err


@pytest.mark.parametrize("damage", [_truncate, _garbage])
def test_rebuild_recreates_the_same_ledger_and_keeps_the_damaged_file(
    paper, tmp_path, run_cli, damage
):
    state = _copy(paper, tmp_path)
    damage(state)
    broken = (state / DB_FILE).read_bytes()
    result = run_cli("paper", "rebuild", "--state", state, "--data", paper.data)
    assert result.code == 0, result.err
    assert "3 bars re-traded up to 2008-03-20" in result.out
    assert paper_ledger(state) == paper.ledger
    kept = list(state.glob(f"{DB_FILE}.damaged-*"))
    assert [k.read_bytes() for k in kept] == [broken]
    assert run_cli(*_run_args(paper, state), "--max-bars", "1").code == 0


def _without_root_powers() -> list[str]:
    """Run as root without the capabilities that ignore file permissions (else: nothing)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner,-linux_immutable"]


def test_status_reads_a_read_only_state_and_run_refuses_it(paper, tmp_path):
    state = _copy(paper, tmp_path)
    for path in [state, *state.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [*_without_root_powers(), sys.executable, "-m", "metabt"]
    try:
        status = subprocess.run(
            [*base, "paper", "status", "--state", str(state)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        run = subprocess.run(
            [*base, *map(str, _run_args(paper, state))],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for path in [state, *state.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert status.returncode == 0, status.stderr
    assert "2008-03-20" in status.stdout and "Traceback" not in status.stderr
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the paper state" in lines[0], run.stderr
    assert paper_ledger(state) == paper.ledger


def test_a_long_step_prints_progress_when_output_is_piped(tmp_path, config):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METABT_PROGRESS_EVERY": "0.5"}
    proc = subprocess.run(
        [sys.executable, "-m", "metabt", "train", str(config), "--out", str(tmp_path / "ckpt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    beats = [x for x in proc.stdout.splitlines() if "still working" in x]
    assert beats and "meta-training" in beats[-1], proc.stdout

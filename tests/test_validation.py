"""Bad input gets one clear line naming the file and row, and exit code 2, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metabt.feeds.errors import DataError
from metabt.feeds.loaders import load_folder, sample_data_dir
from metabt.feeds.validate import require_bars, validate_symbol

HEADER = "Date,Open,High,Low,Close,Adj Close,Volume"
GOOD_ROWS = [
    "2020-01-02,10,11,9,10.5,10.5,100",
    "2020-01-03,10.5,11,10,10.8,10.8,120",
    "2020-01-06,10.8,11.2,10.6,11,11,90",
]


def write(tmp_path: Path, rows: list[str], header: str = HEADER, name: str = "ABC.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def replace_row(i: int, text: str) -> list[str]:
    rows = list(GOOD_ROWS)
    rows[i] = text
    return rows


CASES = {
    "misspelled column": (
        HEADER.replace("Close,Adj", "Clsoe,Adj"),
        GOOD_ROWS,
        ["missing column 'Close'", "Clsoe"],
    ),
    "unknown column": (HEADER + ",Foo", [r + ",1" for r in GOOD_ROWS], ["unknown column 'Foo'"]),
    "unparseable date": (
        HEADER,
        replace_row(1, "2020-13-45,10.5,11,10,10.8,10.8,120"),
        ["line 3", "cannot parse the date"],
    ),
    "duplicate date": (
        HEADER,
        replace_row(1, "2020-01-02,10.5,11,10,10.8,10.8,120"),
        ["line 3", "duplicate date"],
    ),
    "unsorted dates": (
        HEADER,
        replace_row(2, "2020-01-01,10.8,11.2,10.6,11,11,90"),
        ["line 4", "not sorted"],
    ),
    "NaN price": (
        HEADER,
        replace_row(1, "2020-01-03,10.5,11,10,,10.8,120"),
        ["line 3", "Close", "not a finite number"],
    ),
    "inf price": (
        HEADER,
        replace_row(1, "2020-01-03,10.5,inf,10,10.8,10.8,120"),
        ["line 3", "High"],
    ),
    "zero price": (
        HEADER,
        replace_row(0, "2020-01-02,0,11,0,10.5,10.5,100"),
        ["line 2", "must be > 0"],
    ),
    "negative volume": (
        HEADER,
        replace_row(2, "2020-01-06,10.8,11.2,10.6,11,11,-5"),
        ["line 4", "negative Volume"],
    ),
    "high below close": (
        HEADER,
        replace_row(1, "2020-01-03,10.5,10.6,10,10.8,10.8,120"),
        ["line 3", "High is below"],
    ),
    "low above open": (
        HEADER,
        replace_row(1, "2020-01-03,10.5,11,10.6,10.8,10.8,120"),
        ["line 3", "Low is above"],
    ),
    "mixed time zones": (
        HEADER,
        replace_row(1, "2020-01-03T00:00:00-05:00,10.5,11,10,10.8,10.8,120"),
        ["line 3", "mixed time zones"],
    ),
    "header only": (HEADER, [], ["no rows"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_csv_is_one_clear_line_and_exit_2(tmp_path, run_cli, case):
    header, rows, needles = CASES[case]
    path = write(tmp_path, rows, header)
    result = run_cli("data", "validate", path)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    assert str(path) in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_missing_and_empty_files(tmp_path, run_cli):
    missing = run_cli("data", "validate", tmp_path / "NOPE.csv")
    assert missing.code == 2 and "no such file" in missing.err
    empty = tmp_path / "EMPTY.csv"
    empty.write_text("")
    result = run_cli("data", "validate", empty)
    assert result.code == 2 and "empty" in result.err and str(empty) in result.err


def test_good_file_passes_and_nothing_is_changed(tmp_path, run_cli):
    path = write(tmp_path, GOOD_ROWS)
    before = path.read_bytes()
    result = run_cli("data", "validate", path)
    assert result.code == 0 and "3 bars" in result.out
    assert path.read_bytes() == before


def test_bundled_sample_validates(run_cli):
    result = run_cli("data", "validate", sample_data_dir())
    assert result.code == 0
    assert result.out.count("ok ") == 8


@pytest.mark.parametrize("symbol", ["../x", "/etc/passwd", "a/b", "..", "", "x" * 40, "a b"])
def test_symbols_that_escape_the_folder_are_refused(tmp_path, symbol):
    with pytest.raises(DataError, match="not a valid ticker"):
        validate_symbol(symbol)
    with pytest.raises(DataError):
        load_folder(tmp_path, [symbol])


def test_adjusted_close_scales_ohlc_so_a_split_is_not_a_crash(tmp_path):
    rows = ["2020-01-02,100,101,99,100,50,10", "2020-01-03,50,51,49,50,50,20"]
    write(tmp_path, rows, name="S.csv")
    frame = load_folder(tmp_path, ["S"])["S"]
    assert frame["close"].tolist() == [50.0, 50.0]
    assert frame.loc["2020-01-02", "high"] == pytest.approx(50.5)
    assert frame["volume"].tolist() == [10.0, 20.0]


def test_too_few_bars_names_the_need():
    frame = load_folder(sample_data_dir(), ["SPY"])["SPY"].iloc[:30]
    with pytest.raises(DataError, match="only 30 bars.*at least 100"):
        require_bars(frame, 100, "SPY.csv", "support 60 + query 20 + warm-up")


def test_real_process_prints_no_traceback(tmp_path):
    path = write(tmp_path, replace_row(1, "2020-01-03,10.5,11,10,nan,10.8,120"))
    proc = subprocess.run(
        [sys.executable, "-m", "metabt", "data", "validate", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "line 3" in proc.stderr


@st.composite
def yahoo_rows(draw) -> list[str]:
    """A valid Yahoo-layout file body: ascending business days, consistent OHLC.

    Prices stay within x2 of each other: a one-bar move beyond x10 is a bad print
    (tested in test_guards.py), not a valid file.
    """
    n = draw(st.integers(min_value=2, max_value=30))
    dates = pd.bdate_range("2020-01-01", periods=n)
    rows = []
    for d in dates:
        o, c = (draw(st.floats(50.0, 100.0)) for _ in range(2))
        h = max(o, c) * draw(st.floats(1.0, 1.1))
        lo = min(o, c) * draw(st.floats(0.9, 1.0))
        v = draw(st.integers(0, 10**9))
        rows.append(f"{d.date()},{o!r},{h!r},{lo!r},{c!r},{c!r},{v}")
    return rows


@settings(max_examples=40, deadline=None)
@given(rows=yahoo_rows(), data=st.data())
def test_any_valid_file_loads_unchanged_and_any_broken_row_is_named(tmp_path_factory, rows, data):
    folder = tmp_path_factory.mktemp("prop")
    write(folder, rows, name="P.csv")
    frame = load_folder(folder, ["P"])["P"]
    assert len(frame) == len(rows)
    assert frame["close"].tolist() == [float(r.split(",")[4]) for r in rows]
    i = data.draw(st.integers(0, len(rows) - 1))
    bad = data.draw(st.sampled_from(["", "nan", "-1", "0", "abc"]))
    cells = rows[i].split(",")
    cells[4] = bad
    broken = [*rows[:i], ",".join(cells), *rows[i + 1 :]]
    write(folder, broken, name="P.csv")
    with pytest.raises(DataError, match=rf"line {i + 2} "):
        load_folder(folder, ["P"])

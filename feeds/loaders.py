"""Loading bars: CSV files in Yahoo layout, folders of them, the bundled sample.

Every loader returns canonical frames (see :func:`feeds.validate.validate_bars`)
keyed by symbol, so the rest of metabt never sees a raw file.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import re
from importlib import resources
from pathlib import Path

import pandas as pd

from metabt.feeds.errors import DataError
from metabt.feeds.synthetic import REGIMES_FILE
from metabt.feeds.validate import validate_bars, validate_symbol

log = logging.getLogger(__name__)

Frames = dict[str, pd.DataFrame]

# 1,234.56 split at its comma: a field of 3 digits (with decimals) right after 1-3 digits.
_LEAD = re.compile(r"\d{1,3}")
_THOUSANDS = re.compile(r"\d{3}(\.\d*)?")


def sample_data_dir() -> Path:
    """Folder of the real daily bars shipped with metabt (see its README.md)."""
    return Path(str(resources.files("metabt.feeds") / "sample_data"))


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; "
            "save the file as UTF-8 (or plain ASCII) and re-run"
        ) from None


def _check_layout(path: Path, text: str) -> None:
    """Name the real cause of a file pandas would misread (wrong delimiter, stray commas)."""
    lines = text.splitlines()
    header = lines[0] if lines else ""
    if ";" in header and "," not in header:
        raise DataError(
            f"{path}: line 1: fields are separated by ';', not ','; save it as a "
            "comma-separated file (df.to_csv(path)) and re-run"
        )
    if "\t" in header and "," not in header:
        raise DataError(
            f"{path}: line 1: fields are separated by tabs, not ','; save it as a "
            "comma-separated file (df.to_csv(path)) and re-run"
        )
    width = len(next(csv.reader([header]))) if header else 0
    for number, row in enumerate(csv.reader(lines[1:]), start=2):
        if row and len(row) != width:
            cells = [c.strip() for c in row]
            split_number = any(
                _LEAD.fullmatch(a) and _THOUSANDS.fullmatch(b)
                for a, b in itertools.pairwise(cells[1:])
            )
            hint = (
                "an unquoted thousands separator (write 1234.5, not 1,234.5)?"
                if len(row) > width and split_number
                else "a stray or missing comma?"
            )
            raise DataError(
                f"{path}: line {number}: {len(row)} fields but the header has "
                f"{width}; {hint} Fix that line and re-run"
            )


def load_csv(
    path: str | Path, *, allow_jumps: bool = False, allow_gaps: bool = False
) -> pd.DataFrame:
    """Read and validate one ``SYMBOL.csv`` in Yahoo layout.

    ``allow_jumps`` and ``allow_gaps`` are passed to
    :func:`feeds.validate.validate_bars`.

    Raises
    ------
    DataError
        Missing, empty or unreadable file (a folder, not UTF-8, not comma-separated),
        bad header, or any bad row (see validate_bars).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path}: is a folder, not a CSV file; move it out of the data folder "
            "or name the file you meant"
        )
    if path.exists() and not path.is_file():
        # A FIFO or a device would block or stream forever instead of being read.
        raise DataError(f"{path}: not a regular file; point at a CSV file")
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path or --data folder")
    if path.stat().st_size == 0:
        raise DataError(
            f"{path}: the file is empty; expected a header "
            "Date,Open,High,Low,Close,Adj Close,Volume and rows"
        )
    text = _decode(path, path.read_bytes())
    _check_layout(path, text)
    try:
        # Read as text so validation sees exactly what is written (an empty
        # cell stays '' instead of silently becoming NaN).
        raw = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except pd.errors.ParserError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{path}: not a readable CSV ({first}); expected Yahoo layout") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return validate_bars(
        raw, str(path), line_offset=2, allow_jumps=allow_jumps, allow_gaps=allow_gaps
    )


def list_symbols(folder: Path) -> list[str]:
    """Symbols of every ``*.csv`` in ``folder``, sorted (a synthetic ``regimes.csv`` is not one)."""
    return sorted(p.stem for p in folder.glob("*.csv") if p.name != REGIMES_FILE)


def folder_problems(folder: Path, symbols: list[str]) -> dict[Path, str]:
    """Files of ``symbols`` that must not be read, each with its one-line reason.

    Names equal but for case (the same market twice), a folder named like a
    CSV, and a symlink leading out of ``folder``.
    """
    problems: dict[Path, str] = {}
    seen: dict[str, str] = {}
    for symbol in list_symbols(folder):
        other = seen.setdefault(symbol.upper(), symbol)
        if other != symbol and (symbol in symbols or other in symbols):
            problems[folder / f"{symbol}.csv"] = (
                f"{folder}: {other}.csv and {symbol}.csv differ only in case; the same market "
                "would count twice: keep one"
            )
    root = folder.resolve()
    for symbol in symbols:
        path = folder / f"{symbol}.csv"
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            problems[path] = (
                f"{path}: a symlink to {path.resolve()}, outside the data folder "
                f"{folder}; copy the file into the folder instead"
            )
        elif path.is_dir():
            problems[path] = f"{path}: is a folder, not a CSV file; move it out of the data folder"
    return problems


def check_folder(folder: Path, symbols: list[str]) -> None:
    """Raise DataError for the first of :func:`folder_problems`."""
    problems = folder_problems(folder, symbols)
    if problems:
        raise DataError(next(iter(problems.values())))


def parse_symbols(text: str | None) -> list[str] | None:
    """Parse ``--symbols A,B``: ``None`` or ``all`` mean every file.

    Raises
    ------
    DataError
        Empty (``''``, ``,``), an empty item (``A,,B``), a duplicate (also by case)
        or an unsafe name.
    """
    if text is None or text.strip().lower() == "all":
        return None
    items = [s.strip() for s in text.split(",")]
    if not any(items):
        raise DataError(f"--symbols {text!r} names no symbol; pass A,B or 'all'")
    if not all(items):
        raise DataError(f"--symbols {text!r} has an empty item; write A,B without empty entries")
    return check_symbol_list(items, "--symbols")


def check_symbol_list(symbols: list[str], where: str) -> list[str]:
    """Each symbol valid and named once (case-insensitively); return the list."""
    seen: dict[str, str] = {}
    for symbol in symbols:
        validate_symbol(symbol)
        first = seen.get(symbol.upper())
        seen[symbol.upper()] = symbol
        if first is not None:
            raise DataError(
                f"{where}: {symbol!r} is named twice (as {first!r} and {symbol!r}); "
                "name each symbol once"
            )
    return symbols


def load_folder(
    folder: str | Path,
    symbols: list[str] | None = None,
    *,
    allow_jumps: bool = False,
    allow_gaps: bool = False,
) -> Frames:
    """Load ``SYMBOL.csv`` files from ``folder`` (all of them when ``symbols`` is None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; --data must name a folder of SYMBOL.csv files")
    if symbols is None:
        symbols = list_symbols(folder)
        if not symbols:
            raise DataError(f"{folder}: no .csv files; put SYMBOL.csv files in Yahoo layout there")
    check_symbol_list(symbols, "symbols")
    check_folder(folder, symbols)
    frames: Frames = {}
    for symbol in symbols:
        path = folder / f"{symbol}.csv"
        if not path.is_file():
            have = ", ".join(list_symbols(folder)[:12]) or "none"
            raise DataError(f"{path}: no such file; symbols in {folder}: {have}")
        frames[symbol] = load_csv(path, allow_jumps=allow_jumps, allow_gaps=allow_gaps)
    return frames


def load_sample(symbols: list[str] | None = None, **checks: bool) -> Frames:
    """The bundled real daily bars (offline); ``checks`` as for :func:`load_folder`."""
    return load_folder(sample_data_dir(), symbols, **checks)


def slice_period(frames: Frames, start: object = None, end: object = None) -> Frames:
    """Bars with ``start <= date < end`` (either bound may be None)."""
    out: Frames = {}
    for symbol, frame in frames.items():
        mask = pd.Series(True, index=frame.index)
        if start is not None:
            mask &= frame.index >= pd.Timestamp(start)
        if end is not None:
            mask &= frame.index < pd.Timestamp(end)
        out[symbol] = frame.loc[mask.to_numpy()]
    return out

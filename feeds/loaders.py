"""Loading bars: CSV files in Yahoo layout, folders of them, the bundled sample.

Every loader returns canonical frames (see :func:`feeds.validate.validate_bars`)
keyed by symbol, so the rest of metabt never sees a raw file.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import pandas as pd

from feeds.errors import DataError
from feeds.synthetic import REGIMES_FILE
from feeds.validate import validate_bars, validate_symbol

log = logging.getLogger(__name__)

Frames = dict[str, pd.DataFrame]


def sample_data_dir() -> Path:
    """Folder of the real daily bars shipped with metabt (see its README.md)."""
    return Path(str(resources.files("feeds") / "sample_data"))


def load_csv(path: str | Path) -> pd.DataFrame:
    """Read and validate one ``SYMBOL.csv`` in Yahoo layout.

    Raises
    ------
    DataError
        Missing or empty file, bad header, or any bad row (see validate_bars).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path or --data folder")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header "
                        "Date,Open,High,Low,Close,Adj Close,Volume and rows")
    try:
        # Read as text so validation sees exactly what is written (an empty
        # cell stays '' instead of silently becoming NaN).
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"{path}: not a readable CSV ({first}); expected Yahoo layout") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    return validate_bars(raw, str(path), line_offset=2)


def list_symbols(folder: Path) -> list[str]:
    """Symbols of every ``*.csv`` in ``folder``, sorted (a synthetic ``regimes.csv`` is not one)."""
    return sorted(p.stem for p in folder.glob("*.csv") if p.name != REGIMES_FILE)


def parse_symbols(text: str | None) -> list[str] | None:
    """Parse ``--symbols A,B`` (``None``, empty or ``all`` mean every file)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    symbols = [s.strip() for s in text.split(",") if s.strip()]
    return [validate_symbol(s) for s in symbols]


def load_folder(folder: str | Path, symbols: list[str] | None = None) -> Frames:
    """Load ``SYMBOL.csv`` files from ``folder`` (all of them when ``symbols`` is None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; --data must name a folder of SYMBOL.csv files")
    if symbols is None:
        symbols = list_symbols(folder)
        if not symbols:
            raise DataError(f"{folder}: no .csv files; put SYMBOL.csv files in Yahoo layout there")
    frames: Frames = {}
    for symbol in symbols:
        validate_symbol(symbol)
        path = folder / f"{symbol}.csv"
        if not path.is_file():
            have = ", ".join(list_symbols(folder)[:12]) or "none"
            raise DataError(f"{path}: no such file; symbols in {folder}: {have}")
        frames[symbol] = load_csv(path)
    return frames


def load_sample(symbols: list[str] | None = None) -> Frames:
    """The bundled real daily bars (offline)."""
    return load_folder(sample_data_dir(), symbols)


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

"""The options the study commands share, and how they change a config.

``metabt backtest``, ``train`` and ``sweep`` take the same ``--data``, ``--symbols``,
``--start`` / ``--split`` / ``--end``, ``--out`` and data-checking options;
:func:`resolve_config` applies them (and ``--set``) to the config file, validated
like the file itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metabt.backtests.config import StudyConfig, with_overrides
from metabt.backtests.overrides import load_with_settings
from metabt.feeds.loaders import parse_symbols

DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", help="Folder of SYMBOL.csv files (Yahoo layout) instead of the config's source."
    ),
]
SymbolsOpt = Annotated[
    str | None, typer.Option("--symbols", help="Comma-separated symbols, or 'all'.")
]
StartOpt = Annotated[
    str | None, typer.Option("--start", help="First bar of training (YYYY-MM-DD).")
]
SplitOpt = Annotated[str | None, typer.Option("--split", help="First bar of the test period.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="Last bar of the test period.")]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Run folder to write (new or empty; an earlier run only with --overwrite)."
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace the earlier run in --out (its files are removed first)."
    ),
]
JumpsOpt = Annotated[
    bool,
    typer.Option(
        "--allow-jumps",
        help="Accept one-bar moves beyond x10 that come back (genuine, not bad prints).",
    ),
]
GapsOpt = Annotated[
    bool,
    typer.Option(
        "--allow-gaps", help="Accept more than 30 days between bars (warned in warnings.log)."
    ),
]


def resolve_config(
    config_path: Path,
    settings: list[str] | None,
    data: Path | None,
    symbols: str | None,
    start: str | None,
    split: str | None,
    end: str | None,
    allow_jumps: bool = False,
    allow_gaps: bool = False,
) -> StudyConfig:
    """The config file with ``--set`` settings and the command-line options applied."""
    config = load_with_settings(config_path, settings or [])
    overrides: dict[str, object] = {
        "start": start,
        "split": split,
        "end": end,
        "allow_jumps": allow_jumps or None,
        "allow_gaps": allow_gaps or None,
    }
    if data is not None:
        overrides.update(source="csv", path=str(data))
    if symbols is not None:
        parsed = parse_symbols(symbols)
        overrides["symbols"] = "all" if parsed is None else parsed
    return with_overrides(config, **overrides)

"""The ``metabt`` command line.

Every command turns bad input into one line on stderr and exit code 2; a
traceback means a bug in metabt, never a problem with the user's files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from feeds.errors import DataError
from feeds.loaders import load_csv

app = typer.Typer(
    name="metabt",
    help="Regime-adaptive meta-learned trading policies for Backtrader.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and check bar data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(soft_wrap=True)
# Errors that mean "the input is wrong": one line and exit 2, never a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (DataError,)


@data_app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="CSV files or folders of SYMBOL.csv files.")],
) -> None:
    """Check Yahoo-layout CSV files; print one line per file, exit 2 on the first bad one."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.csv"))
            if not found:
                raise DataError(f"{path}: no .csv files in this folder")
            files.extend(found)
        else:
            files.append(path)
    for path in files:
        frame = load_csv(path)
        console.print(f"[green]ok[/green] {path}: {len(frame)} bars, "
                      f"{frame.index[0].date()} .. {frame.index[-1].date()}")


def main() -> None:
    """Console entry point: run the app, turning user errors into one line."""
    try:
        app()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""``metabt sweep CONFIG``: many studies on Dask, seeds x grid x walk-forward x universes.

It follows the conventions of :mod:`backtests.cli`: the rich console, ``--set
section.key=value`` for any config key, and bad input as one line on stderr with exit code 2
(``backtests.cli.main`` turns :class:`backtests.sweep.SweepError` into that line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metabt.backtests.cli_options import DataOpt, resolve_config
from metabt.backtests.config import parse_period
from metabt.backtests.overrides import SetOpt
from metabt.backtests.sweep import (
    SweepError,
    expand,
    is_finished,
    parse_grid,
    parse_seeds,
    parse_universes,
)


def sweep(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Sweep folder: runs/, sweep.csv, robustness.md, robustness.png."
        ),
    ],
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds", help="Seeds to run, e.g. 0-9 or 0-4,7 (default: the config's seed)."
        ),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="section.key=v1,v2 (TOML values; repeat for more keys)."),
    ] = None,
    walk_forward: Annotated[
        str | None,
        typer.Option("--walk-forward", help="Refit periods, e.g. 1y or 1y,6m,none (a grid axis)."),
    ] = None,
    universe: Annotated[
        list[str] | None,
        typer.Option("--universe", help="One universe as SYM,SYM (repeat for more)."),
    ] = None,
    universes: Annotated[
        Path | None, typer.Option("--universes", help='TOML file of NAME = ["SYM", ...] universes.')
    ] = None,
    data: DataOpt = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", help="Dask scheduler address, e.g. tcp://host:8786 (default: local)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="Local worker processes (ignored with --cluster)."),
    ] = 2,
    settings: SetOpt = None,
) -> None:
    """Run many studies on Dask: seeds x grid x universes.

    Run the product of seeds x grid x walk-forward x universes as studies on Dask.
    Each run is a normal run folder under OUT/runs/<hash>/; finished runs are skipped,
    so running the same command again resumes (or does nothing).
    """
    from metabt.backtests.cli import console
    from metabt.backtests.sweep_exec import run_sweep

    config = resolve_config(config_path, settings, data, None, None, None, None)
    periods: list[str | None] = [None]
    if walk_forward is not None:
        periods = [
            None if p.strip().lower() == "none" else p.strip() for p in walk_forward.split(",")
        ]
        for period in periods:
            try:
                if period is not None:
                    parse_period(period)
            except ValueError:
                raise SweepError(
                    f"--walk-forward {walk_forward!r}: use periods like 1y, 6m, "
                    "2w or none, comma-separated"
                ) from None
    runs = expand(
        config,
        parse_seeds(seeds) if seeds else [config.seed],
        parse_grid(grid or []),
        periods,
        parse_universes(universe or [], universes),
    )
    out.mkdir(parents=True, exist_ok=True)
    todo = sum(1 for r in runs if not is_finished(out, r))
    console.print(
        f"sweep: {len(runs)} runs, {len(runs) - todo} already finished, {todo} to run "
        f"on {cluster or f'{workers} local worker processes'}"
    )
    outcome = run_sweep(runs, out, cluster, workers, console)
    console.print(
        f"ran {len(outcome.ran)}, failed {len(outcome.failed)}, in {outcome.seconds:.1f} s"
    )
    for run_hash, error in outcome.failed.items():
        console.print(f"  failed {run_hash}: {error}")
    console.print(
        f"[bold]sweep table:[/bold] {out / 'sweep.csv'}   "
        f"[bold]robustness:[/bold] {out / 'robustness.md'}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` command to ``app``."""
    app.command("sweep")(sweep)

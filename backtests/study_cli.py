"""``metabt study NAME`` and ``metabt choose-defaults CONFIG``: shipped studies, their tuning.

Both follow the conventions of :mod:`backtests.cli`: the rich console, ``--set
section.key=value`` for any config key, and bad input as one line on stderr with exit code 2
(``backtests.cli.main`` turns the library's errors into that line).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metabt.backtests.config import ConfigError, configs_dir
from metabt.backtests.outdir import check_out
from metabt.backtests.overrides import SetOpt, load_with_settings
from metabt.feeds.did_you_mean import did_you_mean

#: The studies shipped in backtests/configs/, one TOML file each.
STUDIES = tuple(sorted(path.stem for path in configs_dir().glob("*.toml")))


def study(
    name: Annotated[str, typer.Argument(metavar="NAME", help=f"One of {', '.join(STUDIES)}.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder (default runs/NAME, replaced on each run)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the earlier run in --out.")
    ] = False,
    settings: SetOpt = None,
) -> None:
    """Run a shipped study by name.

    Run one of the shipped studies (backtests/configs/NAME.toml) into a run folder.
    """
    from metabt.backtests.cli import console, run_to_folder

    if name not in STUDIES:
        hint = did_you_mean(name, STUDIES)
        raise ConfigError(
            f"study {name!r} is not shipped{'; ' + hint if hint else ''} "
            f"(shipped: {', '.join(STUDIES)}); run any other config with metabt backtest CONFIG"
        )
    config = load_with_settings(configs_dir() / f"{name}.toml", settings or [])
    # Like the demo, the default folder belongs to the command: running it again replaces it.
    folder = out or Path("runs") / name
    check_out(folder, overwrite or out is None)  # before minutes of work, not after
    run_to_folder(config, folder, console=console)
    if config.study == "volatility":  # forecasts scored, no trading comparison to point at
        console.print(f"\n[bold]run folder:[/bold] {folder}   see {folder / 'volatility.md'}")
        return
    metrics = json.loads((folder / "metrics.json").read_text())
    sharpe = metrics.get("meta_adaptive", {}).get("sharpe")
    console.print(
        f"\n[bold]run folder:[/bold] {folder}   meta_adaptive Sharpe {sharpe}   "
        f"[bold]comparison:[/bold] {folder / 'comparison.md'}"
    )


def choose_defaults(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    candidates: Annotated[
        list[str] | None,
        typer.Option(
            "--candidate",
            metavar="SECTION.KEY=VALUE",
            help=(
                "One candidate setting to validate (repeat); none: the config as is. "
                "Several keys of one section at once: SECTION={KEY=VALUE, ...}."
            ),
        ),
    ] = None,
    also_on: Annotated[
        list[str] | None,
        typer.Option(
            "--also-on",
            metavar="SECTION.KEY=VALUE",
            help="Validate on this variant of the config too, e.g. another synthetic market "
            "(repeat); the rule averages over every variant.",
        ),
    ] = None,
    fraction: Annotated[
        float,
        typer.Option(
            "--fraction", min=0.05, max=0.95, help="Share of the training period to validate on."
        ),
    ] = 0.3,
    settings: SetOpt = None,
) -> None:
    """Compare candidate settings on validation data.

    Compare candidate settings on the last part of the training period, never the test period.
    Each --candidate is one full study run on the validation split; --set changes the
    config for all of them. The pick follows one rule for every variant: the highest mean
    validation Sharpe of the rows that trade a learned network.
    """
    from metabt.backtests.choose_defaults import (
        candidate_configs,
        choose,
        learned_mean,
        validation_config,
        validation_sharpes,
    )
    from metabt.backtests.cli import console

    variants = {
        variant: validation_config(
            load_with_settings(config_path, [*(settings or []), *([variant] if variant else [])]),
            fraction,
        )
        for variant in ["", *(also_on or [])]
    }
    # Every candidate on every variant is checked before the first run starts.
    plans = {v: candidate_configs(base, candidates or []) for v, base in variants.items()}
    scores: dict[str, list[float | None]] = {}
    for variant, configs in plans.items():
        base = variants[variant]
        console.print(
            f"validation{' with ' + variant if variant else ''}: train {base.data.start} .. "
            f"{base.data.split}, validate {base.data.split} .. {base.data.end}"
        )
        # Per-run notes (a late indicator, an order re-tried) would drown the one table this
        # prints; they are counted instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = validation_sharpes(configs)
        # One row per strategy, one column per candidate: a study has a dozen strategies and
        # a search a few candidates, so this way round every name stays readable.
        table = Table(title="validation Sharpe (inside the training period)")
        table.add_column("strategy", no_wrap=True)
        for candidate in rows:
            table.add_column(candidate, justify="right", overflow="fold")
        # A candidate may add or drop rows (e.g. meta.compare): every row any of them has.
        names = list(dict.fromkeys(n for sharpe in rows.values() for n in sharpe))
        for i, name in enumerate(names):
            cells = (_sharpe(sharpe.get(name)) for sharpe in rows.values())
            table.add_row(name, *cells, end_section=i == len(names) - 1)
        for candidate, sharpe in rows.items():
            scores.setdefault(candidate, []).append(learned_mean(sharpe))
        table.add_row("learned mean", *(_sharpe(scores[c][-1]) for c in rows), style="bold")
        console.print(table)
        if caught:
            console.print(f"{len({str(w.message) for w in caught})} distinct warnings not shown")
    picked = choose(scores)
    over = f", averaged over the config and {len(variants) - 1} --also-on" if also_on else ""
    console.print(
        "rule: the highest mean validation Sharpe of the rows that trade a learned network"
        f"{over}: "
        + (f"[bold]{picked[0]}[/bold] ({picked[1]:.2f})" if picked else "none has a score")
    )
    console.print(
        f"{len(scores)} setting(s) validated: count them as trials "
        "(validated_settings) in the config you keep"
    )


def _sharpe(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def register(app: typer.Typer) -> None:
    """Add the ``study`` and ``choose-defaults`` commands to ``app``."""
    app.command("study")(study)
    app.command("choose-defaults")(choose_defaults)

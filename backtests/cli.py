"""The ``metabt`` command line.

Every command turns bad input into one line on stderr and exit code 2; a
traceback means a bug in metabt, never a problem with the user's files.
"""

from __future__ import annotations

import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import pandas as pd
import typer
from rich.console import Console

from metabt.backtests.cli_options import (
    DataOpt,
    EndOpt,
    GapsOpt,
    JumpsOpt,
    OutOpt,
    OverwriteOpt,
    SplitOpt,
    StartOpt,
    SymbolsOpt,
    resolve_config,
)
from metabt.backtests.config import (
    ConfigError,
    StudyConfig,
    configs_dir,
)
from metabt.backtests.heartbeat import Heartbeat
from metabt.backtests.outdir import check_out, check_writable
from metabt.backtests.overrides import SetOpt, load_with_settings, with_keys
from metabt.backtests.sweep import SweepError
from metabt.feeds.errors import DataError
from metabt.feeds.loaders import folder_problems, list_symbols, load_csv
from metabt.metamodels.checkpoint_meta import CheckpointError
from metabt.reports.errors import ReportError

if TYPE_CHECKING:
    from joblib import Memory

app = typer.Typer(
    name="metabt",
    help="Regime-adaptive meta-learned trading policies for Backtrader.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold interval notation like [start, split)
)


def _print_version(value: bool) -> None:
    if value:
        from metabt import __version__  # the package metadata: pyproject.toml's version

        print(f"metabt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    pass


data_app = typer.Typer(help="Inspect and check bar data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Piped or captured output gets a fixed wide layout rather than rich's default 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
# Errors that mean "the input is wrong": one line and exit 2, never a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    ConfigError,
    CheckpointError,
    ReportError,
    SweepError,
)


def _default_out(config: StudyConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.study}-{stamp}"


def run_to_folder(
    config: StudyConfig,
    out: Path,
    model: Path | None = None,
    *,
    console: Console = console,
    n_jobs: int = 2,
    progress: bool = True,
    cache: Memory | None = None,
) -> Path:
    """Run one study into the run folder ``out``: what ``metabt backtest`` does after parsing.

    ``metabt sweep`` calls this in its workers (``n_jobs=1``, no progress bars, the
    sweep's ``cache`` of seed-independent work), so a sweep's run folder is the one
    ``metabt backtest`` would have written.
    """
    from metabt.backtests.study import run_study  # heavy imports only for commands that run studies

    # Library warnings (an order re-tried for lack of cash, a late indicator, a gap
    # accepted by --allow-gaps) are kept, not shown one by one: they go to
    # warnings.log in the run folder, counted here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Heartbeat(console):
            run_study(
                config,
                out,
                model_path=model,
                n_jobs=n_jobs,
                progress=progress,
                console=console,
                cache=cache,
            )
    if caught:
        lines = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        (out / "warnings.log").write_text("\n".join(lines) + "\n")
        console.print(f"{len(lines)} distinct warnings, see {out / 'warnings.log'}")
    return out


def _run(
    config: StudyConfig, out: Path | None, model: Path | None = None, overwrite: bool = False
) -> Path:
    out = out or _default_out(config)
    check_out(out, overwrite)  # before minutes of work, not after
    return run_to_folder(config, out, model)


@data_app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="CSV files or folders of SYMBOL.csv files.")],
    allow_jumps: JumpsOpt = False,
    allow_gaps: GapsOpt = False,
) -> None:
    """Check CSV files of bars; report every bad one.

    Check Yahoo-layout CSV files: one line per file, every bad one on stderr, exit 2 if any.
    """
    files: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = [path / f"{symbol}.csv" for symbol in list_symbols(path)]
            if not found:
                errors.append(f"{path}: no .csv files in this folder")
            problems = folder_problems(path, list_symbols(path))
            errors.extend(dict.fromkeys(problems.values()))  # one line per problem
            files.extend(f for f in found if f not in problems)
        else:
            files.append(path)
    for path in files:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                frame = load_csv(path, allow_jumps=allow_jumps, allow_gaps=allow_gaps)
        except DataError as exc:
            errors.append(str(exc))
            continue
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        console.print(
            f"[green]ok[/green] {path}: {len(frame)} bars, "
            f"{frame.index[0].date()} .. {frame.index[-1].date()}"
        )
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if errors:
        raise typer.Exit(2)


@app.command()
def demo(out: OutOpt = None, overwrite: OverwriteOpt = False, settings: SetOpt = None) -> None:
    """Run the main study offline on the bundled data.

    The main job: the basket study on the bundled sample data, offline.
    """
    config = load_with_settings(configs_dir() / "basket.toml", settings or [])
    # The default folder belongs to the demo: running it again replaces it.
    out = _run(config, out or Path("runs") / "demo", overwrite=overwrite or out is None)
    console.print(f"\n[bold]tear sheet:[/bold] {out / 'tearsheet.html'}")
    console.print(
        f"[bold]comparison:[/bold] {out / 'comparison.md'}   "
        f"[bold]equity:[/bold] {out / 'equity.png'}"
    )


@app.command()
def backtest(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    data: DataOpt = None,
    symbols: SymbolsOpt = None,
    start: StartOpt = None,
    split: SplitOpt = None,
    end: EndOpt = None,
    out: OutOpt = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Use this checkpoint instead of meta-training.")
    ] = None,
    refit_every: Annotated[
        str | None,
        typer.Option("--refit-every", help="Expanding walk-forward: re-train every 1y / 6m / 2w."),
    ] = None,
    overwrite: OverwriteOpt = False,
    allow_jumps: JumpsOpt = False,
    allow_gaps: GapsOpt = False,
    settings: SetOpt = None,
) -> None:
    """Run a study: train, tune, trade the test period.

    Meta-train on [start, split), tune the comparators there, trade [split, end].
    """
    config = resolve_config(
        config_path, settings, data, symbols, start, split, end, allow_jumps, allow_gaps
    )
    if refit_every is not None:  # short for --set walk_forward.refit_every=...
        config = with_keys(
            config, {"walk_forward.refit_every": refit_every}, f"--refit-every {refit_every}"
        )
    out = _run(config, out, model, overwrite)
    console.print(f"\n[bold]run folder:[/bold] {out}")


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder to write.")],
    data: DataOpt = None,
    symbols: SymbolsOpt = None,
    start: StartOpt = None,
    split: SplitOpt = None,
    allow_jumps: JumpsOpt = False,
    allow_gaps: GapsOpt = False,
    algorithm: Annotated[
        str | None,
        typer.Option(
            "--algorithm",
            help="Learner, replacing the config's [meta] algorithm: maml, fomaml, reptile, "
            "metasgd, context or memory.",
        ),
    ] = None,
    settings: SetOpt = None,
) -> None:
    """Meta-train only, and save a checkpoint.

    Meta-train on [start, split) of the configured assets and save a checkpoint.
    """
    from metabt.backtests.config import build_specs
    from metabt.backtests.data import bar_dates, load_study_data
    from metabt.backtests.training import train_meta
    from metabt.metamodels.model_io import save_model

    config = resolve_config(
        config_path, settings, data, symbols, start, split, None, allow_jumps, allow_gaps
    )
    if algorithm is not None:
        config = with_keys(config, {"meta.algorithm": algorithm}, f"--algorithm {algorithm}")
    check_writable(out)
    with Heartbeat(console):
        study_data = load_study_data(config)
        model = train_meta(
            study_data.frames,
            config,
            build_specs(config),
            pd.Timestamp(config.data.split),
            regimes=study_data.regimes,
        )
    save_model(model, out, config.model_dump(mode="json", exclude_none=True))
    frames = study_data.frames
    if model.train_period is None:  # train_meta records it on every model it returns
        raise RuntimeError("the trained model records no training period")
    periods = f"trained on bars {bar_dates(frames, *model.train_period)}"
    if model.val_period is None:  # val_fraction = 0: no validation loss exists to quote
        chosen = f"no validation split, the last step ({model.best_step}) kept"
    else:
        best = min(model.history["val_loss"])
        chosen = f"best step {model.best_step}, best validation loss {best:.4f}"
        periods += f", validated on bars {bar_dates(frames, *model.val_period)}"
    console.print(f"saved {out} ({model.algorithm}, {chosen}); {periods}", highlight=False)


@app.command()
def bench(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions per measurement.")] = 5,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="Also measure metabt serve over HTTP (needs the serve extra; ~1 min)."
        ),
    ] = False,
) -> None:
    """Measure speed and detection against their targets.

    Speed, measured side by side in one run: meta-learners vs references, detectors,
    strategy; a progress line per stage, then every figure next to its target.
    """
    import json

    from metabt.backtests.bench_report import bench_stages, bench_table, run_stages, target_summary

    figures = run_stages(bench_stages(repeats, serve), console)
    console.print(bench_table(figures))
    console.print(target_summary(figures), highlight=False)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        console.print(f"wrote {json_path}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """Rebuild the reports of a run folder.

    Rebuild metrics.json, tearsheet.html, comparison.md and equity.png from a run folder.
    """
    from metabt.reports.build import build_reports

    build_reports(run_dir, console=console)
    console.print(f"rebuilt the reports in {run_dir}")


# Imported last: their modules import `console` and helpers from this one.
from metabt.backtests.paper.cli import register as _register_paper  # noqa: E402
from metabt.backtests.serve.cli import register as _register_serve  # noqa: E402
from metabt.backtests.study_cli import register as _register_study  # noqa: E402
from metabt.backtests.sweep_cli import register as _register_sweep  # noqa: E402

_register_study(app)
_register_sweep(app)
_register_paper(app)
_register_serve(app)


def main() -> None:
    """Console entry point: run the app, turning user errors into one line."""
    try:
        app()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

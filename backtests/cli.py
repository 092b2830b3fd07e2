"""The ``metabt`` command line.

Every command turns bad input into one line on stderr and exit code 2; a
traceback means a bug in metabt, never a problem with the user's files.
"""

from __future__ import annotations

import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console

from backtests.config import ConfigError, StudyConfig, configs_dir, load_config, with_overrides
from feeds.errors import DataError
from feeds.loaders import list_symbols, load_csv, parse_symbols
from metamodels.checkpoint import CheckpointError
from reports.errors import ReportError

app = typer.Typer(
    name="metabt",
    help="Regime-adaptive meta-learned trading policies for Backtrader.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold interval notation like [start, split)
)
data_app = typer.Typer(help="Inspect and check bar data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Piped or captured output gets a fixed wide layout, so tables are not cut at 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
# Errors that mean "the input is wrong": one line and exit 2, never a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (DataError, ConfigError, CheckpointError, ReportError)

DataOpt = Annotated[Path | None, typer.Option(
    "--data", help="Folder of SYMBOL.csv files (Yahoo layout) instead of the config's source.")]
SymbolsOpt = Annotated[str | None, typer.Option(
    "--symbols", help="Comma-separated symbols, or 'all'.")]
StartOpt = Annotated[str | None, typer.Option("--start", help="First bar of training (YYYY-MM-DD).")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="First bar of the test period.")]
EndOpt = Annotated[str | None, typer.Option("--end", help="Last bar of the test period.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder to write.")]


def _resolve(config_path: Path, data: Path | None, symbols: str | None, start: str | None,
             split: str | None, end: str | None) -> StudyConfig:
    config = load_config(config_path)
    overrides: dict[str, object] = {"start": start, "split": split, "end": end}
    if data is not None:
        overrides.update(source="csv", path=str(data))
    if symbols is not None:
        parsed = parse_symbols(symbols)
        overrides["symbols"] = "all" if parsed is None else parsed
    return with_overrides(config, **overrides)


def _default_out(config: StudyConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.study}-{stamp}"


def _run(config: StudyConfig, out: Path | None, model: Path | None = None) -> Path:
    from backtests.study import run_study  # heavy imports only for commands that run studies

    out = out or _default_out(config)
    # Library warnings (an order re-tried for lack of cash, a late indicator) are kept,
    # not shown one by one: they go to warnings.log in the run folder, counted here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_study(config, out, model_path=model, console=console)
    if caught:
        lines = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        (out / "warnings.log").write_text("\n".join(lines) + "\n")
        console.print(f"{len(lines)} distinct warnings, see {out / 'warnings.log'}")
    return out


@data_app.command("validate")
def data_validate(
    paths: Annotated[list[Path], typer.Argument(help="CSV files or folders of SYMBOL.csv files.")],
) -> None:
    """Check Yahoo-layout CSV files; print one line per file, exit 2 on the first bad one."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = [path / f"{symbol}.csv" for symbol in list_symbols(path)]
            if not found:
                raise DataError(f"{path}: no .csv files in this folder")
            files.extend(found)
        else:
            files.append(path)
    for path in files:
        frame = load_csv(path)
        console.print(f"[green]ok[/green] {path}: {len(frame)} bars, "
                      f"{frame.index[0].date()} .. {frame.index[-1].date()}")


@app.command()
def demo(out: OutOpt = None) -> None:
    """The main job: the basket study on the bundled sample data, offline."""
    config = load_config(configs_dir() / "basket.toml")
    out = _run(config, out or Path("runs") / "demo")
    console.print(f"\n[bold]tear sheet:[/bold] {out / 'tearsheet.html'}")
    console.print(f"[bold]comparison:[/bold] {out / 'comparison.md'}   "
                  f"[bold]equity:[/bold] {out / 'equity.png'}")


@app.command()
def backtest(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    data: DataOpt = None, symbols: SymbolsOpt = None, start: StartOpt = None,
    split: SplitOpt = None, end: EndOpt = None, out: OutOpt = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Use this checkpoint instead of meta-training.")] = None,
    refit_every: Annotated[str | None, typer.Option(
        "--refit-every", help="Expanding walk-forward: re-train every 1y / 6m / 2w.")] = None,
) -> None:
    """Meta-train on [start, split), tune the comparators there, trade [split, end]."""
    config = _resolve(config_path, data, symbols, start, split, end)
    if refit_every is not None:
        config = config.model_copy(update={"walk_forward": config.walk_forward.model_copy(
            update={"refit_every": refit_every})})
        from backtests.runner import parse_period

        parse_period(refit_every)
    out = _run(config, out, model)
    console.print(f"\n[bold]run folder:[/bold] {out}")


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder to write.")],
    data: DataOpt = None, symbols: SymbolsOpt = None, start: StartOpt = None,
    split: SplitOpt = None,
) -> None:
    """Meta-train on [start, split) of the configured assets and save a checkpoint."""
    from backtests.config import build_specs
    from backtests.data import load_study_data
    from backtests.runner import train_meta
    from metamodels.model_io import save_model

    config = _resolve(config_path, data, symbols, start, split, None)
    model = train_meta(load_study_data(config).frames, config, build_specs(config),
                       pd.Timestamp(config.data.split))
    save_model(model, out, config.model_dump(mode="json", exclude_none=True))
    best = model.history.get("val_loss") or [float("nan")]
    console.print(f"saved {out} ({model.algorithm}, best step {model.best_step}, "
                  f"best validation loss {min(best):.4f}, trained on {model.train_period})")


@app.command()
def bench(
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Also write every figure to this JSON file.")] = None,
    repeats: Annotated[int, typer.Option(help="Timed repetitions per measurement.")] = 5,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Also measure metabt serve over HTTP (needs the serve extra; ~1 min).")
    ] = False,
) -> None:
    """Speed, measured side by side in one run: meta-learners vs references, detectors, strategy."""
    import json

    from rich.table import Table

    from metamodels.bench import run_bench
    from strategies.detector_bench import bench_detectors
    from strategies.speed_bench import bench_strategy_speed

    figures = run_bench(repeats=repeats)
    figures["detectors"] = bench_detectors()["detectors"]
    figures.update(bench_strategy_speed(repeats=max(1, repeats // 2)))
    if serve:
        from backtests.serve.bench import bench_serve

        figures.update(bench_serve())
    table = Table(title="metabt bench (medians)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        if key == "detectors":
            for name, stats in value.items():
                for k, v in stats.items():
                    table.add_row(f"detectors.{name}.{k}", f"{v:.4g}")
        else:
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        console.print(f"wrote {json_path}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """Rebuild metrics.json, tearsheet.html, comparison.md and equity.png from a run folder."""
    from reports.build import build_reports

    build_reports(run_dir, console=console)
    console.print(f"rebuilt the reports in {run_dir}")


from backtests.paper.cli import register as _register_paper
from backtests.serve.cli import register as _register_serve

_register_paper(app)
_register_serve(app)


def main() -> None:
    """Console entry point: run the app, turning user errors into one line."""
    try:
        app()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

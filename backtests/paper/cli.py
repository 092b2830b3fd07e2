"""``metabt paper run | status | report``: the paper-trading commands.

A group rather than ``metabt paper CONFIG`` plus ``metabt paper status``:
click cannot tell a CONFIG argument from a subcommand name, so every paper
action is a subcommand. Bad input raises the library's one-line errors, which
``backtests.cli.main`` turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from metabt.backtests.heartbeat import Heartbeat
from metabt.backtests.overrides import SetOpt
from metabt.backtests.paper.ledger import PaperError
from metabt.backtests.paper.sources import SOURCES

if TYPE_CHECKING:
    from metabt.backtests.paper.loop import BarOutcome

console = Console(soft_wrap=True)

StateOpt = Annotated[Path, typer.Option("--state", help="Folder of the paper state (SQLite).")]


def _date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise PaperError(f"--start {text!r}: expected a date YYYY-MM-DD") from None


def run(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study TOML file.")],
    state: StateOpt,
    source: Annotated[str, typer.Option("--source", help="replay or yfinance.")] = "replay",
    speed: Annotated[
        float,
        typer.Option("--speed", help="Replay speed in bars per second; 0 = as fast as possible."),
    ] = 0.0,
    max_bars: Annotated[
        int | None, typer.Option("--max-bars", help="Stop after this many new bars.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Folder of SYMBOL.csv files instead of the config's source."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Checkpoint folder; default: meta-train on bars before --start."
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--start",
            help="First paper bar (YYYY-MM-DD); default the config's split (replay) "
            "or today (yfinance).",
        ),
    ] = None,
    poll: Annotated[
        float,
        typer.Option("--poll", help="yfinance: seconds between polls while no new bar has closed."),
    ] = 900.0,
    accept_revised_history: Annotated[
        bool,
        typer.Option(
            "--accept-revised-history",
            help="Resume although the source changed bars already traded; the changes are "
            "logged in the ledger.",
        ),
    ] = False,
    allow_jumps: Annotated[
        bool, typer.Option("--allow-jumps", help="Accept one-bar moves beyond x10 that come back.")
    ] = False,
    allow_gaps: Annotated[
        bool, typer.Option("--allow-gaps", help="Accept more than 30 days between bars.")
    ] = False,
    verify_bars: Annotated[
        int,
        typer.Option(
            "--verify-bars",
            help="On resume, re-derive this many last bars from the stored snapshot "
            "before them and refuse a state that differs.",
        ),
    ] = 5,
    settings: SetOpt = None,
) -> None:
    """Paper-trade bar by bar; resumable, crash-safe.

    Paper-trade the meta-adaptive strategy bar by bar; resumable, crash-safe.
    """
    from metabt.backtests.paper.loop import PaperLoop
    from metabt.backtests.paper.session import PaperOptions, open_session

    if source not in SOURCES:
        raise PaperError(f"--source {source!r}: use one of {', '.join(SOURCES)}")
    options = PaperOptions(
        config_path=config_path,
        state_dir=state,
        source=source,
        speed=speed,
        max_bars=max_bars,
        data=data,
        model=model,
        start=_date(start),
        poll_seconds=poll,
        accept_revised_history=accept_revised_history,
        allow_jumps=allow_jumps,
        allow_gaps=allow_gaps,
        settings=tuple(settings or ()),
        verify_bars=verify_bars,
    )
    with Heartbeat(console):  # meta-training a new state's model can take minutes
        session = open_session(options)
    try:
        if session.revisions_accepted:
            console.print(
                f"accepted {session.revisions_accepted} revised fields of bars already "
                "traded (--accept-revised-history); logged in the ledger's revisions "
                "table, the ledger keeps what was traded"
            )
        last = "none" if session.last_bar is None else str(session.last_bar.date())
        console.print(
            f"paper run {session.run_id}: start {session.start.date()}, "
            f"{session.n_processed} bars already traded (last {last}), "
            f"checkpoint {session.checkpoint}"
        )

        def show(o: BarOutcome) -> None:
            console.print(
                f"{o.date.date()}  bar {o.bar_no:>4}  orders {o.n_orders:>2}  "
                f"fills {o.n_fills:>2}  cash {o.cash:>14,.2f}  "
                f"equity {o.equity:>14,.2f}  {o.seconds:.3f} s"
            )

        try:
            done = PaperLoop(session).run(speed=speed, max_bars=max_bars, on_bar=show)
        except KeyboardInterrupt:
            console.print("stopped; every committed bar is kept, run the same command to resume")
            raise typer.Exit(130) from None
        console.print(f"{done} new bars traded; state in {state}")
    finally:
        session.close()


def status(state: StateOpt) -> None:
    """Show a paper state: positions, cash, equity.

    Positions, cash, equity, last bar and last adaptation of a paper state.
    """
    from metabt.backtests.paper.status import print_status, read_status

    print_status(read_status(state), console)


def report(
    state: StateOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Run folder to write (new or empty; an earlier run only with --overwrite).",
        ),
    ],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace the earlier run in --out (its files are removed first)."
        ),
    ] = False,
) -> None:
    """Write a paper state's run folder and tear sheet.

    Write a run folder (returns, positions, trades, adaptations) and its tear sheet.
    """
    from metabt.backtests.outdir import check_out
    from metabt.backtests.paper.status import build_paper_report

    check_out(out, overwrite)
    build_paper_report(state, out, console=console)
    console.print(f"\n[bold]tear sheet:[/bold] {out / 'tearsheet.html'}")


def rebuild(
    state: StateOpt,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Folder of SYMBOL.csv files instead of the stored config's source."
        ),
    ] = None,
) -> None:
    """Re-create a damaged paper state.

    Re-create a damaged paper state from its stored config, checkpoint and the source's bars.
    """
    from metabt.backtests.paper.rebuild import rebuild as rebuild_state

    done = rebuild_state(state, data)
    kept = f"; the damaged database is kept as {done.kept}" if done.kept else ""
    console.print(
        f"rebuilt {state}: {done.n_bars} bars re-traded up to "
        f"{done.last_bar or 'the start'}, same bars as traded{kept}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``paper`` command group (``run``, ``status``, ``report``, ``rebuild``) to ``app``."""
    paper_app = typer.Typer(
        help="Paper-trade the meta strategy on closed daily bars.", no_args_is_help=True
    )
    paper_app.command("run")(run)
    paper_app.command("status")(status)
    paper_app.command("report")(report)
    paper_app.command("rebuild")(rebuild)
    app.add_typer(paper_app, name="paper")

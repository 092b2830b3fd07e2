"""Running a sweep's studies on Dask: a local cluster by default, any scheduler with ``--cluster``.

Both ways are the same code: the runs become Dask tasks on a ``distributed``
client; locally the client owns a ``LocalCluster`` of single-threaded worker
processes, otherwise it connects to a running ``dask scheduler``. A task carries
only the run's resolved config, never bars: each worker loads its study's data
from the data folder itself and holds one study at a time. A task writes its
run folder under a temporary name and renames it into place when the study
finished, so a worker killed mid-run leaves nothing that looks finished; Dask
re-runs the task on another worker. A study that raises is retried once, then
recorded as failed and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from metabt.backtests.sweep import RECORD_FILE, SweepError, SweepRun, is_finished, sweep_table

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
# How long to wait for a scheduler given with --cluster before saying it is not there.
CONNECT_TIMEOUT = "15s"


@dataclass
class Outcome:
    """What one call of :func:`execute` did."""

    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_one(task: dict, out: str) -> str:
    """The Dask task: run one study into ``OUT/runs/<hash>/`` (a no-op if it is there already).

    Calls the same function as ``metabt backtest`` (one worker process, one core,
    so ``n_jobs=1``), in a temporary folder renamed into place at the end.
    """
    from metabt.backtests.cli import run_to_folder
    from metabt.backtests.config import parse_config
    from metabt.backtests.shared_work import sweep_cache

    runs = Path(out) / "runs"
    final = runs / task["hash"]
    if (final / "metrics.json").is_file():
        return task["hash"]
    config = parse_config(task["config"], f"sweep run {task['hash']}")
    tmp = runs / f".{task['hash']}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
    start = time.perf_counter()
    try:
        tmp.mkdir(parents=True)  # at once, so an interrupted run is visible as partial
        run_to_folder(
            config,
            tmp,
            console=Console(file=io.StringIO()),
            n_jobs=1,
            progress=False,
            cache=sweep_cache(Path(out)),
        )
        record = {**task["record"], "seconds": round(time.perf_counter() - start, 2)}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "metrics.json").is_file():  # not a finished twin: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return task["hash"]


def clear_partials(out: Path) -> None:
    """Remove what interrupted runs left behind (never a finished run folder)."""
    for path in (out / "runs").glob(f".*{PARTIAL_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"


def _error_of(future) -> str:
    try:
        return _one_line(future.exception())
    except Exception as exc:  # noqa: BLE001 - a cancelled future raises instead of returning
        return _one_line(exc)


def _client(cluster: str | None, workers: int):
    """A ``distributed.Client`` and, locally, the ``LocalCluster`` it owns (caller closes)."""
    from distributed import Client, LocalCluster

    if cluster is None:
        # One thread per worker process: a worker holds one study at a time.
        local = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Client(local), local
    try:
        return Client(cluster, timeout=CONNECT_TIMEOUT), None
    except (OSError, TimeoutError, ValueError) as exc:
        raise SweepError(
            f"--cluster {cluster}: no Dask scheduler answered ({_one_line(exc)}); "
            "start one with `dask scheduler` and `dask worker ADDRESS`, "
            "or drop --cluster to run locally"
        ) from None


@contextlib.contextmanager
def _scheduler_lost(cluster: str | None):
    """A scheduler that goes away mid-sweep is one line; finished runs are kept for a re-run."""
    try:
        yield
    except OSError as exc:
        raise SweepError(
            f"{cluster or 'local cluster'}: lost the Dask scheduler "
            f"({_one_line(exc)}); finished runs are kept, run the sweep again "
            "to resume"
        ) from None


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "done {task.fields[done]}  failed {task.fields[failed]}  running {task.fields[running]}"
        ),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def execute(
    runs: list[SweepRun],
    out: Path,
    cluster: str | None = None,
    workers: int = 2,
    console: Console | None = None,
) -> Outcome:
    """Run every unfinished run of ``runs`` on Dask; return what ran and what failed.

    Parameters
    ----------
    runs : list of SweepRun
        The sweep; finished runs are skipped, so calling this again resumes.
    out : Path
        The sweep folder; run folders go to ``out/runs/<hash>/``. With ``cluster``
        it must be the same path on every worker (a shared file system).
    cluster : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); None starts a
        local cluster of ``workers`` processes.
    workers : int
        Worker processes of the local cluster (ignored with ``cluster``).
    """
    from distributed import wait

    console = console or Console(stderr=True)
    todo = [r for r in runs if not is_finished(out, r)]
    outcome = Outcome()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    clear_partials(out)
    if not todo:
        return outcome
    start = time.perf_counter()
    client, local = _client(cluster, workers)
    try:
        futures = {
            client.submit(
                run_one,
                {"hash": r.hash, "record": r.record(), "config": r.config.model_dump(mode="json")},
                str(out.resolve()),
                key=f"metabt-run-{r.hash}",
                pure=False,
                retries=1,
            ): r
            for r in todo
        }
        pending = set(futures)
        with _progress(console) as bar, _scheduler_lost(cluster):
            task = bar.add_task("", total=len(todo), done=0, failed=0, running=0)
            while pending:
                try:
                    wait(list(pending), timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    pass
                for future in [f for f in pending if f.done()]:
                    pending.discard(future)
                    run = futures[future]
                    if future.status == "finished":
                        outcome.ran.append(run.hash)
                    else:
                        outcome.failed[run.hash] = _error_of(future)
                        log.warning("run %s failed: %s", run.hash, outcome.failed[run.hash])
                keys = {f.key for f in pending}
                running = sum(len(keys.intersection(v)) for v in client.processing().values())
                bar.update(
                    task,
                    completed=len(todo) - len(pending),
                    done=len(outcome.ran),
                    failed=len(outcome.failed),
                    running=running,
                )
    finally:
        client.close()
        if local is not None:
            local.close()
    clear_partials(out)
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_sweep(
    runs: list[SweepRun],
    out: Path,
    cluster: str | None = None,
    workers: int = 2,
    console: Console | None = None,
) -> Outcome:
    """Run the sweep; write ``sweep.csv``, ``robustness.md`` and ``robustness.png`` in ``out``."""
    from metabt.reports.robustness import write_robustness

    console = console or Console(stderr=True)
    outcome = execute(runs, out, cluster, workers, console)
    table = sweep_table(out, runs, outcome.failed)
    table.to_csv(out / "sweep.csv", index=False)
    write_robustness(table, out / "runs", out)
    return outcome

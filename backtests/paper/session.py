"""Open a paper state: create it on the first run, verify and resume it afterwards.

First run: lock the folder, read the config, get the model (``--model`` or
meta-trained on bars strictly before the paper start and saved into the
state), store the warm-up bars and the run metadata in one transaction.

Every later run: lock, check that the config, the paper start and the
checkpoint (sha256 of its files) are the ones the state was created with,
load the checkpoint (a corrupt one is refused before anything trades), and
re-derive the last bars from the snapshot before them
(:mod:`backtests.paper.verify`). Only then does the loop continue with the next
unseen bar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from metabt.backtests.config import StudyConfig, build_specs, with_overrides
from metabt.backtests.overrides import load_with_settings
from metabt.backtests.paper.history import check_history
from metabt.backtests.paper.ledger import (
    DB_FILE,
    PaperError,
    StateLock,
    bars_digest,
    check_state_dir,
    connect,
    db_path,
    insert_bars,
    read_bars,
    read_meta,
    transaction,
    write_meta,
)
from metabt.backtests.paper.manifest import MANIFEST_FILE, read_manifest, write_manifest
from metabt.backtests.paper.simulate import DEFAULT_CASH
from metabt.backtests.paper.sources import ReplaySource, YahooSource, make_source, utc_today
from metabt.backtests.paper.verify import verify
from metabt.backtests.runner import meta_adaptive_params, warmup_start
from metabt.backtests.training import train_meta
from metabt.feeds.errors import DataError
from metabt.feeds.features import FeatureSpec
from metabt.feeds.loaders import Frames, slice_period
from metabt.metamodels.checkpoint import SIDECAR_FILE, WEIGHTS_FILE
from metabt.metamodels.checkpoint_meta import CheckpointError
from metabt.metamodels.model import MetaModel
from metabt.metamodels.model_io import load_model, save_model
from metabt.strategies.engine import CostSpec

log = logging.getLogger(__name__)

MODEL_DIR = "model"
# Where the bars come from does not change a decision (the stored bars do), so a
# state filled by a replay may be continued from yfinance with the same config.
_SOURCE_KEYS = ("source", "path", "cache_dir", "end", "allow_jumps", "allow_gaps")


@dataclass(frozen=True)
class PaperOptions:
    """What ``metabt paper run`` was asked to do.

    Params:
        config_path (Path): study TOML (strategy, detector, costs, symbols).
        state_dir (Path): folder of the SQLite state, the lock and a trained checkpoint.
        source (str): ``"replay"`` or ``"yfinance"``.
        speed (float): replay speed in bars per second; 0 = as fast as possible.
        max_bars (int | None): stop after this many new bars (None = until the source ends).
        data (Path | None): folder of SYMBOL.csv files instead of the config's source.
        model (Path | None): checkpoint folder; None = meta-train before the start.
        start (date | None): first paper bar; default the split (replay) or today (yfinance).
        poll_seconds (float): yfinance: wait between polls when no new bar has closed.
        accept_revised_history (bool): resume although the source changed bars already
            traded (the changes are logged in the ledger's ``revisions`` table).
        allow_jumps, allow_gaps (bool): as ``--allow-jumps`` / ``--allow-gaps`` of a backtest.
        settings (tuple[str, ...]): ``--set section.key=value`` overrides of the config.
        verify_bars (int): on resume, re-derive this many last bars from the snapshot
            before them and compare with the stored rows and snapshots.
    """

    config_path: Path
    state_dir: Path
    source: str = "replay"
    speed: float = 0.0
    max_bars: int | None = None
    data: Path | None = None
    model: Path | None = None
    start: date | None = None
    poll_seconds: float = 900.0
    accept_revised_history: bool = False
    allow_jumps: bool = False
    allow_gaps: bool = False
    settings: tuple[str, ...] = ()
    verify_bars: int = 5


@dataclass
class Session:
    """An open, locked, verified paper state and everything needed to trade on."""

    state_dir: Path
    conn: sqlite3.Connection
    lock: StateLock
    config: StudyConfig
    source: ReplaySource | YahooSource
    start: pd.Timestamp
    run_id: str
    params: dict
    costs: CostSpec
    features: FeatureSpec
    cash: float
    checkpoint: Path
    frames: Frames = field(default_factory=dict)
    last_bar: pd.Timestamp | None = None
    n_processed: int = 0
    revisions_accepted: int = 0
    verify_bars: int = 5
    bars_sha256: str = ""  # digest of the stored bars (ledger.bars_digest), kept per bar

    def close(self) -> None:
        self.conn.close()
        self.lock.release()


def resolve_config(options: PaperOptions) -> StudyConfig:
    config = load_with_settings(options.config_path, options.settings)
    overrides: dict[str, object] = {
        "allow_jumps": options.allow_jumps or None,
        "allow_gaps": options.allow_gaps or None,
    }
    if options.data is not None:
        overrides.update(source="csv", path=str(options.data))
    return with_overrides(config, **overrides)


def config_hash(config: StudyConfig) -> str:
    """sha256 of the resolved config, leaving out where the bars are read from."""
    raw = config.model_dump(mode="json")
    raw["data"] = {k: v for k, v in raw["data"].items() if k not in _SOURCE_KEYS}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def checkpoint_sha256(folder: Path) -> str:
    """sha256 over the checkpoint's sidecar and weights (any change to either changes it)."""
    digest = hashlib.sha256()
    for name in (SIDECAR_FILE, WEIGHTS_FILE):
        path = Path(folder) / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint folder is incomplete")
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _load_checked(path: Path, start: pd.Timestamp, config: StudyConfig) -> MetaModel:
    model, last_bar = load_model(path)
    if last_bar >= start:
        raise DataError(
            f"{path}: trained on bars up to {last_bar.date()}, on or after the paper "
            f"start {start.date()}; it has seen the period it would trade. Re-train "
            "or pass a later --start"
        )
    if model.feature_spec != build_specs(config).features:
        raise DataError(
            f"{path}: its feature spec differs from the config's [features]; use "
            "the config it was trained with"
        )
    return model


def _frames_from_rows(rows: list[tuple], assets: list[str]) -> Frames:
    table = pd.DataFrame(
        rows, columns=["date", "asset", "open", "high", "low", "close", "volume", "live"]
    )
    frames: Frames = {}
    # The feeds go to Cerebro in the source's order, as in the backtest: orders are
    # submitted (and so funded at the next open) in that order.
    for asset in assets:
        part = table.loc[table["asset"] == asset]
        frame = part[["open", "high", "low", "close", "volume"]].astype(float)
        frame.index = pd.DatetimeIndex(pd.to_datetime(part["date"]), name="date")
        frames[asset] = frame
    return frames


def _bar_rows(frames: Frames, live: int) -> list[tuple]:
    return [
        (d.date().isoformat(), s, *map(float, row), live)
        for s, f in frames.items()
        for d, row in zip(f.index, f[["open", "high", "low", "close", "volume"]].to_numpy())
    ]


def paper_start(
    options: PaperOptions, config: StudyConfig, source: ReplaySource | YahooSource
) -> pd.Timestamp:
    """The first paper bar: ``--start``, else the split (replay) or today (yfinance)."""
    start = pd.Timestamp(
        options.start or (config.data.split if options.source == "replay" else utc_today())
    )
    if isinstance(source, ReplaySource):
        last = source.last_date()
        if last is not None and start > last:
            raise DataError(
                f"--start {start.date()} is after the last bar of the data "
                f"({last.date()}); nothing would be traded. Pick a start on or "
                "before it, or use --source yfinance for live bars"
            )
    return start


def initialise(
    state: Path,
    conn: sqlite3.Connection,
    config: StudyConfig,
    source: ReplaySource | YahooSource,
    start: pd.Timestamp,
    source_name: str,
    model: Path | None,
    progress: bool,
    stored_as: str | None = None,
) -> dict[str, str]:
    """Store the warm-up bars and the run metadata of a new state (one transaction).

    ``model`` is a checkpoint to trade (None: meta-train on the bars before
    ``start`` and save it in ``state/model``); ``stored_as`` overrides how the
    checkpoint's path is recorded (a rebuild keeps the original record).
    Returns the metadata written.
    """
    history = source.history(start)
    empty = [s for s, f in history.items() if f.empty]
    if not history or empty:
        raise DataError(
            f"no bars before the paper start {start.date()} for "
            f"{', '.join(empty) or 'any symbol'}; pick a later --start"
        )
    if model is not None:
        model_path = Path(model).resolve()
        _load_checked(model_path, start, config)
    else:
        trained = train_meta(history, config, build_specs(config), start, progress)
        model_path = state / MODEL_DIR
        save_model(trained, model_path, config.model_dump(mode="json", exclude_none=True))
    ckpt = checkpoint_sha256(model_path)
    weights = hashlib.sha256((model_path / WEIGHTS_FILE).read_bytes()).hexdigest()
    chash = config_hash(config)
    run_id = hashlib.sha256(
        f"{chash}|{start.date()}|{weights}|{DEFAULT_CASH}".encode()
    ).hexdigest()[:12]
    warm = slice_period(history, warmup_start(config, start), None)
    stored = stored_as or (
        str(model_path.relative_to(state.resolve()))
        if model_path.is_relative_to(state.resolve())
        else str(model_path)
    )
    meta = {
        "format": "metabt-paper-1",
        "run_id": run_id,
        "start": str(start.date()),
        "cash": repr(DEFAULT_CASH),
        "config_hash": chash,
        "config_json": json.dumps(config.model_dump(mode="json"), sort_keys=True),
        "checkpoint": stored,
        "checkpoint_sha256": ckpt,
        "source": source_name,
        "assets": json.dumps(list(warm)),
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    with transaction(conn):
        insert_bars(conn, _bar_rows(warm, live=0))
        write_meta(conn, meta)
    log.info(
        "new paper state %s: run %s, start %s, checkpoint %s", state, run_id, start.date(), stored
    )
    return meta


def _checkpoint_path(state: Path, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else state.resolve() / path


def _resume(
    options: PaperOptions, conn: sqlite3.Connection, meta: dict[str, str], config: StudyConfig
) -> tuple[pd.Timestamp, Path, MetaModel]:
    state = Path(options.state_dir)
    if meta.get("config_hash") != config_hash(config):
        raise PaperError(
            f"{state}: this state was started with another config (hash "
            f"{meta.get('config_hash', '?')[:12]}); pass the same CONFIG or use "
            "a new --state folder"
        )
    start = pd.Timestamp(meta["start"])
    if options.start is not None and pd.Timestamp(options.start) != start:
        raise PaperError(
            f"{state}: this state trades from {start.date()}, not --start "
            f"{options.start}; drop --start or use a new --state folder"
        )
    path = _checkpoint_path(state, meta["checkpoint"])
    if options.model is not None and Path(options.model).resolve() != path:
        raise PaperError(
            f"{state}: this state trades checkpoint {path}, not --model "
            f"{options.model}; drop --model or use a new --state folder"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: the checkpoint this paper state trades is gone; restore "
            "it (same files) to resume"
        )
    digest = checkpoint_sha256(path)
    if digest != meta["checkpoint_sha256"]:
        raise CheckpointError(
            f"{path}: changed since this paper state started (sha256 "
            f"{digest[:12]}... vs {meta['checkpoint_sha256'][:12]}...); "
            "restore the original checkpoint or use a new --state folder"
        )
    return start, path, _load_checked(path, start, config)


def open_session(options: PaperOptions, progress: bool = True) -> Session:
    """Lock, create or resume, and verify the paper state of ``options.state_dir``.

    Raises
    ------
    PaperError
        Locked by another process, another config / start / checkpoint, or the
        replayed ledger differs from the stored one.
    CheckpointError
        The checkpoint is missing, corrupt or changed (nothing is traded on it).
    ConfigError, DataError
        Bad config or data.
    """
    config = resolve_config(options)  # a bad config fails before anything is created
    state = Path(options.state_dir)
    check_state_dir(state)
    manifest = read_manifest(state)
    if manifest is not None and not db_path(state).is_file():
        raise _lost(state)
    source = make_source(options.source, config, state, options.poll_seconds)
    # A new state: refuse a useless start before the folder is created or locked.
    start = None if db_path(state).is_file() else paper_start(options, config, source)
    lock = StateLock(state).acquire()
    conn = None
    try:
        conn = connect(state)
        if not read_meta(conn):
            if manifest is not None:
                raise _lost(state)
            start = start or paper_start(options, config, source)
            meta = initialise(
                state, conn, config, source, start, options.source, options.model, progress
            )
            write_manifest(state, {**meta, "last_bar": "", "bars_sha256": bars_digest(conn)})
        meta = read_meta(conn)
        start, path, model = _resume(options, conn, meta, config)
        if options.verify_bars < 1:
            raise PaperError(f"--verify-bars must be >= 1, got {options.verify_bars}")
        session = make_session(state, conn, lock, config, source, meta, path, model)
        session.verify_bars = options.verify_bars
        verify(session)
        session.revisions_accepted = len(check_history(session, options.accept_revised_history))
        return session
    except BaseException:
        if conn is not None:
            conn.close()
        lock.release()
        raise


def _lost(state: Path) -> PaperError:
    return PaperError(
        f"{state}: {DB_FILE} is missing or empty but {MANIFEST_FILE} shows a paper "
        f"run was started here; re-create it with `metabt paper rebuild --state "
        f"{state}`"
    )


def make_session(
    state: Path,
    conn: sqlite3.Connection,
    lock: StateLock,
    config: StudyConfig,
    source: ReplaySource | YahooSource,
    meta: dict[str, str],
    checkpoint: Path,
    model: MetaModel,
) -> Session:
    """A :class:`Session` over the stored bars and ledger of ``conn``."""
    specs = build_specs(config)
    session = Session(
        state_dir=state,
        conn=conn,
        lock=lock,
        config=config,
        source=source,
        start=pd.Timestamp(meta["start"]),
        run_id=meta["run_id"],
        params=meta_adaptive_params(config, model, specs),
        costs=specs.costs,
        features=specs.features,
        cash=float(meta["cash"]),
        checkpoint=checkpoint,
        frames=_frames_from_rows(read_bars(conn), json.loads(meta["assets"])),
    )
    processed = conn.execute("SELECT max(date), count(*) FROM processed").fetchone()
    session.last_bar = None if processed[0] is None else pd.Timestamp(processed[0])
    session.n_processed = int(processed[1])
    session.bars_sha256 = bars_digest(conn)
    return session

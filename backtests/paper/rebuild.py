"""``metabt paper rebuild``: re-create a damaged or lost ledger from what it was built on.

Every row of a paper ledger is a function of the config, the checkpoint, the
paper start and the bars: the strategy is replayed over the stored bars on
every resume anyway. So a state whose SQLite file is damaged is re-derived
from ``paper.json`` (see :mod:`backtests.paper.manifest`) and the source's
bars, in a scratch folder; only when the result agrees with the manifest (same
run id, same last bar, the same bars to the bit) does it replace the damaged
file, which is kept beside it as ``paper.sqlite.damaged-<time>``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metabt.backtests.config import parse_config, with_overrides
from metabt.backtests.paper.ledger import (
    DB_FILE,
    PaperError,
    StateLock,
    bars_digest,
    connect,
    db_path,
    flat_bars_digest,
)
from metabt.backtests.paper.loop import PaperLoop
from metabt.backtests.paper.manifest import MANIFEST_FILE, read_manifest, write_manifest
from metabt.backtests.paper.session import (
    _checkpoint_path,
    _load_checked,
    checkpoint_sha256,
    config_hash,
    initialise,
    make_session,
)
from metabt.backtests.paper.sources import make_source

log = logging.getLogger(__name__)

SCRATCH = ".rebuild"


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did."""

    n_bars: int
    last_bar: str
    kept: Path | None  # where the damaged database was moved (None if there was none)


def _refuse(state: Path, what: str) -> PaperError:
    return PaperError(f"{state}: cannot rebuild, {what}; nothing was changed")


def rebuild(state_dir: Path, data: Path | None = None) -> Rebuilt:
    """Re-create ``state_dir``'s database from its manifest, checkpoint and source bars.

    Parameters
    ----------
    state_dir : Path
        The paper state folder (holds ``paper.json``).
    data : Path, optional
        Folder of SYMBOL.csv files instead of the stored config's source.

    Raises
    ------
    PaperError
        No manifest, the checkpoint changed, or the source's bars do not give
        back the traded ones; the state is left as it was.
    """
    state = Path(state_dir)
    manifest = read_manifest(state)
    if manifest is None:
        raise _refuse(
            state,
            f"there is no {MANIFEST_FILE} (the state was made by an older "
            "metabt, or this is not a paper state); start a new --state folder",
        )
    with StateLock(state):
        config = parse_config(json.loads(manifest["config_json"]), f"{state / MANIFEST_FILE}")
        if data is not None:
            config = with_overrides(config, source="csv", path=str(data))
        if config_hash(config) != manifest["config_hash"]:
            raise _refuse(
                state,
                "the stored config no longer hashes to the recorded value "
                "(another metabt version?)",
            )
        start = pd.Timestamp(manifest["start"])
        checkpoint = _checkpoint_path(state, manifest["checkpoint"])
        if (
            not checkpoint.is_dir()
            or checkpoint_sha256(checkpoint) != manifest["checkpoint_sha256"]
        ):
            raise _refuse(
                state,
                f"the checkpoint {checkpoint} is missing or changed since the "
                "run started; restore it (same files)",
            )
        model = _load_checked(checkpoint, start, config)
        source = make_source(manifest["source"], config, state)
        scratch = state / SCRATCH
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            conn = connect(scratch)
            try:
                meta = initialise(
                    state,
                    conn,
                    config,
                    source,
                    start,
                    manifest["source"],
                    checkpoint,
                    progress=False,
                    stored_as=manifest["checkpoint"],
                )
                if meta["run_id"] != manifest["run_id"]:
                    raise _refuse(
                        state,
                        f"the rebuilt run id {meta['run_id']} is not the stored "
                        f"{manifest['run_id']}",
                    )
                session = make_session(
                    scratch, conn, StateLock(scratch), config, source, meta, checkpoint, model
                )
                last = manifest.get("last_bar") or ""
                if last:
                    PaperLoop(session).run(until=pd.Timestamp(last))
                got = "" if session.last_bar is None else str(session.last_bar.date())
                if got != last:
                    raise _refuse(
                        state,
                        f"the source's bars end at {got or 'the start'}, the "
                        f"state had traded up to {last}; restore that data "
                        "(--data DIR)",
                    )
                digest = bars_digest(conn)
                recorded = manifest.get("bars_sha256")
                if recorded and recorded not in (digest, flat_bars_digest(conn)):
                    raise _refuse(
                        state,
                        "the source's bars are not the ones that were traded "
                        "(a vendor revision or another file); restore the "
                        "original data (--data DIR)",
                    )
                n_bars = session.n_processed
            finally:
                conn.close()
            kept = None
            old = db_path(state)
            stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                path = Path(f"{old}{suffix}")
                if path.exists():
                    moved = state / f"{DB_FILE}.damaged-{stamp}{suffix}"
                    path.rename(moved)
                    kept = kept or moved
            (scratch / DB_FILE).rename(old)
            write_manifest(state, {**manifest, "bars_sha256": digest})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("rebuilt %s: %d bars re-traded up to %s", state, n_bars, last)
    return Rebuilt(n_bars, last, kept)

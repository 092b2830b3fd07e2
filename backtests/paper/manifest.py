"""``paper.json``: what a paper state was started with, kept outside its database.

The SQLite file holds everything a bar changes; this small JSON file holds the
few facts needed to re-derive it if that file is damaged or lost: the config,
the paper start, the checkpoint and its sha256, the source, the run id, the
last traded bar and the sha256 of the stored bars. ``metabt paper rebuild``
re-trades from these and refuses if the result does not match.

It is written by replacing the whole file (write a temporary file, fsync,
rename), so a crash leaves the old or the new version, never half of one. It
may lag the database by one bar after a crash; the database is the record,
this file only the way back to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from metabt.backtests.paper.ledger import PaperError

MANIFEST_FILE = "paper.json"
#: Meta keys copied from the database into the manifest.
KEYS = (
    "format",
    "run_id",
    "start",
    "cash",
    "config_hash",
    "config_json",
    "checkpoint",
    "checkpoint_sha256",
    "source",
    "assets",
    "created",
)


def manifest_path(state_dir: Path) -> Path:
    return Path(state_dir) / MANIFEST_FILE


def write_manifest(state_dir: Path, values: dict[str, str]) -> None:
    """Replace ``paper.json`` atomically with ``values``."""
    path = manifest_path(state_dir)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(values, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(state_dir: Path) -> dict[str, str] | None:
    """The manifest of ``state_dir``, or None when there is none.

    Raises
    ------
    PaperError
        The file exists but is not the JSON object metabt wrote.
    """
    path = manifest_path(state_dir)
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise PaperError(
            f"{path}: unreadable ({exc}); it cannot be used to rebuild the state"
        ) from None
    missing = [k for k in KEYS if not isinstance(values, dict) or k not in values]
    if missing:
        raise PaperError(
            f"{path}: missing key {missing[0]!r}; it was not written by metabt "
            "and cannot be used to rebuild the state"
        )
    return values


def record_bar(state_dir: Path, last_bar: str, bars_sha256: str) -> None:
    """Note the last committed bar and the digest of the stored bars (if a manifest exists)."""
    values = read_manifest(state_dir)
    if values is None:
        return
    values.update(last_bar=last_bar, bars_sha256=bars_sha256)
    write_manifest(state_dir, values)

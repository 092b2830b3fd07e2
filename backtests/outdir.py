"""Where a run folder may be written: checked before any work, never two runs mixed.

A study takes minutes; finding out at the end that ``--out`` is not writable
throws them away, and writing into a folder that already holds another run
leaves files of both (an old ``detection.json`` beside new returns). So
``--out`` is checked first: a new or empty folder is fine, an existing run
folder is replaced only with ``--overwrite`` (its old files removed before the
new ones are written), and anything else is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from metabt.feeds.errors import DataError

#: Files only a metabt run folder (backtest, demo or paper report) holds together.
RUN_MARKERS = ("config.toml", "study.json")


class OutputError(DataError):
    """``--out`` cannot be used as asked; one line naming the folder and the fix."""


def is_run_folder(path: Path) -> bool:
    """``path`` is a folder a metabt run wrote (it holds every file of RUN_MARKERS)."""
    return path.is_dir() and all((path / name).is_file() for name in RUN_MARKERS)


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_writable(path: Path, flag: str = "--out") -> None:
    """Refuse ``path`` if a folder could not be created there and written to.

    Probes with a temporary file in the nearest existing folder, removed at
    once, so a permission, a read-only disk or a file in the way shows now.
    """
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise OutputError(f"{flag} {path}: {base} is a file, not a folder; pick another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".metabt-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{flag} {path}: cannot write in {base} ({exc.strerror}); pick a writable folder"
        ) from None


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` unless it is new, empty, or a run folder and ``overwrite`` is set."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: a file is in the way; pick a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not is_run_folder(out):
            raise OutputError(
                f"--out {out}: the folder exists and is not a metabt run folder; "
                "pick a new or empty folder (nothing was written)"
            )
        if not overwrite:
            raise OutputError(
                f"--out {out}: holds an earlier run; pass --overwrite to replace "
                "it, or pick a new folder"
            )
    check_writable(out)


def clear_run_folder(out: Path) -> Path:
    """Empty ``out`` if it holds an earlier run, create it if needed; return it.

    Raises
    ------
    OutputError
        ``out`` holds files but is not a run folder (it is never emptied).
    """
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not is_run_folder(out):
            raise OutputError(
                f"{out}: the folder exists and is not a metabt run folder; "
                "pick a new or empty folder"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out

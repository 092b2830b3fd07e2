"""Checkpoints: weights in safetensors, metadata in a JSON sidecar, never pickle.

A checkpoint is a **folder** holding two files::

    my_run/checkpoint/
        model.safetensors   flat dict name -> float32 tensor (Meta-SGD inner LRs under "inner_lr.")
        model.json          sidecar: algorithm, policy/feature/task spec, inner loop, training
                            period, resolved config, tensor table and the sha256 of the weights

A folder rather than two loose files because it can be swapped in as one unit: a save builds the
complete new folder beside the old one and renames it into place, so an interrupted save leaves
either the previous checkpoint or the new one, never a mix of the two.

Loading never unpickles anything (no ``torch.load``, no ``pickle``): a file from someone else's
machine can at worst be refused. Every refusal is a :class:`CheckpointError` with one line naming
the file, what is wrong and what to do.

This module does the file handling (atomic save, load, pickle refusal, hash and tensor-table
checks); the sidecar schema, its validation and :class:`CheckpointError` live in
:mod:`metamodels.checkpoint_meta`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError

from metabt.metamodels.checkpoint_meta import (
    FORMAT,
    FORMAT_VERSION,
    INNER_LR_PREFIX,
    CheckpointError,
    CheckpointMeta,
    validate_meta,
)

__all__ = [
    "SIDECAR_FILE",
    "WEIGHTS_FILE",
    "load_checkpoint",
    "save_checkpoint",
    "split_inner_lrs",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
_BACKUP_TAG = ".old-"  # ".<name>.old-<token>": the previous checkpoint while a save swaps folders
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces
# torch.save writes a zip archive (new format) or a raw pickle (legacy); pickle.dump with
# protocol >= 2 starts with the PROTO opcode 0x80 followed by the protocol number.
_PICKLE_MAGIC = tuple(b"\x80" + bytes([p]) for p in range(2, 6)) + (b"PK\x03\x04",)


def split_inner_lrs(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split loaded tensors into policy parameters and Meta-SGD inner LRs.

    Returns
    -------
    params, lrs
        ``lrs`` is keyed by the parameter name it belongs to (the prefix removed).
    """
    params = {n: t for n, t in tensors.items() if not n.startswith(INNER_LR_PREFIX)}
    lrs = {
        n[len(INNER_LR_PREFIX) :]: t for n, t in tensors.items() if n.startswith(INNER_LR_PREFIX)
    }
    return params, lrs


def save_checkpoint(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any] | CheckpointMeta,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    Parameters
    ----------
    path
        Checkpoint folder. If it exists it must be an earlier checkpoint (it is replaced as a
        whole); any other existing file or folder is refused rather than overwritten.
    tensors
        Flat dict name -> finite float32 tensor. Meta-SGD inner LRs go under ``"inner_lr."``
        followed by the parameter's name.
    metadata
        The sidecar fields. ``format``, ``format_version``, ``tensors`` and ``sha256`` are
        computed here (any given values are replaced); ``created`` defaults to now (UTC).

    Raises
    ------
    CheckpointError
        Bad tensors or metadata, or a target path that is not a checkpoint. Nothing is written.
    """
    path = Path(path)
    where = f"checkpoint metadata for {path}"
    if not isinstance(metadata, (dict, CheckpointMeta)):
        raise CheckpointError(
            f"{where}: metadata must be a dict or CheckpointMeta, not {type(metadata).__name__}"
        )
    clean = _prepare_tensors(tensors, where)
    blob = safetensors.torch.save(clean, metadata={"format": "pt"})
    fields = metadata.model_dump() if isinstance(metadata, CheckpointMeta) else dict(metadata)
    fields.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        tensors={n: {"shape": list(t.shape), "dtype": "float32"} for n, t in clean.items()},
        sha256=hashlib.sha256(blob).hexdigest(),
    )
    fields.setdefault("created", datetime.now(timezone.utc).replace(microsecond=0))
    meta = validate_meta(fields, where, fix="fix the metadata passed to save_checkpoint")
    try:
        text = json.dumps(meta.model_dump(mode="json"), indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{where}: not JSON-serialisable ({exc}); use plain "
            "str/int/float/bool/list/dict values, no NaN"
        ) from None
    _check_target(path)
    _write_folder_atomically(path, {WEIGHTS_FILE: blob, SIDECAR_FILE: (text + "\n").encode()})
    logger.info("saved checkpoint %s (%d tensors, sha256 %s)", path, len(clean), meta.sha256[:12])
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Load and verify a checkpoint folder (the folder, or either file inside it).

    Every sidecar field, the sha256 of the weights, the tensor table and the finiteness of every
    weight are checked; nothing is ever unpickled.

    Returns
    -------
    tensors, meta
        The float32 tensors by name and the validated sidecar.

    Raises
    ------
    CheckpointError
        Anything missing, malformed, tampered with or inconsistent.
    """
    folder = _resolve_folder(Path(path))
    meta = _read_sidecar(folder / SIDECAR_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: weights file missing; the checkpoint is incomplete, "
            "copy the whole folder or save it again"
        )
    data = weights.read_bytes()
    _check_safetensors_layout(data, weights)
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta.sha256:
        raise CheckpointError(
            f"{weights}: sha256 {digest[:12]}... does not match the sidecar's "
            f"{meta.sha256[:12]}...; the file was modified or truncated after "
            "saving, use an intact copy"
        )
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as exc:
        raise CheckpointError(
            f"{weights}: unreadable safetensors file ({exc}); use an intact copy"
        ) from None
    _check_table(tensors, meta, weights)
    for name, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise CheckpointError(
                f"{weights}: tensor '{name}' holds {bad} NaN/inf values; the "
                "training run diverged, retrain or use an earlier checkpoint"
            )
    logger.info("loaded checkpoint %s (%s, %d tensors)", folder, meta.algorithm, len(tensors))
    return tensors, meta


# --- saving -----------------------------------------------------------------------------------


def _prepare_tensors(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, dict) or not tensors:
        raise CheckpointError(f"{where}: tensors must be a non-empty dict name -> torch.Tensor")
    clean = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise CheckpointError(
                f"{where}: tensor name {name!r} is not allowed; use a non-empty string"
            )
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: '{name}' is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype != torch.float32:
            raise CheckpointError(
                f"{where}: '{name}' is {t.dtype}; checkpoints hold float32, convert with .float()"
            )
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{where}: '{name}' holds NaN/inf; refusing to save diverged weights"
            )
        # clone: safetensors refuses tensors sharing storage (e.g. tied or sliced weights)
        clean[name] = t.detach().to("cpu").contiguous().clone()
    return clean


def _check_target(path: Path) -> None:
    if not path.exists():
        return
    entries = {p.name for p in path.iterdir()} if path.is_dir() else None
    if entries is None or not entries <= {WEIGHTS_FILE, SIDECAR_FILE}:
        raise CheckpointError(
            f"{path} exists and is not a metabt checkpoint folder; refusing to "
            "replace it, choose another path or remove it yourself"
        )


def _write_synced(file: Path, data: bytes) -> None:
    with open(file, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    # Makes the renames durable on POSIX; directories cannot be opened for fsync on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_folder_atomically(path: Path, files: dict[str, bytes]) -> None:
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = parent / f".{path.name}.tmp-{token}"
    os.mkdir(tmp)
    try:
        for name, data in files.items():
            _write_synced(tmp / name, data)
        _fsync_dir(tmp)
        if not path.exists():
            os.replace(tmp, path)
        else:
            # A non-empty folder cannot be renamed over another, so the old one steps aside
            # first. If the process dies between the two renames the previous checkpoint
            # survives under the backup name, and load_checkpoint says how to restore it.
            old = parent / f".{path.name}{_BACKUP_TAG}{token}"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _fsync_dir(parent)  # the new folder is durable before the backup goes
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --- loading ----------------------------------------------------------------------------------


def _looks_pickled(head: bytes) -> bool:
    return head.startswith(_PICKLE_MAGIC)


def _pickle_refusal(file: Path) -> CheckpointError:
    return CheckpointError(
        f"{file}: this looks like a pickle/torch.save file; metabt only loads "
        "safetensors checkpoints (it never unpickles: that can run code)"
    )


def _resolve_folder(path: Path) -> Path:
    if path.is_file():
        if path.name in (WEIGHTS_FILE, SIDECAR_FILE):
            return path.parent
        with open(path, "rb") as fh:
            if _looks_pickled(fh.read(4)):
                raise _pickle_refusal(path)
        raise CheckpointError(
            f"{path} is a file; a metabt checkpoint is a folder holding "
            f"{WEIGHTS_FILE} and {SIDECAR_FILE}, pass that folder"
        )
    if path.is_dir():
        return path
    backups = sorted(
        path.parent.glob(f".{path.name}{_BACKUP_TAG}*"), key=lambda p: p.stat().st_mtime
    )
    if backups:
        raise CheckpointError(
            f"checkpoint {path} not found, but an interrupted save left the "
            f"previous one at {backups[-1]}; rename that folder to {path}"
        )
    raise CheckpointError(
        f"checkpoint {path} not found; pass the folder `metabt train --out` (or a run's "
        f"model/ folder) holds, with {WEIGHTS_FILE} and {SIDECAR_FILE}"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key '{key}'")
        seen[key] = value
    return seen


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON value {name}")


def _read_sidecar(file: Path) -> CheckpointMeta:
    if not file.is_file():
        raise CheckpointError(
            f"{file}: sidecar missing; a checkpoint folder holds {WEIGHTS_FILE} "
            f"and {SIDECAR_FILE}, saved together: copy the whole folder or train again"
        )
    try:
        raw = json.loads(
            file.read_bytes().decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{file}: not valid JSON ({exc}); restore the sidecar from an "
            "intact copy of the checkpoint"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{file}: not a metabt checkpoint sidecar (format {got!r}, "
            f"expected {FORMAT!r}); pass a folder written by save_checkpoint"
        )
    version = raw.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format_version {version} is newer than this metabt reads "
            f"({FORMAT_VERSION}); upgrade metabt"
        )
    if isinstance(version, int) and version < FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format_version {version} predates variable-length "
            f"adaptation windows (this metabt reads {FORMAT_VERSION}); re-train "
            "the model with `metabt train`"
        )
    return validate_meta(raw, str(file), fix="re-save the checkpoint with save_checkpoint")


def _check_safetensors_layout(data: bytes, file: Path) -> None:
    """Refuse anything that is not safetensors before any parser sees it."""
    if _looks_pickled(data[:4]):
        raise _pickle_refusal(file)
    if len(data) < 8:
        raise CheckpointError(
            f"{file}: truncated ({len(data)} bytes), not a safetensors file; use an intact copy"
        )
    (size,) = struct.unpack("<Q", data[:8])
    if size < 2 or size > _MAX_HEADER or 8 + size > len(data):
        raise CheckpointError(
            f"{file}: not a safetensors file or truncated (header length {size}, "
            f"file {len(data)} bytes); metabt only loads safetensors checkpoints"
        )
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{file}: safetensors header is not a JSON object; the file is "
            "corrupt or not safetensors, use an intact copy"
        )


def _check_table(tensors: dict[str, torch.Tensor], meta: CheckpointMeta, file: Path) -> None:
    problems = []
    for name in sorted(set(meta.tensors) - set(tensors)):
        problems.append(f"tensor '{name}' listed in {SIDECAR_FILE} is missing from the weights")
    for name in sorted(set(tensors) - set(meta.tensors)):
        problems.append(f"tensor '{name}' is in the weights but not listed in {SIDECAR_FILE}")
    for name in sorted(set(tensors) & set(meta.tensors)):
        want, t = meta.tensors[name], tensors[name]
        if list(t.shape) != want.shape:
            problems.append(f"tensor '{name}' has shape {list(t.shape)}, sidecar says {want.shape}")
        elif str(t.dtype).removeprefix("torch.") != want.dtype:
            problems.append(f"tensor '{name}' is {t.dtype}, sidecar says {want.dtype}")
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{file}: {problems[0]}{more}; weights and sidecar do not belong "
            "together, use the pair saved together"
        )

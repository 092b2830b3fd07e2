"""The models a service serves: every checkpoint under a folder, verified once at start.

Each checkpoint folder (``model.safetensors`` + ``model.json``) is loaded with
:func:`metamodels.model_io.load_model`, which checks the sidecar, the sha256 of
the weights, the tensor table and that no weight is NaN/inf. The study config
stored in the sidecar gives the strategy settings the backtest would trade the
model with. A checkpoint that fails any check is skipped with a logged reason
and is never served: a request for it gets 404, exactly like a name that was
never there.

A model's id is its folder's path below the models folder with ``/`` written
as ``.`` (``runs/demo/model`` under ``runs`` is ``demo.model``). Requests look
ids up in a dict, so no id ever reaches the file system.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metabt.backtests.config import ConfigError, Specs, StudyConfig, build_specs, parse_config
from metabt.backtests.paper.session import checkpoint_sha256
from metabt.backtests.serve import ServeError
from metabt.feeds.errors import DataError
from metabt.metamodels.checkpoint import SIDECAR_FILE
from metabt.metamodels.checkpoint_meta import CheckpointError
from metabt.metamodels.model import MetaModel
from metabt.metamodels.model_io import load_model

log = logging.getLogger(__name__)

MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_id(text: str) -> bool:
    """True for an id made of letters, digits and ``. _ -`` only, with no ``..``."""
    return bool(MODEL_ID.fullmatch(text)) and ".." not in text


@dataclass(frozen=True)
class ServedModel:
    """A verified checkpoint and the study config it was trained with.

    Attributes
    ----------
    id : str
        Name in the URL (``/v1/models/{id}``).
    path : Path
        The checkpoint folder.
    model : MetaModel
        The loaded policy.
    config : StudyConfig
        The resolved config stored in the sidecar: strategy, detector and
        costs a backtest of this model uses.
    specs : Specs
        The library objects of ``config``.
    sha256 : str
        sha256 of the weights file (the sidecar's, verified on load).
    created : str
        When the checkpoint was saved (ISO, UTC).
    """

    id: str
    path: Path
    model: MetaModel
    config: StudyConfig
    specs: Specs
    sha256: str
    created: str

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models/{id}`` answers."""
        data = self.config.data
        assets = data.symbols if isinstance(data.symbols, list) else "all"
        seen = self.model.seen_period()
        start, end = (None, None) if seen is None else (str(d.date()) for d in seen)
        return {
            "id": self.id,
            "algorithm": self.model.algorithm,
            "training_period": {"start": start, "end": end},
            "features": {
                **dataclasses.asdict(self.specs.features),
                "names": list(self.specs.features.names),
            },
            "assets": assets,
            "data_source": data.source,
            "policy": {
                **dataclasses.asdict(self.model.policy_spec),
                "hidden": list(self.model.policy_spec.hidden),
            },
            "inner_steps": self.model.inner_steps,
            "strategy": self.config.strategy.model_dump(mode="json"),
            "detector": self.config.detector.model_dump(mode="json"),
            "min_bars": self.config.strategy.warmup_bars,
            "sha256": self.sha256,
            "created": self.created,
        }


def model_id(root: Path, folder: Path) -> str:
    rel = folder.relative_to(root)
    return ".".join(rel.parts) if rel.parts else root.resolve().name


def load_one(root: Path, folder: Path) -> ServedModel:
    """Load and check one checkpoint folder.

    Raises
    ------
    CheckpointError, ConfigError, DataError
        Anything that makes the checkpoint unfit to serve (one line).
    """
    ident = model_id(root, folder)
    if not valid_id(ident):
        raise DataError(
            f"{folder}: its id {ident!r} is not a valid model id (letters, digits "
            "and . _ - only); rename the folder"
        )
    before = checkpoint_sha256(folder)
    model, _ = load_model(folder)
    sidecar = json.loads((folder / SIDECAR_FILE).read_text())
    # The files were hashed before and after loading: what is served is what was checked.
    if checkpoint_sha256(folder) != before:
        raise CheckpointError(
            f"{folder}: changed while it was being loaded; restart the service "
            "once the copy is complete"
        )
    config = parse_config(sidecar["config"], f"{folder / SIDECAR_FILE} (stored config)")
    specs = build_specs(config)
    if model.feature_spec != specs.features:
        raise CheckpointError(
            f"{folder}: the sidecar's feature spec differs from its stored "
            "config's [features]; re-save the checkpoint from its training run"
        )
    return ServedModel(
        ident, folder, model, config, specs, str(sidecar["sha256"]), str(sidecar["created"])
    )


def load_registry(root: Path) -> dict[str, ServedModel]:
    """Every servable checkpoint under ``root``, keyed by id; the rest logged and skipped.

    Raises
    ------
    ServeError
        ``root`` is not a folder, or no checkpoint under it can be served.
    """
    root = Path(root)
    if not root.is_dir():
        raise ServeError(
            f"--models {root}: not a folder; pass the folder holding checkpoint "
            "folders (model.safetensors + model.json)"
        )
    models: dict[str, ServedModel] = {}
    skipped = 0
    for sidecar in sorted(root.rglob(SIDECAR_FILE)):
        folder = sidecar.parent
        # Dot-folders are a save's temporary or backup copies, never a finished checkpoint.
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        try:
            served = load_one(root, folder)
        except (CheckpointError, ConfigError, DataError, OSError, ValueError, KeyError) as exc:
            skipped += 1
            log.warning("not serving %s: %s", folder, exc)
            continue
        if served.id in models:
            skipped += 1
            log.warning(
                "not serving %s: id %r is already taken by %s",
                folder,
                served.id,
                models[served.id].path,
            )
            continue
        models[served.id] = served
        log.info(
            "serving %s as %r (%s, trained %s .. %s, sha256 %s)",
            folder,
            served.id,
            served.model.algorithm,
            *(str(d.date()) for d in served.model.seen_period() or ()),
            served.sha256[:12],
        )
    if not models:
        found = (
            f"{skipped} checkpoints there were refused (see the log)"
            if skipped
            else "no checkpoint folder (model.json + model.safetensors) there"
        )
        raise ServeError(
            f"--models {root}: nothing to serve, {found}; train one with "
            "`metabt train CONFIG --out DIR`"
        )
    return models

"""The FastAPI application of ``metabt serve``: routes only, the work is in the sibling modules.

Routes (OpenAPI at ``/docs``):

- ``GET /health`` (no key): status, version, number of models.
- ``GET /v1/models``, ``GET /v1/models/{id}``: what each served checkpoint is.
- ``POST /v1/models/{id}/signal``: the decision on the last bar of the posted history.
- ``GET /v1/paper/{name}``: read-only status of a paper-trading state.

The handlers are plain ``def``: FastAPI runs them in its thread pool, so a
long backtest never blocks the event loop that answers ``/health``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, FastAPI

from metabt.backtests.paper.ledger import PaperError
from metabt.backtests.paper.status import read_status
from metabt.backtests.serve import ServeError
from metabt.backtests.serve.auth import KeyChecker, load_keys
from metabt.backtests.serve.decision import decide_last_bar
from metabt.backtests.serve.errors import ApiError, BodyLimit, install_error_handlers
from metabt.backtests.serve.registry import ServedModel, load_registry, valid_id
from metabt.backtests.serve.schemas import (
    AssetDecision,
    SignalRequest,
    SignalResponse,
    apply_settings,
    frames_from_request,
)
from metabt.feeds.errors import DataError

log = logging.getLogger(__name__)

OPTIONS_ENV = "METABT_SERVE_OPTIONS"
DEFAULT_MAX_BODY = 4_000_000
_PAPER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ServeOptions:
    """How the service was started (keys themselves are never stored here).

    Params:
        models (str): folder searched for checkpoint folders.
        paper (str | None): folder whose sub-folders are paper states (``--state`` folders).
        keys_file (str | None): file of API keys, one per line (besides ``METABT_API_KEYS``).
        insecure_local (bool): serve without keys (only on 127.0.0.1).
        max_body_bytes (int): largest request body accepted, in bytes.
    """

    models: str
    paper: str | None = None
    keys_file: str | None = None
    insecure_local: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY


def _version() -> str:
    try:
        return metadata.version("metabt")
    except metadata.PackageNotFoundError:
        return "unknown"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, timestamps -> ISO dates, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def paper_status(root: Path | None, name: str) -> dict[str, Any]:
    """``GET /v1/paper/{name}``: the state opened read-only (never locked, never written)."""
    if root is None:
        raise ApiError(
            404,
            "not_found",
            "this server serves no paper states; start it with "
            "--paper DIR (the folder holding --state folders)",
        )
    if not _PAPER_NAME.fullmatch(name) or ".." in name:
        raise ApiError(
            400,
            "invalid_name",
            f"paper state name {name!r}: letters, digits and . _ - only, no paths",
        )
    state = (root / name).resolve()
    if state.parent != root.resolve() or not state.is_dir():
        raise ApiError(404, "not_found", f"no paper state {name!r}")
    try:
        status = read_status(state)
    except PaperError as exc:
        raise ApiError(
            404, "not_found", f"paper state {name!r}: {str(exc).split(': ', 1)[-1]}"
        ) from None
    return _clean(
        {
            "name": name,
            "run_id": status.run_id,
            "start": status.start,
            "checkpoint": Path(status.checkpoint).name,
            "bars_traded": status.n_bars,
            "last_bar": status.last_bar,
            "cash": status.cash,
            "equity": status.equity,
            "positions": status.positions.to_dict(orient="records"),
            "pending_orders": status.pending.to_dict(orient="records"),
            "last_adaptation": status.last_adaptation,
            "mean_seconds_per_bar": status.mean_seconds,
        }
    )


def create_app(
    options: ServeOptions,
    keys: tuple[str, ...] | None = None,
    models: dict[str, ServedModel] | None = None,
) -> FastAPI:
    """Build the application: load the models, the keys and the routes.

    Raises
    ------
    ServeError
        No key configured without ``insecure_local``, or nothing to serve.
    """
    keys = (
        load_keys(Path(options.keys_file) if options.keys_file else None) if keys is None else keys
    )
    if not keys and not options.insecure_local:
        raise ServeError(
            "no API key configured: set METABT_API_KEYS=key1,key2 or pass "
            "--keys-file FILE (or --insecure-local to serve 127.0.0.1 without keys)"
        )
    registry = load_registry(Path(options.models)) if models is None else models
    paper_root = Path(options.paper) if options.paper else None
    checker = KeyChecker(keys)

    app = FastAPI(
        title="metabt model service",
        version=_version(),
        description="Decisions of metabt's meta-learned trading policies over HTTP: "
        "the same target weights `metabt backtest` trades.",
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    def served(model_id: str) -> ServedModel:
        if not valid_id(model_id):
            raise ApiError(
                400,
                "invalid_id",
                f"model id {model_id!r}: letters, digits and . _ - only, no paths",
            )
        found = registry.get(model_id)
        if found is None:
            raise ApiError(
                404, "not_found", f"no model {model_id!r}; GET /v1/models lists the ones served"
            )
        return found

    @app.get("/health", tags=["service"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": _version(), "models": len(registry)}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(checker.dependency())])

    @v1.get("/models", tags=["models"])
    def list_models() -> dict[str, Any]:
        return {"models": [m.describe() for m in registry.values()]}

    @v1.get("/models/{model_id}", tags=["models"])
    def get_model(model_id: str) -> dict[str, Any]:
        return served(model_id).describe()

    @v1.post("/models/{model_id}/signal", tags=["models"], response_model=SignalResponse)
    def signal(model_id: str, request: SignalRequest) -> SignalResponse:
        found = served(model_id)
        config = apply_settings(found.config, request.settings)
        frames = frames_from_request(request.bars, config.strategy.warmup_bars)
        try:
            decision = decide_last_bar(found.model, frames, config)
        except DataError as exc:  # the engine's own checks of the frames
            raise ApiError(422, "invalid_bars", str(exc)) from None
        return SignalResponse(
            model=found.id,
            asof=decision.asof.date().isoformat(),
            assets={s: AssetDecision(**d) for s, d in decision.assets.items()},
            warnings=decision.warnings,
        )

    @v1.get("/paper/{name}", tags=["paper"])
    def paper(name: str) -> dict[str, Any]:
        return paper_status(paper_root, name)

    app.include_router(v1)
    mode = "API keys" if checker.enabled else "NO authentication (--insecure-local)"
    log.info("metabt serve: %d models, %s", len(registry), mode)
    return app


def options_to_env(options: ServeOptions) -> str:
    return json.dumps(asdict(options))


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the options travel in ``METABT_SERVE_OPTIONS``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:  %(name)s: %(message)s")
    return create_app(ServeOptions(**json.loads(os.environ[OPTIONS_ENV])))

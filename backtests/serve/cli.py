"""``metabt serve``: start the REST model service under uvicorn.

Everything that can be wrong with the options (no API key, keys file
unreadable, a non-local host with ``--insecure-local``, nothing to serve) is
checked here, before uvicorn starts, and raises the one-line
:class:`backtests.serve.ServeError` that ``backtests.cli.main`` turns
into exit code 2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from metabt.backtests.serve import ServeError

LOCAL_HOST = "127.0.0.1"


def serve(
    models: Annotated[
        Path,
        typer.Option(
            "--models",
            help="Folder searched for checkpoint folders (model.safetensors + "
            "model.json); each is verified and served under its path as id.",
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = LOCAL_HOST,
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes.", min=1)] = 1,
    keys_file: Annotated[
        Path | None,
        typer.Option(
            "--keys-file",
            help="File of API keys, one per line (also read: METABT_API_KEYS, comma-separated).",
        ),
    ] = None,
    insecure_local: Annotated[
        bool,
        typer.Option("--insecure-local", help="Serve without API keys; only allowed on 127.0.0.1."),
    ] = False,
    paper: Annotated[
        Path | None,
        typer.Option(
            "--paper",
            help="Folder holding paper-trading --state folders, for GET "
            "/v1/paper/{name} (read-only).",
        ),
    ] = None,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            "--max-body-bytes", help="Largest request body accepted (413 above).", min=1024
        ),
    ] = 4_000_000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve trained models' decisions over HTTP.

    Serve the decisions of trained models over HTTP (FastAPI + uvicorn, OpenAPI at /docs).
    """
    try:
        import uvicorn

        from metabt.backtests.serve.app import OPTIONS_ENV, ServeOptions, create_app, options_to_env
        from metabt.backtests.serve.auth import load_keys
    except ImportError as exc:
        raise ServeError(
            f"metabt serve needs the 'serve' extra ({exc.name} is missing); "
            "install it with pip install 'metabt[serve]'"
        ) from None
    keys = load_keys(keys_file)
    if insecure_local and host != LOCAL_HOST:
        raise ServeError(
            f"--insecure-local serves without keys and so binds {LOCAL_HOST} only, "
            f"not {host}; drop --host or configure API keys"
        )
    if paper is not None and not paper.is_dir():
        raise ServeError(
            f"--paper {paper}: not a folder; pass the folder holding paper --state folders"
        )
    options = ServeOptions(
        models=str(models.resolve()),
        paper=None if paper is None else str(paper.resolve()),
        keys_file=None if keys_file is None else str(keys_file.resolve()),
        insecure_local=insecure_local and not keys,
        max_body_bytes=max_body_bytes,
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:  %(name)s: %(message)s")
    # Built here even with several workers: a bad option or an empty folder fails now,
    # with one line, instead of in every worker.
    app = create_app(options, keys=keys)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    os.environ[OPTIONS_ENV] = options_to_env(options)
    uvicorn.run(
        "metabt.backtests.serve.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command("serve")(serve)

"""``metabt serve``: the meta-learned policy's decisions over HTTP (FastAPI + uvicorn).

Modules, one job each: :mod:`~backtests.serve.app` (routes),
:mod:`~backtests.serve.auth` (API keys), :mod:`~backtests.serve.schemas`
(request models and bar validation), :mod:`~backtests.serve.registry`
(verified checkpoints), :mod:`~backtests.serve.decision` (the backtest's
decision on the last bar), :mod:`~backtests.serve.errors` (JSON errors, body
cap), :mod:`~backtests.serve.cli` (the command), :mod:`~backtests.serve.bench`
(latency and throughput against a real server).

This package file imports nothing heavy, so ``metabt`` works without the
``serve`` extra installed.
"""

from __future__ import annotations

from metabt.feeds.errors import DataError


class ServeError(DataError):
    """``metabt serve`` cannot start as asked (no key, bad folder, no model); one line."""

"""Latency and throughput of ``metabt serve``, measured against a real uvicorn process.

A small model is meta-trained on a seeded synthetic market (a few seconds), a
``metabt serve`` subprocess is started on a free port, and the figures are
taken over HTTP from this process, as a client would see them:

- ``serve_1asset_p50_ms`` / ``serve_1asset_p99_ms``: ``/signal`` for one asset
  with 300 bars, sequential requests;
- ``serve_8assets_p50_ms``: the same with 8 assets;
- ``serve_rps`` and ``serve_errors``: requests per second with ``workers``
  worker processes and ``clients`` concurrent clients for ``seconds``.

Speed is measured here, never asserted in a test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

BENCH_CONFIG = {
    "title": "serve bench",
    "study": "synthetic",
    "seed": 0,
    "data": {"source": "synthetic", "start": "2005-01-03", "split": "2006-09-01"},
    "synthetic": {"n_assets": 8, "n_bars": 700, "seed": 1},
    "meta": {"meta_steps": 4, "tasks_per_step": 8, "eval_every": 2, "val_tasks": 16},
    # short look-backs: 700 bars would not cover the default 252-bar inputs and 120-bar windows
    "features": {"horizons": [5, 21], "macd": [[8, 24]]},
    "strategy": {"max_window": 60},
    "ensemble": {"seeds": 1},
}
N_BARS = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rows(frame: pd.DataFrame) -> list[dict]:
    cols = frame[["open", "high", "low", "close", "volume"]].to_numpy().tolist()
    return [
        {"date": d.date().isoformat(), "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for d, (o, h, lo, c, v) in zip(frame.index, cols)
    ]


def _train(folder: Path) -> dict[str, pd.DataFrame]:
    from metabt.backtests.config import build_specs, parse_config
    from metabt.backtests.data import load_study_data
    from metabt.backtests.training import train_meta
    from metabt.metamodels.model_io import save_model

    config = parse_config(BENCH_CONFIG, "serve bench config")
    frames = load_study_data(config).frames
    model = train_meta(
        frames, config, build_specs(config), pd.Timestamp(config.data.split), progress=False
    )
    save_model(model, folder / "bench", config.model_dump(mode="json", exclude_none=True))
    return {s: f.iloc[-N_BARS:] for s, f in frames.items()}


class ServeProcess:
    """A real ``metabt serve`` subprocess on a free local port (the benchmark's and the tests').

    ``args`` are the command's options after ``--port``; ``keys`` go to ``METABT_API_KEYS``;
    the server's output goes to ``log`` when given (and is quoted if it fails to start).
    """

    def __init__(
        self,
        args: list[str],
        keys: str,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        out = open(log, "w") if log is not None else None  # noqa: SIM115
        self._out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metabt", "serve", "--port", str(self.port), *args],
            cwd=cwd,
            env={**os.environ, **(env or {}), "METABT_API_KEYS": keys},
            stdout=out if out is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def _output(self) -> str:
        return f":\n{self.log.read_text()}" if self.log is not None else ""

    def wait(self, seconds: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"metabt serve exited with code {self.proc.returncode}{self._output()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"metabt serve did not answer /health within {seconds} s{self._output()}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._out is not None:
            self._out.close()


def _server(models: Path, workers: int, key: str) -> ServeProcess:
    return ServeProcess(
        ["--models", str(models), "--workers", str(workers), "--log-level", "warning"], key
    )


def _latencies(url: str, key: str, body: dict, n: int) -> np.ndarray:
    import httpx

    out = []
    with httpx.Client(
        base_url=url, timeout=60.0, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        client.post("/v1/models/bench/signal", json=body).raise_for_status()  # warm-up
        for _ in range(n):
            t0 = time.perf_counter()
            client.post("/v1/models/bench/signal", json=body).raise_for_status()
            out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


async def _load(url: str, key: str, body: dict, clients: int, seconds: float) -> tuple[int, int]:
    import httpx

    done = errors = 0
    stop = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal done, errors
        while time.monotonic() < stop:
            try:
                response = await client.post("/v1/models/bench/signal", json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            done += ok
            errors += not ok

    async with httpx.AsyncClient(
        base_url=url,
        timeout=60.0,
        limits=httpx.Limits(max_connections=clients),
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        await asyncio.gather(*(one(client) for _ in range(clients)))
    return done, errors


def bench_serve(
    n_requests: int = 50, workers: int = 2, clients: int = 32, seconds: float = 10.0
) -> dict[str, float]:
    """Start a real ``metabt serve`` and measure ``/signal`` latency and throughput."""
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="metabt-serve-bench-") as tmp:
        frames = _train(Path(tmp))
        one = {"bars": {s: _rows(f) for s, f in list(frames.items())[:1]}}
        eight = {"bars": {s: _rows(f) for s, f in frames.items()}}
        figures: dict[str, float] = {}
        server = _server(Path(tmp), 1, key)
        try:
            server.wait()
            lat1 = _latencies(server.url, key, one, n_requests)
            lat8 = _latencies(server.url, key, eight, max(5, n_requests // 3))
        finally:
            server.stop()
        figures.update(
            serve_1asset_p50_ms=float(np.percentile(lat1, 50)),
            serve_1asset_p99_ms=float(np.percentile(lat1, 99)),
            serve_8assets_p50_ms=float(np.percentile(lat8, 50)),
        )
        server = _server(Path(tmp), workers, key)
        try:
            server.wait()
            t0 = time.perf_counter()
            done, errors = asyncio.run(_load(server.url, key, one, clients, seconds))
            elapsed = time.perf_counter() - t0
        finally:
            server.stop()
        figures.update(
            serve_rps=done / elapsed,
            serve_errors=float(errors),
            serve_workers=float(workers),
            serve_clients=float(clients),
        )
    return figures


if __name__ == "__main__":
    for name, value in bench_serve().items():
        print(f"{name:>24} {value:10.2f}")

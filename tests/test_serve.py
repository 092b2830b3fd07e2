"""The REST model service, tested against a real uvicorn process on a free port.

What a client relies on: the signal for a history is the decision `metabt backtest` takes on
its last bar; bad input is refused with a status and a line naming the field and row; no key,
no answer; a tampered checkpoint is never served; concurrent requests get the sequential
answers; the paper endpoint never writes to or locks the ledger.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import shutil
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from metabt.backtests.config import build_specs, dump_config, parse_config
from metabt.backtests.data import load_study_data
from metabt.backtests.paper.ledger import DB_FILE, StateLock
from metabt.backtests.paper.loop import PaperLoop
from metabt.backtests.paper.session import PaperOptions, open_session
from metabt.backtests.paper.status import read_status
from metabt.backtests.runner import meta_adaptive_params, warmup_start
from metabt.backtests.serve.bench import ServeProcess
from metabt.backtests.training import train_meta
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.loaders import slice_period
from metabt.metamodels.model_io import load_model, save_model
from metabt.strategies.engine import run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
MAX_BODY = 1_000_000
N_DATES = 50  # dates of the test period on which /signal is compared with the backtest
RAW_CONFIG = {
    "title": "serve test",
    "study": "synthetic",
    "seed": 2,
    "data": {"source": "synthetic", "start": "2005-01-03", "split": "2006-09-01"},
    "synthetic": {"n_assets": 2, "n_bars": 620, "mean_duration": 60.0, "seed": 5},
    "meta": {"meta_steps": 4, "tasks_per_step": 8, "eval_every": 2, "val_tasks": 16},
    # short look-backs: the market is 620 bars, the default 252-bar inputs would eat it
    "features": {"horizons": [5, 21], "macd": [[8, 24]]},
    "strategy": {"warmup_bars": 100, "min_window": 40, "max_window": 80},
}


def _rows(frame: pd.DataFrame) -> list[dict]:
    return [
        {"date": d.date().isoformat(), "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for d, (o, h, lo, c, v) in zip(
            frame.index, frame[["open", "high", "low", "close", "volume"]].to_numpy().tolist()
        )
    ]


def _body(frames: dict[str, pd.DataFrame], end: pd.Timestamp | None = None, **extra) -> dict:
    return {
        "bars": {s: _rows(f.loc[:end] if end is not None else f) for s, f in frames.items()},
        **extra,
    }


def _files(folder: Path) -> dict[str, tuple[str, int] | None]:
    """sha256 and mtime of every file in a paper state folder.

    The ``-shm`` file is SQLite's shared-memory index of the WAL, where every reader
    (``metabt paper status`` too) takes its read mark: only its existence is compared.
    """
    return {
        p.name: None
        if p.name.endswith("-shm")
        else (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


class Server(ServeProcess):
    """A ``metabt serve`` subprocess (the benchmark's) and an authenticated client for it."""

    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(
            args,
            f"{KEY},{OTHER_KEY}",
            log,
            cwd=ROOT,
            env={"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )
        self.client = httpx.Client(
            base_url=self.url, timeout=60.0, headers={"Authorization": f"Bearer {KEY}"}
        )

    def stop(self) -> None:
        self.client.close()
        super().stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic market, a briefly trained checkpoint (+ a tampered copy), a paper state,
    the backtest of the test period and a running server."""
    root = tmp_path_factory.mktemp("serve")
    config = parse_config(RAW_CONFIG, "serve test config")
    specs = build_specs(config)
    frames = load_study_data(config).frames
    split = pd.Timestamp(config.data.split)
    model = train_meta(frames, config, specs, split, progress=False)
    models = root / "models"
    ckpt = save_model(model, models / "syn", config.model_dump(mode="json", exclude_none=True))
    tampered = models / "tampered"
    shutil.copytree(ckpt, tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))

    # What `metabt backtest` runs for meta_adaptive on the test period.
    loaded, _ = load_model(ckpt)
    history = slice_period(frames, warmup_start(config, split), None)
    backtest = run_backtest(
        history,
        MetaAdaptiveStrategy,
        meta_adaptive_params(config, loaded, specs),
        specs.costs,
        trade_start=split,
        feed_factory=lambda s, f: make_feature_feed(s, f, specs.features),
    )

    config_path = root / "paper.toml"
    dump_config(config, config_path)
    paper_state = root / "paper" / "demo"
    session = open_session(
        PaperOptions(
            config_path=config_path, state_dir=paper_state, model=ckpt, start=split.date()
        ),
        progress=False,
    )
    try:
        PaperLoop(session).run(max_bars=3)
    finally:
        session.close()

    server = Server(
        [
            "--models",
            str(models),
            "--paper",
            str(root / "paper"),
            "--max-body-bytes",
            str(MAX_BODY),
        ],
        root / "server.log",
    )
    try:
        server.wait()
        yield {
            "root": root,
            "config": config,
            "frames": history,
            "split": split,
            "backtest": backtest,
            "server": server,
            "paper": paper_state,
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def signals(world):
    """/signal on N_DATES dates of the test period, each sent the history up to that date."""
    server, frames = world["server"], world["frames"]
    days = sorted(world["backtest"].weights["date"].unique())
    changes = sorted(
        {
            pd.Timestamp(e["date"])
            for e in world["backtest"].events
            if e["trigger"] == "alarm" and pd.Timestamp(e["date"]) >= world["split"]
        }
    )
    picked = set(changes[:5])  # days on which the detector fired, then evenly spaced days
    for i in np.linspace(0, len(days) - 1, len(days)).astype(int)[:: max(1, len(days) // N_DATES)]:
        if len(picked) >= N_DATES:
            break
        picked.add(days[i])
    picked = sorted(picked)
    out = {}
    for day in picked:
        response = server.client.post("/v1/models/syn/signal", json=_body(frames, day))
        assert response.status_code == 200, response.text
        out[pd.Timestamp(day)] = response.json()
    return out


def test_health_needs_no_key_and_names_the_version(world):
    response = httpx.get(f"{world['server'].url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["version"]


def test_authenticated_round_trip_lists_and_describes_the_model(world):
    client = world["server"].client
    listed = client.get("/v1/models")
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["models"]] == ["syn"]
    described = client.get("/v1/models/syn").json()
    assert described["algorithm"] == world["config"].meta.algorithm
    assert described["training_period"]["start"] == "2005-01-03"
    assert described["features"]["names"] == list(build_specs(world["config"]).features.names)
    sidecar = json.loads((world["root"] / "models" / "syn" / "model.json").read_text())
    assert described["sha256"] == sidecar["sha256"]
    with httpx.Client(
        base_url=world["server"].url, headers={"Authorization": f"Bearer {OTHER_KEY}"}
    ) as other:
        assert other.get("/v1/models/syn").status_code == 200  # every configured key works


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": KEY},
    ],
)
@pytest.mark.parametrize(
    "route",
    ["GET /v1/models", "GET /v1/models/syn", "POST /v1/models/syn/signal", "GET /v1/paper/demo"],
)
def test_every_v1_route_refuses_a_missing_or_wrong_key_with_401(world, headers, route):
    method, path = route.split()
    response = httpx.request(method, world["server"].url + path, headers=headers, json={})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_signal_equals_the_backtest_decision_on_the_last_bar(world, signals):
    weights = world["backtest"].weights
    events = world["backtest"].events
    assert len(signals) >= N_DATES
    changed_days = 0
    for day, answer in signals.items():
        assert answer["asof"] == day.date().isoformat()
        for asset, got in answer["assets"].items():
            row = weights.loc[(weights["date"] == day) & (weights["asset"] == asset), "weight"]
            assert got["weight"] == pytest.approx(float(row.iloc[0]), abs=1e-12), (day, asset)
            if got["position"] is not None and got["weight"] != 0.0:
                assert math.copysign(1, got["position"]) == math.copysign(1, got["weight"])
            mine = [e for e in events if e["asset"] == asset and pd.Timestamp(e["date"]) <= day]
            regime = [e for e in mine if e["trigger"] == "alarm"]
            # In force: the last adaptation not dropped by a later alarm (an alarm and
            # an adaptation on the same bar: the alarm comes first).
            dropped = pd.Timestamp(regime[-1]["date"]) if regime else pd.Timestamp.min
            past = [
                e for e in mine if e["trigger"] != "alarm" and pd.Timestamp(e["date"]) >= dropped
            ]
            assert got["window"] == (past[-1]["window"] if past else 0)
            if past:
                assert got["loss_after"] == pytest.approx(past[-1]["loss_after"], abs=1e-12)
                assert got["trigger"] == past[-1]["trigger"]
            assert got["last_change"] == (
                pd.Timestamp(regime[-1]["date"]).date().isoformat() if regime else None
            )
            detected = any(pd.Timestamp(e["date"]) == day for e in regime)
            assert got["change_detected"] is detected
            changed_days += detected
    assert changed_days >= 1  # the dates include days on which the detector fired


def test_settings_change_the_decision_as_they_change_the_backtest(world):
    frames, split = world["frames"], world["split"]
    day = max(world["backtest"].weights["date"].unique())
    body = _body(frames, day, settings={"strategy": {"long_only": True, "gross_cap": 0.3}})
    got = world["server"].client.post("/v1/models/syn/signal", json=body).json()
    config = parse_config(
        {**RAW_CONFIG, "strategy": {**RAW_CONFIG["strategy"], "long_only": True, "gross_cap": 0.3}}
    )
    specs = build_specs(config)
    loaded, _ = load_model(world["root"] / "models" / "syn")
    ref = run_backtest(
        frames,
        MetaAdaptiveStrategy,
        meta_adaptive_params(config, loaded, specs),
        specs.costs,
        trade_start=split,
        feed_factory=lambda s, f: make_feature_feed(s, f, specs.features),
    )
    last = ref.weights.loc[ref.weights["date"] == day].set_index("asset")["weight"]
    for asset, decision in got["assets"].items():
        assert decision["weight"] == pytest.approx(float(last[asset]), abs=1e-12)
        assert decision["weight"] >= 0.0


def test_with_the_previous_fallback_the_old_adaptation_stays_in_force_after_an_alarm(world):
    # `previous` keeps the old regime's weights after an alarm: /signal must report that
    # adaptation, not "none", on the bars between the alarm and the next adaptation.
    frames, split = world["frames"], world["split"]
    settings = {"strategy": {"fallback": "previous"}}
    config = parse_config(
        {**RAW_CONFIG, "strategy": {**RAW_CONFIG["strategy"], **settings["strategy"]}}
    )
    specs = build_specs(config)
    loaded, _ = load_model(world["root"] / "models" / "syn")
    ref = run_backtest(
        frames,
        MetaAdaptiveStrategy,
        meta_adaptive_params(config, loaded, specs),
        specs.costs,
        trade_start=split,
        feed_factory=lambda s, f: make_feature_feed(s, f, specs.features),
    )
    events = [e for e in ref.events if pd.Timestamp(e["date"]) >= split]
    # an alarm on a day no adaptation of that asset followed
    alarm = next(
        e
        for e in events
        if e["trigger"] == "alarm"
        and not any(
            a["asset"] == e["asset"] and a["date"] == e["date"] and a["trigger"] != "alarm"
            for a in events
        )
    )
    day, asset = pd.Timestamp(alarm["date"]), alarm["asset"]
    before = [
        e
        for e in ref.events
        if e["asset"] == asset and e["trigger"] != "alarm" and pd.Timestamp(e["date"]) <= day
    ]
    body = _body(frames, day, settings=settings)
    got = world["server"].client.post("/v1/models/syn/signal", json=body).json()["assets"][asset]
    assert got["change_detected"] is True
    assert got["last_adaptation"] == pd.Timestamp(before[-1]["date"]).date().isoformat()
    assert got["window"] == before[-1]["window"]
    assert got["loss_after"] == pytest.approx(before[-1]["loss_after"], abs=1e-12)


def _bad(frames: dict[str, pd.DataFrame], day: pd.Timestamp, case: str) -> tuple[object, str]:
    """A request body broken in one way, and a phrase its 422 detail must contain."""
    body = _body(frames, day)
    spy = body["bars"]["SYN0"]
    if case == "nan":
        spy[5]["close"] = float("nan")
        return body, "row 5"
    if case == "negative_price":
        spy[5]["open"] = -1.0
        return body, "row 5"
    if case == "unsorted_dates":
        spy[5], spy[6] = spy[6], spy[5]
        return body, "not sorted"
    if case == "duplicate_date":
        spy[6]["date"] = spy[5]["date"]
        return body, "duplicate date"
    if case == "too_few_bars":
        body["bars"] = {s: rows[-10:] for s, rows in body["bars"].items()}
        return body, "only 10 bars"
    if case == "wrong_type":
        spy[5]["close"] = "abc"
        return body, "bars.SYN0[5].close"
    if case == "missing_field":
        del spy[5]["volume"]
        return body, "bars.SYN0[5].volume"
    if case == "unknown_field":
        spy[5]["adj_close"] = spy[5]["close"]
        return body, "bars.SYN0[5].adj_close"
    if case == "high_below_close":
        spy[5]["high"] = spy[5]["close"] * 0.5
        return body, "row 5"
    if case == "bad_date":
        spy[5]["date"] = "2006-13-45"
        return body, "row 5"
    if case == "negative_volume":
        spy[5]["volume"] = -5.0
        return body, "Volume"
    if case == "different_last_dates":
        body["bars"]["SYN1"] = body["bars"]["SYN1"][:-1]
        return body, "same date"
    if case == "bad_symbol":
        body["bars"]["../etc"] = body["bars"].pop("SYN1")
        return body, "not a valid ticker"
    if case == "no_assets":
        return {"bars": {}}, "bars"
    if case == "unknown_setting":
        body["settings"] = {"strategy": {"min_windw": 30}}
        return body, "did you mean"
    if case == "unknown_top_level_key":
        body["model"] = "syn"
        return body, "model"
    raise AssertionError(case)


BAD_CASES = [
    "nan",
    "negative_price",
    "unsorted_dates",
    "duplicate_date",
    "too_few_bars",
    "wrong_type",
    "missing_field",
    "unknown_field",
    "high_below_close",
    "bad_date",
    "negative_volume",
    "different_last_dates",
    "bad_symbol",
    "no_assets",
    "unknown_setting",
    "unknown_top_level_key",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_with_422_naming_field_and_row(world, case):
    frames = world["frames"]
    day = sorted(world["backtest"].weights["date"].unique())[10]
    body, phrase = _bad(frames, day, case)
    # allow_nan: NaN is not JSON, but clients (Python's json among them) send it anyway.
    content = json.dumps(body, allow_nan=True)
    response = world["server"].client.post(
        "/v1/models/syn/signal", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail"}
    assert phrase in answer["detail"]
    assert "Traceback" not in response.text


def test_not_json_is_422_and_no_traceback(world):
    response = world["server"].client.post(
        "/v1/models/syn/signal", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert "not valid JSON" in response.json()["detail"]


def test_oversized_body_is_refused_with_413(world):
    client = world["server"].client
    big = b'{"bars": {"SYN0": [' + b" " * (MAX_BODY + 10) + b"]}}"
    response = client.post(
        "/v1/models/syn/signal", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 100_000

    response = client.post(
        "/v1/models/syn/signal", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize("model_id", ["nope", "syn2", "tampered"])
def test_unknown_model_is_404(world, model_id):
    client = world["server"].client
    body = _body(world["frames"], world["split"])
    for response in (
        client.get(f"/v1/models/{model_id}"),
        client.post(f"/v1/models/{model_id}/signal", json=body),
    ):
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/a..b",
        "/v1/models/..%2F..%2Fetc",
        "/v1/models/%2e%2e",
        "/v1/paper/..%2Fdemo",
        "/v1/paper/a..b",
    ],
)
def test_paths_in_ids_are_rejected(world, path):
    response = world["server"].client.get(path)
    assert response.status_code in (400, 404)
    assert set(response.json()) == {"error", "detail"}


def test_tampered_checkpoint_is_not_served_and_the_reason_is_logged(world):
    ids = [m["id"] for m in world["server"].client.get("/v1/models").json()["models"]]
    assert "tampered" not in ids
    log = world["server"].log.read_text()
    line = next(line for line in log.splitlines() if "not serving" in line)
    assert "tampered" in line and "sha256" in line


def test_200_concurrent_requests_get_the_sequential_answers(world):
    client = world["server"].client
    frames = {"SYN0": world["frames"]["SYN0"]}
    days = sorted(world["backtest"].weights["date"].unique())[:10]
    # Short histories keep the 200 backtests quick; the settings lower the warm-up to match.
    bodies = [
        _body(
            {s: f.loc[:d].iloc[-70:] for s, f in frames.items()},
            settings={"strategy": {"warmup_bars": 70}},
        )
        for d in days
    ]
    sequential = []
    for body in bodies:
        response = client.post("/v1/models/syn/signal", json=body)
        assert response.status_code == 200, response.text
        sequential.append(response.json())
    assert len({json.dumps(s, sort_keys=True) for s in sequential}) > 1

    async def fire() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=world["server"].url,
            timeout=120.0,
            limits=limits,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as ac:
            return await asyncio.gather(
                *(
                    ac.post("/v1/models/syn/signal", json=bodies[i % len(bodies)])
                    for i in range(200)
                )
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 200
    for i, response in enumerate(responses):
        assert response.json() == sequential[i % len(bodies)]


def test_paper_status_is_read_only_and_never_locks_the_ledger(world):
    state, client = world["paper"], world["server"].client
    expected = read_status(state)
    before = _files(state)
    response = client.get("/v1/paper/demo")
    assert _files(state) == before  # nothing written, nothing created
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["last_bar"] == expected.last_bar.date().isoformat()
    assert got["bars_traded"] == expected.n_bars == 3
    assert got["equity"] == pytest.approx(expected.equity)
    assert got["cash"] == pytest.approx(expected.cash)
    assert [p["asset"] for p in got["positions"]] == list(expected.positions["asset"])
    # A running `paper run` holds the lock and may be inside a write transaction.
    with StateLock(state):
        writer = sqlite3.connect(state / DB_FILE, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            assert client.get("/v1/paper/demo").json() == got
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    # The service holds no lock on the state: a writer takes it right away.
    with StateLock(state):
        pass
    assert client.get("/v1/paper/absent").status_code == 404


def test_serve_refuses_to_start_without_a_key(run_cli, monkeypatch, tmp_path):
    monkeypatch.delenv("METABT_API_KEYS", raising=False)
    result = run_cli("serve", "--models", tmp_path)
    assert result.code == 2
    assert "no API key configured" in result.err
    result = run_cli("serve", "--models", tmp_path, "--insecure-local", "--host", "0.0.0.0")
    assert result.code == 2
    assert "127.0.0.1" in result.err
    monkeypatch.setenv("METABT_API_KEYS", "short")
    result = run_cli("serve", "--models", tmp_path)
    assert result.code == 2
    assert "at least 16 characters" in result.err


def test_keys_come_from_the_environment_and_the_keys_file(tmp_path):
    from metabt.backtests.serve import ServeError
    from metabt.backtests.serve.auth import KeyChecker, load_keys

    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# team keys\n{OTHER_KEY}  # notebook\n\n{KEY}\n")
    keys = load_keys(keys_file, environ={"METABT_API_KEYS": f" {KEY} ,"})
    assert keys == (KEY, OTHER_KEY)
    checker = KeyChecker(keys)
    assert checker.matches(OTHER_KEY) and checker.matches(KEY)
    assert not checker.matches(KEY[:-1]) and not checker.matches("")
    keys_file.write_text("tooshort\n")
    with pytest.raises(ServeError, match="line 1"):
        load_keys(keys_file, environ={})


def test_insecure_local_serves_without_a_key_and_keys_still_win(tmp_path):
    from metabt.backtests.serve.app import ServeOptions, create_app

    async def get(keys: tuple[str, ...]) -> httpx.Response:
        options = ServeOptions(models=str(tmp_path), insecure_local=True)
        transport = httpx.ASGITransport(app=create_app(options, keys=keys, models={}))
        async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
            return await client.get("/v1/models")

    assert asyncio.run(get(())).json() == {"models": []}
    assert asyncio.run(get((KEY,))).status_code == 401

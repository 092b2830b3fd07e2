"""The context and regime-memory learners: twins agree, meta-learning works, no look-ahead.

Small data made here: Gaussian tasks whose best position flips sign with the
regime, and a short synthetic regime market for the end-to-end checks.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec
from metabt.feeds.synthetic import SyntheticMarketSpec, make_regime_market
from metabt.feeds.tasks import TaskBatch, TaskSpec
from metabt.feeds.validate import validate_bars
from metabt.metamodels.conditioned_train import fit_conditioned, task_contexts, train_conditioned
from metabt.metamodels.context_policy import (
    ContextSpec,
    fold,
    init_context_params,
    numpy_fold,
    numpy_window_context,
    window_context,
)
from metabt.metamodels.learners import TorchTasks
from metabt.metamodels.memory_policy import (
    COSINE_SCALE0,
    SCALE,
    MemorySpec,
    SegmentBank,
    attend,
    attention_keys,
    build_bank,
    day_number,
    init_memory_params,
    numpy_attend,
)
from metabt.metamodels.model import TrainConfig
from metabt.metamodels.model_io import load_model, save_model
from metabt.metamodels.numpy_policy import positions as numpy_positions
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.metamodels.policy import PolicySpec, init_params, positions
from metabt.strategies.conditioned_policy import conditioned_policy
from metabt.strategies.detectors import detect_alarms
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

SPEC = PolicySpec(n_features=3, hidden=(8,))
OBJ = ObjectiveSpec()


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_weights(
    memory: bool = False, seed: int = 0, attention: str = "dot"
) -> dict[str, torch.Tensor]:
    """Float64 weights, scaled up so that every term of the forward pass matters."""
    ctx = ContextSpec(width=6)
    p = {**init_params(SPEC, seed), **init_context_params(SPEC, ctx, seed)}
    if memory:
        p.update(init_memory_params(ctx, MemorySpec(key_width=4, attention=attention), seed))
    out = {k: v.double() * 3.0 for k, v in p.items()}
    if SCALE in out:  # the scale as initialised: sharper would only saturate the softmax
        out[SCALE] = p[SCALE].double()
    return out


def test_numpy_context_and_folded_policy_equal_the_torch_reference():
    p = random_weights()
    npar = {k: v.numpy() for k, v in p.items()}
    rng = np.random.default_rng(1)
    for n in (1, 2, 37, 120):
        x, y, q = rng.standard_normal((n, 3)), rng.standard_normal(n), rng.standard_normal((9, 3))
        # the torch batch holds the window left-padded, as tasks are
        pad = 130 - n
        xt = torch.zeros(1, 130, 3, dtype=torch.float64)
        yt, mt = torch.zeros(1, 130, dtype=torch.float64), torch.zeros(1, 130, dtype=torch.float64)
        xt[0, pad:], yt[0, pad:], mt[0, pad:] = torch.tensor(x), torch.tensor(y), 1.0
        c_torch = window_context(p, xt, yt, SPEC, mt)
        c_np = numpy_window_context(npar, x, y, SPEC)
        np.testing.assert_allclose(c_np, c_torch[0].numpy(), atol=1e-6, rtol=0)
        assert np.abs(c_np).max() > 1e-3  # a context that is not trivially zero
        pos_torch = positions(fold(p, c_torch), torch.tensor(q)[None], SPEC)[0].numpy()
        pos_np = numpy_positions(numpy_fold(npar, c_np), q, SPEC)
        np.testing.assert_allclose(pos_np, pos_torch, atol=1e-6, rtol=0)


def test_an_empty_window_gives_the_plain_policy():
    npar = {k: v.numpy() for k, v in random_weights().items()}
    q = np.random.default_rng(2).standard_normal((5, 3))
    empty = numpy_window_context(npar, np.zeros((0, 3)), np.zeros(0), SPEC)
    assert not empty.any()
    np.testing.assert_array_equal(
        numpy_positions(numpy_fold(npar, empty), q, SPEC), numpy_positions(npar, q, SPEC)
    )


@pytest.mark.parametrize("attention", ["dot", "cosine"])
def test_numpy_memory_attention_equals_torch_and_only_reads_segments_known_before(attention):
    p = random_weights(memory=True, attention=attention)
    assert (SCALE in p) == (attention == "cosine")
    rng = np.random.default_rng(3)
    n_seg = 50
    memory = torch.tensor(rng.uniform(-1, 1, (n_seg, 6)))
    known = np.arange(n_seg) + 1000
    keys = attention_keys(p, memory).numpy()
    values = (memory @ p["mem.wv"]).numpy()
    npar = {k: v.numpy() for k, v in p.items()}
    npar.update({"bank.keys": keys, "bank.values": values, "bank.known_day": known})
    x, y = rng.standard_normal((40, 3)), rng.standard_normal(40)
    for day in (1000, 1001, 1025, 1100):
        c_np, weights = numpy_attend(npar, x, y, day, SPEC)
        assert (weights[known >= day] == 0).all() and (weights[known < day] > 0).all()
        query = window_context(p, torch.tensor(x)[None], torch.tensor(y)[None], SPEC)
        eligible = torch.as_tensor(known < day)[None, :]
        c_torch = attend(p, query, memory, eligible)[0][0].numpy()
        np.testing.assert_allclose(c_np, c_torch, atol=1e-6, rtol=0)
        # Segments known on or after the day can change in any way: nothing moves.
        later = {**npar, "bank.keys": keys.copy(), "bank.values": values.copy()}
        later["bank.keys"][known >= day] = 1e6
        later["bank.values"][known >= day] = -1e6
        np.testing.assert_array_equal(numpy_attend(later, x, y, day, SPEC)[0], c_np)


# -- meta-learning works: two regimes whose best positions are opposite --------
def two_regime_tasks(n: int, rng: np.random.Generator, sign: float | None = None) -> TaskBatch:
    """Label = sign * feature 0 + noise: the best position is +-feature 0, by regime."""
    s, q = 40, 10
    signs = rng.choice([-1.0, 1.0], n) if sign is None else np.full(n, sign)
    x = rng.standard_normal((n, s + q, 3)).astype(np.float32)
    y = (signs[:, None] * x[..., 0] + 0.5 * rng.standard_normal((n, s + q))).astype(np.float32)
    when = np.full(n, np.datetime64("2010-01-04", "ns"))
    return TaskBatch(
        x[:, :s], y[:, :s], x[:, s:], y[:, s:], ("A",) * n, when, None, None, None, None
    )


def test_context_policy_reads_the_regime_and_beats_no_context_in_both_regimes():
    config = TrainConfig(
        algorithm="context", meta_steps=150, tasks_per_step=32, outer_lr=1e-2, seed=0
    )
    model = fit_conditioned(two_regime_tasks, None, SPEC, ObjectiveSpec(cost=0.0), config)
    params, gains = model.params, {}
    for sign in (1.0, -1.0):
        tasks = TorchTasks.from_batch(two_regime_tasks(256, np.random.default_rng(9), sign))
        with torch.no_grad():
            c = task_contexts(params, tasks, torch.zeros(256), SPEC, None)
            losses = {
                name: trading_loss(
                    positions(fold(params, ctx), tasks.query_x, SPEC), tasks.query_y, OBJ
                ).mean()
                for name, ctx in (("context", c), ("none", torch.zeros_like(c)))
            }
        gains[sign] = float(losses["none"] - losses["context"])
    # Lower in each regime, and clearly lower on average: without context the policy
    # cannot know which sign pays (about zero on average), with it it can.
    assert min(gains.values()) > 0 and sum(gains.values()) / 2 > 0.1, gains


# -- end to end on a synthetic regime market -----------------------------------
FEATURES = FeatureSpec(horizons=(), macd=())
TASK = TaskSpec(min_support=20, max_support=60, min_query=5, max_query=10)
MARKET_POLICY = PolicySpec(n_features=len(FEATURES.names), hidden=(8,))
QUICK = TrainConfig(meta_steps=4, tasks_per_step=8, eval_every=2, val_tasks=16, seed=0)


@pytest.fixture(scope="module")
def market() -> dict[str, pd.DataFrame]:
    spec = SyntheticMarketSpec(n_assets=3, n_bars=900, mean_duration=80, seed=1)
    return {
        s: validate_bars(f, f"synthetic:{s}") for s, f in make_regime_market(spec).frames.items()
    }


@pytest.fixture(scope="module")
def models(market) -> dict:
    split = market["SYN0"].index[600]
    train = {s: f.loc[: split - pd.Timedelta(days=1)] for s, f in market.items()}
    alarms = {s: detect_alarms(f, "bocpd_ar") for s, f in train.items()}
    return {
        name: train_conditioned(
            train,
            FEATURES,
            TASK,
            MARKET_POLICY,
            OBJ,
            replace(QUICK, algorithm=name),
            None,
            split,
            alarms=alarms,
        )
        for name in ("context", "memory")
    } | {
        "memory_cosine": train_conditioned(
            train,
            FEATURES,
            TASK,
            MARKET_POLICY,
            OBJ,
            replace(QUICK, algorithm="memory", memory_attention="cosine"),
            None,
            split,
            alarms=alarms,
        )
    }


def test_cosine_attention_retrieves_what_dot_attention_averages():
    # One segment's key points where the query points, 999 others elsewhere at random:
    # the cosine scale as initialised singles out the match, the scaled dot product of
    # the same unit-scale vectors spreads the weight almost evenly over the bank.
    rng = np.random.default_rng(4)
    weights = {}
    for attention in ("dot", "cosine"):
        p = random_weights(memory=True, attention=attention)
        x, y = rng.standard_normal((30, 3)), rng.standard_normal(30)
        npar = {k: v.numpy() for k, v in p.items()}
        query = numpy_window_context(npar, x, y, SPEC) @ npar["mem.wq"]
        keys = rng.standard_normal((1000, 4))
        keys[0] = query
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        npar.update(
            {
                "bank.keys": keys,
                "bank.values": np.zeros((1000, 6)),
                "bank.known_day": np.zeros(1000),
            }
        )
        weights[attention] = numpy_attend(npar, x, y, 10, SPEC)[1]
    # dot: 0.2%, barely above the uniform 0.1%; cosine: 4.4% (4-d keys: random ones
    # often lie close to the query, so not more).
    assert weights["dot"][0] < 3 / 1000 and weights["cosine"][0] > 10 * weights["dot"][0]


def test_the_cosine_scale_is_learned_and_not_decayed():
    # A decay of 20 at a step of 0.01 multiplies a decayed weight by 0.8 each step (0.8**20
    # = 0.012 in 20 steps: log(10) would fall to 0.03). The scale only moves by Adam's steps
    # (at most about outer_lr each), and it does move: it is learned. The weights decay:
    # Adam's steps alone could take at most 20 * 0.01 off wq's largest entry (about 0.25).
    rng = np.random.default_rng(6)
    past = two_regime_tasks(12, rng)  # twelve past segments of either regime, known early
    n = len(past.support_y)
    bank = SegmentBank(
        past.support_x,
        past.support_y,
        np.ones_like(past.support_y),
        np.zeros(n, np.int64),
        *(np.full(n, day_number("2009-06-01"), np.int64) for _ in range(3)),
        ("A",),
    )
    config = TrainConfig(
        algorithm="memory", meta_steps=20, tasks_per_step=8, outer_lr=1e-2, weight_decay=20.0
    )
    memory = MemorySpec(max_bars=40, attention="cosine")
    model = fit_conditioned(two_regime_tasks, None, SPEC, OBJ, config, bank, memory=memory)
    start = init_memory_params(ContextSpec(), memory, 0)
    moved = abs(float(model.params[SCALE][0]) - math.log(COSINE_SCALE0))
    assert 0 < moved <= 20 * 1e-2 * 1.1
    assert float(model.params["mem.wq"].abs().max()) < 0.15 * float(start["mem.wq"].abs().max())


def test_an_unknown_memory_attention_is_one_clear_error():
    from metabt.backtests.config import ConfigError, parse_config

    raw = {"data": {"source": "synthetic", "split": "2007-06-01"}}
    raw["meta"] = {"memory_attention": "cos"}
    with pytest.raises(
        ConfigError, match=r"memory_attention must be one of \('dot', 'cosine'\)"
    ) as err:
        parse_config(raw, "study.toml")
    assert "\n" not in str(err.value) and "cos" in str(err.value)


def test_the_bank_at_date_t_holds_no_segment_that_ends_or_is_known_after_t(market):
    for cut in (400, 700):
        t = market["SYN0"].index[cut]
        alarms = {s: detect_alarms(f.loc[:t], "bocpd_ar") for s, f in market.items()}
        bank = build_bank(market, FEATURES, alarms, None, t, MemorySpec(max_bars=60))
        assert len(bank) > 3, "the test needs segments to mean anything"
        assert (bank.end_day < bank.known_day).all()
        assert (bank.known_day < day_number(t)).all()
        # The bank built from the data cut at t is the bank built from all data, up to t.
        full_alarms = {s: detect_alarms(f, "bocpd_ar") for s, f in market.items()}
        full = build_bank(market, FEATURES, full_alarms, None, None, MemorySpec(max_bars=60))
        early = full.known_day < day_number(t)
        np.testing.assert_array_equal(full.x[early], bank.x)
        np.testing.assert_array_equal(full.start_day[early], bank.start_day)


def backtest(frames, policy, trade_start, trigger="regime"):
    return run_backtest(
        frames,
        MetaAdaptiveStrategy,
        # Causality, not performance, is under test: trading the training bars is fine here.
        {
            "policy": policy,
            "trigger": trigger,
            "min_window": 20,
            "max_window": 60,
            "allow_in_sample": True,
        },
        CostSpec(),
        trade_start=trade_start,
        feed_factory=lambda s, f: make_feature_feed(s, f, FEATURES),
    )


@pytest.mark.parametrize("name", ["context", "memory", "memory_cosine"])
def test_positions_up_to_t_ignore_the_future(market, models, name):
    policy = conditioned_policy(models[name], FEATURES)
    start = market["SYN0"].index[560]
    frames = {s: f.loc[market["SYN0"].index[300] :] for s, f in market.items()}
    full = backtest(frames, policy, start)
    assert full.events, "the test needs adaptations to mean anything"
    if name != "context":  # each adaptation names the past segments it attended to
        named = [e["attended"] for e in full.events if e.get("attended")]
        assert named and all(
            re.match(r"SYN\d \d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d [01]\.\d\d", a) for a in named
        )
    t = market["SYN0"].index[760]
    short = backtest({s: f.loc[:t] for s, f in frames.items()}, policy, start)
    cut = full.weights[full.weights["date"] <= t].reset_index(drop=True)
    assert len(cut) > 0
    pd.testing.assert_frame_equal(
        short.weights[short.weights["date"] <= t].reset_index(drop=True), cut
    )


@pytest.mark.parametrize("name", ["context", "memory", "memory_cosine"])
def test_checkpoint_round_trip_gives_identical_positions(tmp_path, market, models, name):
    model = models[name]
    if name != "context":
        assert model.bank_assets == tuple(market) and model.params["bank.keys"].shape[0] > 3
        assert (SCALE in model.params) == (name == "memory_cosine")
    save_model(model, tmp_path / name, {})
    loaded, _ = load_model(tmp_path / name)
    assert loaded.algorithm == model.algorithm and loaded.bank_assets == model.bank_assets
    for k, v in model.params.items():
        torch.testing.assert_close(loaded.params[k], v, rtol=0, atol=0, msg=k)
    before = conditioned_policy(model, FEATURES)
    after = conditioned_policy(loaded, FEATURES)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((45, len(FEATURES.names))), rng.standard_normal(45)
    when = market["SYN0"].index[-1].date()
    a, b = before.adapt(x, y, when=when), after.adapt(x, y, when=when)
    assert a[1:] == b[1:]
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    np.testing.assert_array_equal(
        numpy_positions(a[0], x, MARKET_POLICY), numpy_positions(b[0], x, MARKET_POLICY)
    )


def test_config_names_a_bad_compare_entry_in_one_line():
    from metabt.backtests.config import ConfigError, parse_config

    raw = {"data": {"source": "synthetic", "split": "2007-06-01"}, "meta": {"compare": ["contxt"]}}
    with pytest.raises(ConfigError, match=r"meta\.compare lists 'contxt'") as err:
        parse_config(raw, "study.toml")
    assert "\n" not in str(err.value)
    raw["meta"]["compare"] = ["context", "memory"]
    assert parse_config(raw).meta.compare == ("context", "memory")


def test_held_out_symbols_are_traded_and_never_trained_on(market):
    from metabt.backtests.config import ConfigError, parse_config
    from metabt.backtests.runner import split_assets

    raw = {
        "data": {
            "source": "synthetic",
            "split": "2007-06-01",
            "symbols": list(market),
            "held_out": ["SYN2"],
        }
    }
    learn, trade = split_assets(market, parse_config(raw))
    assert set(learn) == {"SYN0", "SYN1"} and set(trade) == {"SYN2"}
    raw["data"]["held_out"] = ["SYN9"]
    with pytest.raises(ConfigError, match="data.held_out names 'SYN9'"):
        parse_config(raw)

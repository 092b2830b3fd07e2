"""End to end on a synthetic regime market: meta-learning earns its keep, reproducibly.

The market is the synthetic study's own (its default regimes: AR(1) sign
switches of +-0.15..0.2 at two volatility levels, by a hidden Markov chain), the
tasks are the study's (variable-length supports, most starting at a true change),
and the learning rates are the library defaults the studies use. No single static
policy suits every regime, so a good *starting point for adaptation* beats both
the ERM fit over the mixed history and a random start.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from metabt.backtests.config import build_specs, configs_dir, load_config
from metabt.feeds.features import (
    LABEL_DELAY,
    compute_features,
    compute_labels,
    trailing_vol,
)
from metabt.feeds.synthetic import SyntheticMarketSpec, make_regime_market
from metabt.feeds.tasks import TaskSampler
from metabt.feeds.validate import validate_bars
from metabt.metamodels.erm import erm_train, random_init, training_series
from metabt.metamodels.model import TrainConfig, evaluate
from metabt.metamodels.trainer import meta_train, split_period, validation_tasks

# The synthetic study's own inputs, tasks, objective, network and training settings
# (backtests/configs/synthetic.toml: its learner and learning rates, no early stopping), read
# from the config so that they cannot drift apart; QUICK is for the tests that check
# mechanics, not performance.
_STUDY = build_specs(load_config(configs_dir() / "synthetic.toml"))
FEATURES, TASK, OBJ, POLICY = _STUDY.features, _STUDY.task, _STUDY.objective, _STUDY.policy
CONFIG = replace(_STUDY.train, seed=0, compare=())
QUICK = TrainConfig(
    algorithm="maml", meta_steps=200, tasks_per_step=32, eval_every=20, patience=5, seed=0
)


@pytest.fixture(autouse=True)
def _one_thread():
    # evaluate() runs outside the trainer's thread setting; tiny ops gain nothing
    # from a second thread and stall when the other core is busy.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def market() -> tuple[dict[str, pd.DataFrame], pd.Timestamp, dict]:
    # The synthetic study's market parameters (regimes, mean duration) on fewer bars.
    spec = SyntheticMarketSpec(n_assets=8, n_bars=2000, mean_duration=120, seed=0)
    market = make_regime_market(spec)
    frames = {s: validate_bars(f, f"synthetic:{s}") for s, f in market.frames.items()}
    changes = {
        s: list(r.index[1:][r.to_numpy()[1:] != r.to_numpy()[:-1]])
        for s, r in market.regimes.items()
    }
    return frames, frames["SYN0"].index[1400], changes  # train before, test from here


def test_meta_learned_init_beats_erm_and_random_init_after_adaptation(market):
    frames, test_start, changes = market
    meta = meta_train(
        frames,
        FEATURES,
        TASK,
        POLICY,
        OBJ,
        CONFIG,
        None,
        test_start,
        progress=False,
        changes=changes,
    )
    erm = erm_train(
        frames,
        FEATURES,
        TASK,
        POLICY,
        OBJ,
        CONFIG,
        None,
        test_start,
        progress=False,
        changes=changes,
    )
    # The ablations adapt with the meta-model's step size: only the start point differs.
    erm = replace(erm, inner_lr=meta.inner_lr, lr_length_power=meta.lr_length_power)
    rand = replace(
        random_init(POLICY, OBJ, CONFIG, inner_lr=meta.inner_lr),
        lr_length_power=meta.lr_length_power,
    )
    # Held-out tasks drawn as trading makes them: windows since a true change.
    held_out = TaskSampler(frames, FEATURES, TASK, test_start, None, changes).sample(
        1000, np.random.default_rng(1)
    )
    k = CONFIG.inner_steps
    loss = {
        name: float(evaluate(m, held_out, k).mean())
        for name, m in (("meta", meta), ("erm", erm), ("random", rand))
    }
    assert loss["meta"] < loss["erm"], loss
    assert loss["meta"] < loss["random"], loss
    # Adaptation is what the meta-init is for: unadapted it is worse.
    assert loss["meta"] < float(evaluate(meta, held_out, 0).mean())


def test_training_is_deterministic_for_a_seed(market):
    frames, test_start, _ = market
    quick = replace(QUICK, meta_steps=30, eval_every=10)
    for algorithm in ("maml", "metasgd"):
        cfg = replace(quick, algorithm=algorithm)
        a = meta_train(frames, FEATURES, TASK, POLICY, OBJ, cfg, None, test_start, progress=False)
        b = meta_train(frames, FEATURES, TASK, POLICY, OBJ, cfg, None, test_start, progress=False)
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
        assert a.history == b.history and a.best_step == b.best_step
    c = meta_train(
        frames,
        FEATURES,
        TASK,
        POLICY,
        OBJ,
        replace(quick, seed=1),
        None,
        test_start,
        progress=False,
    )
    assert not all(torch.equal(a.params[k], c.params[k]) for k in a.params)


def test_returned_weights_are_the_best_validated_ones(market):
    frames, test_start, _ = market
    cfg = replace(QUICK, algorithm="fomaml", meta_steps=60, eval_every=10, patience=100)
    model = meta_train(frames, FEATURES, TASK, POLICY, OBJ, cfg, None, test_start, progress=False)
    history = model.history
    best = int(np.argmin(history["val_loss"]))
    assert model.best_step == history["step"][best]
    lo, split, hi = split_period(frames, None, test_start, cfg.val_fraction)
    val = validation_tasks(frames, FEATURES, TASK, split, hi, cfg.val_tasks)
    assert float(evaluate(model, val).mean()) == pytest.approx(history["val_loss"][best], abs=1e-6)
    assert model.train_period == (str(lo.date()), str(split.date()))
    assert model.val_period == (str(split.date()), str(hi.date()))


def test_training_bars_end_before_validation_begins(market):
    frames, test_start, _ = market
    lo, split, _ = split_period(frames, None, test_start, 0.25)
    series = training_series(frames, FEATURES, lo, split)
    # Cutting every bar from the split on must not change a single training bar
    # or label: ERM never sees (or labels with) the validation period.
    truncated = {s: f.loc[f.index < split] for s, f in frames.items()}
    again = training_series(truncated, FEATURES, lo, split)
    assert len(series) == len(again) == len(frames)
    for one, two in zip(series, again):
        for a, b in zip(one, two):
            np.testing.assert_array_equal(a, b)


def test_meta_training_tasks_end_before_validation_and_ignore_bars_after_it(market, monkeypatch):
    frames, test_start, changes = market
    cfg = replace(QUICK, meta_steps=12, eval_every=4, patience=100)
    sampled: list = []
    draw = TaskSampler.sample

    def recording(self, n_tasks, rng):
        batch = draw(self, n_tasks, rng)
        sampled.append(batch)
        return batch

    monkeypatch.setattr(TaskSampler, "sample", recording)
    model = meta_train(
        frames, FEATURES, TASK, POLICY, OBJ, cfg, None, test_start, progress=False, changes=changes
    )
    val_start = pd.Timestamp(model.val_period[0])
    assert model.train_period[1] == model.val_period[0]
    # the validation tasks are drawn by the same sampler, from the validation period
    sampled = [b for b in sampled if len(b) == cfg.tasks_per_step]
    assert len(sampled) == cfg.meta_steps
    # Every bar a training task reads (support, query, and the opens its last query
    # label is computed from) lies before the first validation bar.
    cut = {s: f.loc[f.index < val_start] for s, f in frames.items()}
    arrays = {
        s: (
            compute_features(f, FEATURES).to_numpy(np.float32),
            compute_labels(f, FEATURES).to_numpy(np.float32),
            (1.0 / trailing_vol(f, FEATURES)).to_numpy(np.float32),
        )
        for s, f in cut.items()
    }
    for batch in sampled:
        for i, (asset, anchor) in enumerate(zip(batch.assets, batch.anchors)):
            t = frames[asset].index.get_loc(pd.Timestamp(anchor))
            window = batch.window(i)
            n, m = len(window["support_y"]), len(window["query_y"])
            last_read = frames[asset].index[t + m - 1 + LABEL_DELAY]
            assert last_read < val_start, (asset, anchor)
            # Cutting the frames at the validation start leaves the task identical.
            x, y, a = arrays[asset]
            for side, rows in (("support", slice(t - n - 1, t - 1)), ("query", slice(t, t + m))):
                np.testing.assert_array_equal(window[f"{side}_x"], x[rows])
                np.testing.assert_array_equal(window[f"{side}_y"], y[rows])
                np.testing.assert_array_equal(window[f"{side}_inv_vol"], a[rows])


def test_meta_training_losses_do_not_depend_on_bars_after_validation_starts(market):
    # Training runs on tasks before the validation start only, so scrambling every
    # bar from there on may change validation (and the returned step) but not one
    # training loss.
    frames, test_start, _ = market
    cfg = replace(QUICK, meta_steps=12, eval_every=4, patience=100)
    model = meta_train(frames, FEATURES, TASK, POLICY, OBJ, cfg, None, test_start, progress=False)
    val_start = pd.Timestamp(model.val_period[0])
    rng = np.random.default_rng(0)
    scrambled = {}
    for symbol, frame in frames.items():
        frame = frame.copy()
        after = frame.index >= val_start
        factor = rng.uniform(0.5, 1.5, size=int(after.sum()))
        for column in ("open", "high", "low", "close"):
            frame.loc[after, column] = frame.loc[after, column].to_numpy() * factor
        scrambled[symbol] = frame
    again = meta_train(
        scrambled, FEATURES, TASK, POLICY, OBJ, cfg, None, test_start, progress=False
    )
    assert again.val_period == model.val_period
    assert not np.array_equal(again.history["val_loss"], model.history["val_loss"])  # it bites
    np.testing.assert_array_equal(again.history["train_loss"], model.history["train_loss"])


@pytest.mark.parametrize("mode", ["long_only", "overlay"])
@pytest.mark.parametrize("algorithm", ["reptile", "metasgd"])
def test_every_mode_and_learner_trains(market, mode, algorithm):
    frames, test_start, _ = market
    policy = replace(POLICY, mode=mode)
    cfg = replace(QUICK, algorithm=algorithm, meta_steps=20, eval_every=10)
    model = meta_train(frames, FEATURES, TASK, policy, OBJ, cfg, None, test_start, progress=False)
    assert model.algorithm == algorithm and model.policy_spec.mode == mode
    assert all(bool(torch.isfinite(v).all()) for v in model.params.values())
    assert np.isfinite(model.history["val_loss"]).all()

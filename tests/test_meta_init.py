"""``[meta] init``: where a gradient learner's meta-training starts (and the forward
learners' own budget).

With ``"erm"`` meta-training must start from the ERM weights of the same seed and
bars, and with ``"random"`` from the seeded random weights; a study's ERM row and
the meta row's starting point must then be one and the same model.
``forward_meta_steps`` / ``forward_outer_lr`` must reach the context and memory
learners and leave the gradient learners' budget alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metabt.backtests import training
from metabt.backtests.config import ConfigError, build_specs, load_config
from metabt.backtests.data import load_study_data
from metabt.backtests.overrides import with_keys
from metabt.feeds.tasks import random_task_batch
from metabt.metamodels.model import TrainConfig
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params
from metabt.metamodels.trainer import fit

TINY = Path(__file__).parent / "data" / "tiny_basket.toml"
# One outer step this small leaves the weights where meta-training started.
STILL = {"meta_steps": 1, "outer_lr": 1e-9, "val_fraction": 0.0}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].detach() - b[k].detach()).abs().max()) for k in a)


def _sample(n: int, rng: np.random.Generator) -> object:
    return random_task_batch(n, 30, 10, 4, int(rng.integers(1 << 30)))


def test_fit_starts_from_the_weights_given_and_leaves_them_unchanged():
    spec = PolicySpec(4, (8,))
    config = TrainConfig(**STILL, tasks_per_step=8, seed=3)
    start = init_params(spec, seed=99)
    before = {k: v.clone() for k, v in start.items()}
    model = fit(_sample, None, spec, ObjectiveSpec(), config, init=start)
    assert _distance(model.params, start) < 1e-6
    assert _distance(model.params, init_params(spec, seed=3)) > 1e-2
    assert _distance(start, before) == 0.0  # copied, not trained in place
    # Without init: the seeded random weights.
    plain = fit(_sample, None, spec, ObjectiveSpec(), config)
    assert _distance(plain.params, init_params(spec, seed=3)) < 1e-6


def _tiny(init: str, **meta: object):
    overrides = {"meta.init": init, **{f"meta.{k}": v for k, v in meta.items()}}
    config = with_keys(load_config(TINY), overrides, "test")
    return config, build_specs(config), load_study_data(config).frames


def test_train_meta_starts_from_the_erm_model_it_is_given():
    config, specs, frames = _tiny("erm", **STILL)
    split = pd.Timestamp(config.data.split)
    # Any model will do as "the ERM row": what matters is that its weights are the start.
    erm = replace(
        training.random_init(specs.policy, specs.objective, specs.train),
        params=init_params(specs.policy, seed=99),
    )
    model = training.train_meta(frames, config, specs, split, progress=False, erm=erm)
    assert _distance(model.params, erm.params) < 1e-6


@pytest.mark.parametrize("init", ["random", "erm"])
def test_a_study_seed_meta_trains_from_its_own_erm_row_only_when_asked(monkeypatch, init):
    config, specs, frames = _tiny(init, meta_steps=2)
    split = pd.Timestamp(config.data.split)
    started: list[object] = []
    real = training.meta_train

    def spy(*args, **kwargs):
        started.append(kwargs.get("init"))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "meta_train", spy)
    changes = training.task_changes(frames, config, None, split)
    _, erm, _ = training._train_seed(frames, config, specs, split, changes, 5, None)
    assert len(started) == 1
    assert started[0] is (erm.params if init == "erm" else None)


def test_an_unknown_init_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(TINY.read_text().replace("[meta]\n", '[meta]\ninit = "pretrained"\n'))
    with pytest.raises(ConfigError, match="init"):
        load_config(path)
    with pytest.raises(ValueError, match="train.init must be one of"):
        TrainConfig(init="pretrained")


def test_the_forward_learners_train_with_their_own_budget_and_the_gradient_learners_keep_theirs():
    config, specs, frames = _tiny(
        "random", meta_steps=2, val_fraction=0.0, forward_meta_steps=3, forward_outer_lr=0.02
    )
    split = pd.Timestamp(config.data.split)
    maml = training.train_meta(frames, config, specs, split, progress=False)
    assert (maml.best_step, maml.config.meta_steps) == (2, 2)
    assert maml.config.outer_lr == TrainConfig().outer_lr
    as_context = with_keys(config, {"meta.algorithm": "context"}, "test")
    context = training.train_meta(frames, as_context, build_specs(as_context), split, False)
    assert (context.best_step, context.config.meta_steps, context.config.outer_lr) == (3, 3, 0.02)
    with pytest.raises(ConfigError, match=r"meta\.forward_meta_steps must be >= 1") as err:
        build_specs(with_keys(config, {"meta.forward_meta_steps": 0}, "test"))
    assert "\n" not in str(err.value)

"""Meta-training for a study: the meta, ERM and random-init models of every seed.

:func:`train_models` trains, per meta-training seed, the meta-learner, the ERM
network and the random initialisation the ablations adapt from (and the forward
learners a study compares), on bars before the split only; training supports
start at the true regime changes when the data know them, else at the changes
the study's detector finds causally (:func:`task_changes`).
"""

from __future__ import annotations

import logging
from dataclasses import replace as dc_replace
from pathlib import Path

import pandas as pd
from joblib import Memory, Parallel, delayed
from rich.console import Console

from metabt.backtests.config import Specs, StudyConfig
from metabt.backtests.shared_work import train_seeds_once
from metabt.feeds.errors import DataError
from metabt.feeds.loaders import Frames, slice_period
from metabt.metamodels.conditioned_train import train_conditioned
from metabt.metamodels.erm import erm_train, random_init
from metabt.metamodels.model import FORWARD_LEARNERS, MetaModel
from metabt.metamodels.model_io import load_model
from metabt.metamodels.trainer import meta_train
from metabt.strategies.detectors import detect_alarms, detect_changes

log = logging.getLogger(__name__)

# "meta" / "erm" / "random" (and "context" / "memory" when compared) -> one model per seed
Models = dict[str, list[MetaModel]]


def task_changes(
    frames: Frames, config: StudyConfig, regimes: dict[str, pd.Series] | None, split: pd.Timestamp
) -> dict[str, list[pd.Timestamp]]:
    """Where training supports start: the true changes when known, else the detector's.

    Either way only bars before ``split`` are looked at; the detector runs causally.
    """
    if regimes is not None:
        return {
            s: [t for t in changes if t < split] for s, changes in true_changes(regimes).items()
        }
    train = slice_period(frames, None, split)
    return {
        s: detect_changes(f, config.detector.name, **config.detector.settings)
        for s, f in train.items()
    }


def true_changes(regimes: dict[str, pd.Series]) -> dict[str, list[pd.Timestamp]]:
    """First date of every new true regime, per asset."""
    return {s: list(r.index[1:][r.to_numpy()[1:] != r.to_numpy()[:-1]]) for s, r in regimes.items()}


def train_meta(
    frames: Frames,
    config: StudyConfig,
    specs: Specs,
    split: pd.Timestamp,
    progress: bool = True,
    changes: dict | None = None,
    seed: int | None = None,
    regimes: dict[str, pd.Series] | None = None,
    erm: MetaModel | None = None,
) -> MetaModel:
    """Meta-train on the bars in ``[data.start, split)`` only.

    ``changes`` (else derived from ``regimes`` or the detector, see :func:`task_changes`)
    anchor the task supports; ``seed`` replaces the config's seed. With ``[meta] init =
    "erm"`` a gradient learner starts from ``erm``'s weights (trained here when None).
    """
    if changes is None:
        changes = task_changes(frames, config, regimes, split)
    train = slice_period(frames, config.data.start, split)
    train_config = specs.train if seed is None else dc_replace(specs.train, seed=seed)
    # The context and memory learners train with their own budget when the config gives one.
    train_config = train_config.for_learner(train_config.algorithm)
    # What every learner trains on: bars, features, tasks, network, objective, settings, period.
    inputs = (
        train,
        specs.features,
        specs.task,
        specs.policy,
        specs.objective,
        train_config,
        config.data.start,
        split,
    )
    if train_config.algorithm in FORWARD_LEARNERS:
        # The memory bank is cut at the detector's causal alarms, on training bars only.
        alarms = {
            s: detect_alarms(f, config.detector.name, **config.detector.settings)
            for s, f in slice_period(frames, None, split).items()
        }
        return train_conditioned(*inputs, changes=changes, alarms=alarms)
    init = None
    if train_config.init == "erm":
        erm = erm or erm_train(*inputs, progress=False, changes=changes)
        init = erm.params
    return meta_train(*inputs, progress=progress, changes=changes, init=init)


def _train_seed(
    frames: Frames,
    config: StudyConfig,
    specs: Specs,
    split: pd.Timestamp,
    changes: dict,
    seed: int,
    meta: MetaModel | None,
) -> tuple[MetaModel, MetaModel, MetaModel]:
    train_config = dc_replace(specs.train, seed=seed)
    erm = erm_train(
        slice_period(frames, config.data.start, split),
        specs.features,
        specs.task,
        specs.policy,
        specs.objective,
        train_config,
        config.data.start,
        split,
        progress=False,
        changes=changes,
    )
    if meta is None:
        meta = train_meta(frames, config, specs, split, False, changes, seed, erm=erm)
    # The random init is meta-training's seeded random start point (with [meta] init =
    # "erm" meta-training starts from ERM's weights instead), adapted with the
    # meta-model's step sizes: the ablation isolates what the learned init adds.
    rand = random_init(specs.policy, specs.objective, train_config, inner_lr=meta.inner_lr)
    rand = dc_replace(rand, lr_length_power=meta.lr_length_power)
    return meta, erm, rand


def train_models(
    frames: Frames,
    config: StudyConfig,
    specs: Specs,
    split: pd.Timestamp,
    model_path: Path | None,
    progress: bool,
    regimes: dict | None = None,
    n_jobs: int = 2,
    console: Console | None = None,
    cache: Memory | None = None,
) -> Models:
    """Meta-learned, ERM and random-init models, one per seed, from bars before ``split`` only.

    With a sweep's ``cache`` each seed's models are trained once per sweep.
    """
    loaded = None
    if model_path is not None:
        loaded, last_bar = load_model(model_path)
        if last_bar >= split:
            raise DataError(
                f"{model_path}: trained on bars up to {last_bar.date()}, on or after "
                f"the split {split.date()}; it has seen the test period. Re-train "
                "or move --split later"
            )
        if loaded.feature_spec != specs.features:
            raise DataError(
                f"{model_path}: its feature spec differs from the config's "
                "[features]; use the config it was trained with"
            )
    algorithm = loaded.algorithm if loaded is not None else specs.train.algorithm
    if algorithm in FORWARD_LEARNERS:
        raise DataError(
            f"a study's meta_adaptive rows need a gradient learner, not {algorithm!r}; "
            f'keep [meta] algorithm = "maml" and add [meta] compare = ["{algorithm}"] '
            f"to trade it as meta_{algorithm}"
        )
    changes = task_changes(frames, config, regimes, split)
    # A loaded checkpoint is one model: the study then runs that one seed.
    seeds = (
        [config.seed]
        if loaded is not None
        else [config.seed + i for i in range(config.ensemble.seeds)]
    )
    # Logged too: the heartbeat of a piped run names the step from the log.
    log.info("meta-training %d seed(s) x (meta, erm)", len(seeds))
    if console is not None and progress:
        console.print(
            f"  meta-training {len(seeds)} seed(s) x (meta, erm) on bars before "
            f"{split.date()} ({sum(map(len, changes.values()))} regime changes "
            "anchor the tasks) ..."
        )
    if cache is not None and loaded is None:
        trained = train_seeds_once(cache, _train_seed, frames, config, specs, split, changes, seeds)
    else:
        trained = Parallel(n_jobs=min(n_jobs, len(seeds)))(
            delayed(_train_seed)(frames, config, specs, split, changes, seed, loaded)
            for seed in seeds
        )
    models = {
        "meta": [t[0] for t in trained],
        "erm": [t[1] for t in trained],
        "random": [t[2] for t in trained],
    }
    for name in specs.train.compare:
        if console is not None and progress:
            console.print(f"  training the {name} learner, {len(seeds)} seed(s) ...")
        models[name] = Parallel(n_jobs=min(n_jobs, len(seeds)))(
            delayed(train_meta)(
                frames,
                config,
                dc_replace(specs, train=specs.train.for_learner(name)),
                split,
                False,
                changes,
                seed,
            )
            for seed in seeds
        )
    return models

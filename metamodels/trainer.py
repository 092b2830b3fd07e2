"""The meta-training loop: sample tasks, take a meta-step, validate, stop early.

A first version with no validation kept lowering the meta-training loss on
real ETFs while it memorised the training period (every out-of-sample variant
lost money). So the tasks from the *last* ``val_fraction`` of the training
period are held out, the query loss after adaptation on them is watched, and
the best validated parameters are returned; AdamW's weight decay adds a
second brake.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metabt.feeds.errors import DataError
from metabt.feeds.tasks import TaskBatch, TaskSampler
from metabt.metamodels.learners import LEARNERS, MetaLearner, TorchTasks
from metabt.metamodels.model import MetaModel, TrainConfig, adapted_query_losses
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import Params, PolicySpec, init_params

__all__ = [
    "MetaModel",
    "TrainConfig",
    "fit",
    "make_learner",
    "meta_train",
    "split_period",
    "training_context",
    "validation_tasks",
]

log = logging.getLogger(__name__)

Sample = Callable[[int, np.random.Generator], TaskBatch]
Changes = Mapping[str, Sequence[Any]] | None
VALIDATION_SEED = 20240101


def make_learner(config: TrainConfig) -> MetaLearner:
    """The learner ``config`` names, with its inner loop settings."""
    cls = LEARNERS[config.algorithm]
    learn = config.learns_inner_lr and config.algorithm != "metasgd"  # metasgd: always, per weight
    return cls(
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        learn_inner_lr=learn,
        learn_lr_length_power=config.learns_inner_lr,
        unadapted_weight=config.unadapted_weight,
    )


def split_period(
    frames: dict[str, pd.DataFrame], start: Any, end: Any, val_fraction: float
) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """``(start, split, end)``: training tasks live in [start, split), validation in [split, end).

    ``split`` is the date that leaves ``val_fraction`` of the period's distinct
    dates (over all assets) after it. The task sampler keeps every bar *and*
    label of a task inside its range, so no training label reaches the
    validation period: that is the embargo.
    """
    dates = pd.DatetimeIndex(sorted(set().union(*(f.index for f in frames.values()))))
    lo = pd.Timestamp(start) if start is not None else dates[0]
    hi = pd.Timestamp(end) if end is not None else dates[-1] + pd.Timedelta(days=1)
    inside = dates[(dates >= lo) & (dates < hi)]
    if len(inside) < 2:
        raise DataError(
            f"training period [{lo.date()}, {hi.date()}) holds fewer than 2 bars; "
            "check train start/end against the data's dates"
        )
    if val_fraction <= 0:
        return lo, hi, hi
    split = inside[min(len(inside) - 1, round(len(inside) * (1.0 - val_fraction)))]
    return lo, split, hi


def stamped(
    model: MetaModel,
    feature_spec: Any,
    task_spec: Any,
    period: tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp],
    val: TaskBatch | None,
) -> MetaModel:
    """``model`` with what it was trained on: its features, tasks and periods (see
    :func:`split_period`); every trainer returns its model through here."""
    lo, split, hi = period
    return replace(
        model,
        feature_spec=feature_spec,
        task_spec=task_spec,
        train_period=(str(lo.date()), str(split.date())),
        val_period=None if val is None else (str(split.date()), str(hi.date())),
    )


def validation_tasks(
    frames: dict[str, pd.DataFrame],
    feature_spec: Any,
    task_spec: Any,
    split: pd.Timestamp,
    end: pd.Timestamp,
    n_tasks: int,
    changes: Changes = None,
) -> TaskBatch | None:
    """``n_tasks`` tasks from ``[split, end)``, drawn like training tasks but with a fixed seed,
    so every validation sees the same ones (None if the range is empty)."""
    if split >= end:
        return None
    sampler = TaskSampler(frames, feature_spec, task_spec, split, end, changes)
    return sampler.sample(n_tasks, np.random.default_rng(VALIDATION_SEED))


@contextmanager
def training_context(config: TrainConfig) -> Any:
    """Deterministic algorithms and ``config.threads`` torch threads, restored on exit."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(config.threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def meta_train(
    frames: dict[str, pd.DataFrame],
    feature_spec: Any,
    task_spec: Any,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    config: TrainConfig,
    start: Any = None,
    end: Any = None,
    progress: bool = True,
    changes: Changes = None,
    init: Params | None = None,
) -> MetaModel:
    """Meta-train a policy initialisation on tasks from ``[start, end)`` of ``frames``.

    Parameters
    ----------
    frames : dict of DataFrame
        Canonical bars per symbol (bars outside the period only serve as feature look-back).
    feature_spec, task_spec : feeds.features.FeatureSpec, feeds.tasks.TaskSpec
    policy_spec, objective_spec : PolicySpec, ObjectiveSpec
    config : TrainConfig
    start, end : date-like or None
        Training period ``[start, end)``; validation tasks come from its end.
    progress : bool
        Show a rich progress bar with the meta-loss.
    changes : mapping of symbol -> dates, optional
        Regime changes (true, or detected causally on these bars) where a share of
        the task supports start, as the trading schedule's windows do.
    init : dict of Tensor, optional
        Weights meta-training starts from (e.g. ERM's, ``TrainConfig.init = "erm"``);
        None: the seeded random weights.

    Returns
    -------
    MetaModel
        The best validated initialisation (``best_step``) and its inner step size(s).
    """
    lo, split, hi = split_period(frames, start, end, config.val_fraction)
    sampler = TaskSampler(frames, feature_spec, task_spec, lo, split, changes)
    val = validation_tasks(frames, feature_spec, task_spec, split, hi, config.val_tasks, changes)
    log.info(
        "meta-training %s on %d anchors in [%s, %s), validating on %d tasks in [%s, %s)",
        config.algorithm,
        len(sampler),
        lo.date(),
        split.date(),
        0 if val is None else len(val),
        split.date(),
        hi.date(),
    )
    model = fit(sampler.sample, val, policy_spec, objective_spec, config, progress, init)
    return stamped(model, feature_spec, task_spec, (lo, split, hi), val)


def fit(
    sample: Sample,
    val: TaskBatch | None,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    config: TrainConfig,
    progress: bool = False,
    init: Params | None = None,
) -> MetaModel:
    """The loop itself, on any task source: ``sample(n, rng)`` -> training TaskBatch.

    ``val`` (fixed tasks) drives early stopping; None trains for ``meta_steps``.
    ``init`` replaces the seeded random starting weights (it is copied, not changed).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    learner = make_learner(config)
    meta = learner.init_meta(init_params(policy_spec, config.seed) if init is None else init)
    weights = [v for k, v in meta.items() if not learner.is_lr_key(k)]
    rates = [v for k, v in meta.items() if learner.is_lr_key(k)]
    opt = torch.optim.AdamW(
        [
            {"params": weights, "weight_decay": config.weight_decay},
            {"params": rates, "weight_decay": 0.0},
        ],
        lr=config.outer_lr,
    )

    def validate(steps: int = config.inner_steps) -> float:
        params, lr = learner.split(meta)
        return float(
            adapted_query_losses(
                params, lr, val, steps, policy_spec, objective_spec, learner.final_power(meta)
            ).mean()
        )

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in meta.items()}

    history: dict[str, list[float]] = {
        "step": [],
        "train_loss": [],
        "val_loss": [],
        "val_loss_unadapted": [],
    }
    best_loss, best_step, best_meta, bad, running = math.inf, 0, snapshot(), 0, []
    columns = (
        TextColumn(config.algorithm),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]:.4f}"),
        TimeElapsedColumn(),
    )
    with training_context(config), Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("meta", total=config.meta_steps, loss=math.nan, val=math.nan)
        # Step 0 validates the initialisation itself: if meta-training never
        # beats it on later data, the untrained weights are what we return.
        for step in range(config.meta_steps + 1):
            if step > 0:
                tasks = TorchTasks.from_batch(sample(config.tasks_per_step, rng))
                loss, grads = learner.meta_grads(meta, tasks, policy_spec, objective_spec)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"meta-loss became {loss} at step {step}; lower "
                        "train.outer_lr or train.inner_lr"
                    )
                for k, v in meta.items():
                    v.grad = grads[k]
                opt.step()
                running.append(loss)
                bar.update(job, advance=1, loss=loss)
            if (step % config.eval_every and step != config.meta_steps) or (
                val is None and step == 0
            ):
                continue
            val_loss = validate() if val is not None else math.nan
            train_loss = float(np.mean(running)) if running else math.nan
            unadapted = validate(0) if val is not None else math.nan
            for key, value in (
                ("step", step),
                ("train_loss", train_loss),
                ("val_loss", val_loss),
                ("val_loss_unadapted", unadapted),
            ):
                history[key].append(value)
            running = []
            bar.update(job, val=val_loss)
            if val is None or val_loss < best_loss:
                best_loss, best_step, best_meta, bad = val_loss, step, snapshot(), 0
            else:
                bad += 1
                if bad >= config.patience:
                    log.info(
                        "early stop at step %d: best validation loss %.5f at step %d",
                        step,
                        best_loss,
                        best_step,
                    )
                    break
    params, _ = learner.split(best_meta)
    return MetaModel(
        params={k: v.detach().clone() for k, v in params.items()},
        inner_lr=learner.final_lr(best_meta),
        inner_steps=config.inner_steps,
        algorithm=config.algorithm,
        policy_spec=policy_spec,
        objective_spec=objective_spec,
        config=config,
        best_step=best_step,
        history=history,
        lr_length_power=learner.final_power(best_meta),
    )

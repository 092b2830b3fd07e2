"""Baselines for the ablations: the same network without meta-learning.

``erm_train`` fits the policy by plain empirical risk minimisation: the trading
objective over every bar of the training period at once, with the same
validation period, early stopping and weight decay as meta-training, so the
comparison isolates what meta-learning adds. ``random_init`` is the
"adapted from a random initialisation" ablation.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from metabt.feeds.features import LABEL_DELAY, compute_features, compute_labels, trailing_vol
from metabt.feeds.tasks import TaskBatch
from metabt.metamodels.model import MetaModel, TrainConfig, adapted_query_losses
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.metamodels.policy import PolicySpec, init_params, positions
from metabt.metamodels.trainer import (
    Changes,
    split_period,
    stamped,
    training_context,
    validation_tasks,
)

log = logging.getLogger(__name__)

Series = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def training_series(
    frames: dict[str, pd.DataFrame], feature_spec: Any, start: Any, end: Any
) -> Series:
    """Per asset, the features ``(n, F)``, labels ``(n,)`` and ``1 / vol`` of every usable bar.

    A bar is used when its features are settled (after the warm-up), it lies at
    or after ``start``, and both opens its label needs lie before ``end``, the
    same rule the task sampler applies, so ERM sees exactly the training bars.
    """
    out: Series = []
    for frame in frames.values():
        x = compute_features(frame, feature_spec).to_numpy(np.float32)
        y = compute_labels(frame, feature_spec).to_numpy(np.float32)
        a = (1.0 / trailing_vol(frame, feature_spec)).to_numpy(np.float32)
        dates = frame.index.to_numpy()
        lo = int(feature_spec.warmup)
        if start is not None:
            lo = max(lo, int(np.searchsorted(dates, np.datetime64(pd.Timestamp(start)))))
        hi = (
            len(dates)
            if end is None
            else int(np.searchsorted(dates, np.datetime64(pd.Timestamp(end))))
        )
        rows = slice(lo, max(lo, hi - LABEL_DELAY))
        xs, ys, avs = x[rows], y[rows], a[rows]
        ok = np.isfinite(xs).all(axis=1) & np.isfinite(ys)
        # Valid bars have no NaN after the warm-up; should one appear, only that
        # row is dropped (the turnover term then spans the gap, as a held
        # position would).
        if ok.sum() >= 2:
            out.append((xs[ok], ys[ok], avs[ok]))
    return out


def erm_train(
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
) -> MetaModel:
    """Train the policy by ERM on ``[start, end)`` with validation-based early stopping.

    Same arguments as :func:`metamodels.trainer.meta_train`. ``meta_steps`` is
    the number of full-batch AdamW steps and ``outer_lr`` their step size. The
    validation loss is the query loss *without* adaptation (what a static
    policy earns), on the same validation tasks meta-training uses.
    """
    lo, split, hi = split_period(frames, start, end, config.val_fraction)
    series = training_series(frames, feature_spec, lo, split)
    val = validation_tasks(frames, feature_spec, task_spec, split, hi, config.val_tasks, changes)
    model = fit_erm(series, val, policy_spec, objective_spec, config, progress=progress)
    return stamped(model, feature_spec, task_spec, (lo, split, hi), val)


def fit_erm(
    series: Series,
    val: TaskBatch | None,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    config: TrainConfig,
    progress: bool = False,
) -> MetaModel:
    """Full-batch ERM on per-asset ``(x, y)`` series; each asset weighted by its bar count."""
    if not series:
        raise ValueError("no training bars for ERM; use a longer training period")
    torch.manual_seed(config.seed)
    data = [tuple(torch.as_tensor(part) for part in item) for item in series]
    n_total = float(sum(len(item[1]) for item in data))
    params = {k: v.requires_grad_(True) for k, v in init_params(policy_spec, config.seed).items()}
    opt = torch.optim.AdamW(
        list(params.values()), lr=config.outer_lr, weight_decay=config.weight_decay
    )

    def validate() -> float:
        return float(
            adapted_query_losses(
                params, config.inner_lr, val, 0, policy_spec, objective_spec
            ).mean()
        )

    # ERM's validation loss is already the unadapted one; both keys for one layout.
    history: dict[str, list[float]] = {
        "step": [],
        "train_loss": [],
        "val_loss": [],
        "val_loss_unadapted": [],
    }
    best_loss, best_step, bad, loss_value = math.inf, 0, 0, math.nan
    best = {k: v.detach().clone() for k, v in params.items()}
    columns = (
        TextColumn("erm"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
    )
    with training_context(config), Progress(*columns, disable=not progress) as bar:
        job = bar.add_task("erm", total=config.meta_steps, loss=math.nan)
        for step in range(config.meta_steps + 1):  # step 0 validates the initialisation
            if step > 0:
                opt.zero_grad()
                loss = sum(
                    len(y)
                    / n_total
                    * trading_loss(positions(params, x, policy_spec), y, objective_spec, a)
                    for x, y, a in data
                )
                loss.backward()
                opt.step()
                loss_value = float(loss.detach())
                bar.update(job, advance=1, loss=loss_value)
            if (step % config.eval_every and step != config.meta_steps) or (
                val is None and step == 0
            ):
                continue
            val_loss = validate() if val is not None else math.nan
            for key, value in (
                ("step", step),
                ("train_loss", loss_value),
                ("val_loss", val_loss),
                ("val_loss_unadapted", val_loss),
            ):
                history[key].append(value)
            if val is None or val_loss < best_loss:
                best_loss, best_step, bad = val_loss, step, 0
                best = {k: v.detach().clone() for k, v in params.items()}
            else:
                bad += 1
                if bad >= config.patience:
                    log.info("ERM early stop at step %d (best %d)", step, best_step)
                    break
    return MetaModel(
        params=best,
        inner_lr=config.inner_lr,
        inner_steps=config.inner_steps,
        algorithm="erm",
        policy_spec=policy_spec,
        objective_spec=objective_spec,
        config=config,
        best_step=best_step,
        history=history,
    )


def random_init(
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    config: TrainConfig,
    inner_lr: float | dict[str, torch.Tensor] | None = None,
    feature_spec: Any = None,
    task_spec: Any = None,
) -> MetaModel:
    """An untrained policy (seeded like training) for the random-initialisation ablation.

    Parameters
    ----------
    inner_lr : float or dict of Tensor, optional
        Step size(s) to adapt with; pass the meta-model's learned ones so the
        ablation differs from it only in the initial weights. Default
        ``config.inner_lr``.
    """
    return MetaModel(
        params=init_params(policy_spec, config.seed),
        inner_lr=config.inner_lr if inner_lr is None else inner_lr,
        inner_steps=config.inner_steps,
        algorithm="random",
        policy_spec=policy_spec,
        objective_spec=objective_spec,
        feature_spec=feature_spec,
        task_spec=task_spec,
        config=config,
    )

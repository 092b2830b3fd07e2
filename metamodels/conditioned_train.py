"""Episodic meta-training of the context and regime-memory policies.

The same tasks (change-anchored, variable-length, from :mod:`feeds.tasks`),
the same P&L objective with risk and cost terms, the same validation split,
early stopping and AdamW weight decay as the optimisation-based learners of
:mod:`metamodels.trainer`; only "adaptation" differs: instead of SGD steps on
the support window, the window is read by the encoder (context) or matched
against the memory bank (memory), and the query loss is back-propagated
through that forward pass into every weight.

One task in ten is trained with its context removed, because the strategy
trades the unconditioned policy while a new regime has fewer than
``min_window`` bars (and in the "never adapted" ablation).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from metabt.feeds.tasks import TaskBatch, TaskSampler
from metabt.metamodels.context_policy import (
    ContextSpec,
    fold,
    init_context_params,
    window_context,
)
from metabt.metamodels.learners import TorchTasks
from metabt.metamodels.memory_policy import (
    SCALE,
    Alarms,
    MemorySpec,
    SegmentBank,
    attend,
    bank_embeddings,
    bank_tensors,
    build_bank,
    init_memory_params,
)
from metabt.metamodels.model import MetaModel, TrainConfig
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.metamodels.policy import Params, PolicySpec, init_params, positions
from metabt.metamodels.trainer import (
    Changes,
    Sample,
    split_period,
    stamped,
    training_context,
    validation_tasks,
)

log = logging.getLogger(__name__)

NO_CONTEXT_SHARE = 0.1


def decision_days(batch: TaskBatch) -> torch.Tensor:
    """Day number of every task's anchor (the bar its context is read at)."""
    return torch.as_tensor(batch.anchors.astype("datetime64[D]").astype(np.int64))


def task_contexts(
    params: Params,
    tasks: TorchTasks,
    days: torch.Tensor,
    spec: PolicySpec,
    bank: SegmentBank | None,
) -> torch.Tensor:
    """Context vector of every task's support window, ``(B, H)``."""
    c = window_context(params, tasks.support_x, tasks.support_y, spec, tasks.support_mask)
    if bank is None or len(bank) == 0:
        return c if bank is None else torch.zeros_like(c)
    memory = bank_embeddings(params, bank, spec)
    eligible = torch.as_tensor(bank.known_day)[None, :] < days[:, None]
    return attend(params, c, memory, eligible)[0]


def query_losses(
    params: Params,
    tasks: TorchTasks,
    context: torch.Tensor,
    spec: PolicySpec,
    objective: ObjectiveSpec,
) -> torch.Tensor:
    """Per-task query loss of the policy modulated by ``context``, ``(B,)``."""
    phi = fold(params, context)
    pos = positions(phi, tasks.query_x, spec)
    return trading_loss(pos, tasks.query_y, objective, tasks.query_inv_vol, tasks.query_mask)


def fit_conditioned(
    sample: Sample,
    val: TaskBatch | None,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    config: TrainConfig,
    bank: SegmentBank | None = None,
    ctx: ContextSpec | None = None,
    memory: MemorySpec | None = None,
) -> MetaModel:
    """Train a context policy (``bank`` None) or a memory policy on ``sample(n, rng)`` tasks.

    ``val`` drives early stopping as in :func:`metamodels.trainer.fit`; the
    returned :class:`MetaModel` holds every weight (``w*``, ``ctx.*``, ``mem.*``)
    and, for the memory policy, the bank's keys, values and dates (``bank.*``).
    """
    ctx, memory = ctx or ContextSpec(), memory or MemorySpec()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = {
        **init_params(policy_spec, config.seed),
        **init_context_params(policy_spec, ctx, config.seed),
    }
    if bank is not None:
        start.update(init_memory_params(ctx, memory, config.seed))
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    # The cosine attention's scale is a sharpness, not a weight: decay would pull it to 1.
    groups: list[dict] = [{"params": [v for k, v in params.items() if k != SCALE]}]
    if SCALE in params:
        groups.append({"params": [params[SCALE]], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=config.outer_lr, weight_decay=config.weight_decay)
    val_tasks = None if val is None else (TorchTasks.from_batch(val), decision_days(val))

    def val_losses() -> tuple[float, float]:
        if val_tasks is None:  # only called with validation tasks
            raise ValueError("no validation tasks")
        tasks, days = val_tasks
        with torch.no_grad():
            c = task_contexts(params, tasks, days, policy_spec, bank)
            with_ctx = query_losses(params, tasks, c, policy_spec, objective_spec)
            without = query_losses(params, tasks, torch.zeros_like(c), policy_spec, objective_spec)
        return float(with_ctx.mean()), float(without.mean())

    history: dict[str, list[float]] = {
        "step": [],
        "train_loss": [],
        "val_loss": [],
        "val_loss_unadapted": [],
    }
    best = (math.inf, 0, {k: v.detach().clone() for k, v in params.items()})
    bad, running = 0, []
    with training_context(config):
        for step in range(config.meta_steps + 1):
            if step > 0:
                batch = sample(config.tasks_per_step, rng)
                tasks, days = TorchTasks.from_batch(batch), decision_days(batch)
                keep = torch.as_tensor(rng.random(len(tasks)) >= NO_CONTEXT_SHARE)
                c = task_contexts(params, tasks, days, policy_spec, bank) * keep[:, None]
                loss = query_losses(params, tasks, c, policy_spec, objective_spec).mean()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"meta-loss became {value} at step {step}; lower train.outer_lr"
                    )
                opt.zero_grad()
                loss.backward()
                opt.step()
                running.append(value)
            if step % config.eval_every and step != config.meta_steps:
                continue
            if val_tasks is None:
                continue
            val_loss, unadapted = val_losses()
            for key, value in (
                ("step", step),
                ("train_loss", float(np.mean(running)) if running else math.nan),
                ("val_loss", val_loss),
                ("val_loss_unadapted", unadapted),
            ):
                history[key].append(value)
            running = []
            if val_loss < best[0]:
                best, bad = (val_loss, step, {k: v.detach().clone() for k, v in params.items()}), 0
            else:
                bad += 1
                if bad >= config.patience:
                    log.info(
                        "early stop at step %d: best validation loss at step %d", step, best[1]
                    )
                    break
    if val_tasks is None:
        best = (math.nan, config.meta_steps, {k: v.detach().clone() for k, v in params.items()})
    weights = best[2]
    if bank is not None:
        weights.update(bank_tensors(weights, bank, policy_spec))
    return MetaModel(
        params=weights,
        inner_lr=1.0,  # no SGD steps: adaptation is the forward pass
        inner_steps=0,
        algorithm="memory" if bank is not None else "context",
        policy_spec=policy_spec,
        objective_spec=objective_spec,
        config=config,
        best_step=best[1],
        history=history,
        bank_assets=() if bank is None else bank.assets,
    )


def train_conditioned(
    frames: dict[str, pd.DataFrame],
    feature_spec: Any,
    task_spec: Any,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    config: TrainConfig,
    start: Any = None,
    end: Any = None,
    changes: Changes = None,
    alarms: Alarms | None = None,
) -> MetaModel:
    """Meta-train the learner ``config.algorithm`` names on ``[start, end)`` of ``frames``.

    Same split into training and validation tasks as :func:`metamodels.trainer.meta_train`.
    The memory policy's bank holds the segments between ``alarms`` (causal
    detector output per asset) known before ``end``; training tasks only
    attend to the segments known before their own anchor.
    """
    lo, split, hi = split_period(frames, start, end, config.val_fraction)
    sampler = TaskSampler(frames, feature_spec, task_spec, lo, split, changes)
    val = validation_tasks(frames, feature_spec, task_spec, split, hi, config.val_tasks, changes)
    bank, memory = None, None
    if config.algorithm == "memory":
        memory = MemorySpec(max_bars=task_spec.max_support, attention=config.memory_attention)
        bank = build_bank(frames, feature_spec, alarms or {}, lo, hi, memory)
        log.info("memory bank: %d segments from %d assets", len(bank), len(frames))
    model = fit_conditioned(
        sampler.sample, val, policy_spec, objective_spec, config, bank, memory=memory
    )
    return stamped(model, feature_spec, task_spec, (lo, split, hi), val)

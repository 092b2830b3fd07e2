"""What training produces: ``TrainConfig`` in, ``MetaModel`` out.

Kept apart from the training loop so checkpoints, strategies and reports can
use a trained model without importing the trainer (or rich, or the task
sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from metabt.metamodels.adapt import adapt, expand_tasks, query_loss
from metabt.metamodels.learners import LR_LENGTH_REF, TorchTasks
from metabt.metamodels.memory_policy import ATTENTIONS
from metabt.metamodels.numpy_policy import NumpyLR, NumpyParams
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import Params, PolicySpec, to_numpy

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "context", "memory")
# Learners that adapt by a forward pass over the window (metamodels.conditioned_train).
FORWARD_LEARNERS = ("context", "memory")
# Where a gradient learner's meta-training starts (see TrainConfig.init).
INITS = ("random", "erm")
# A learned inner step size is the default where the algorithm has a gradient for it.
_LR_DEFAULT = {
    "maml": True,
    "fomaml": True,
    "reptile": False,
    "metasgd": True,
    "context": False,
    "memory": False,
}


@dataclass(frozen=True)
class TrainConfig:
    """How to (meta-)train the policy.

    Parameters
    ----------
    algorithm : {"maml", "fomaml", "reptile", "metasgd", "context", "memory"}
        Meta-learner (see :mod:`metamodels.learners`; ``context`` and ``memory``
        adapt by a forward pass, see :mod:`metamodels.conditioned_train`). ERM
        uses the same config.
    compare : tuple of {"context", "memory"}
        Studies only: also train these learners with the same settings and trade
        them as ``meta_context`` / ``meta_memory`` with their ablations.
    meta_steps : int
        Maximum outer (meta-)optimiser steps; early stopping may end sooner.
    tasks_per_step : int
        Tasks per meta-batch.
    inner_steps : int
        SGD steps of each adaptation (training and trading alike).
    inner_lr : float
        Inner step size (the starting value when learned).
    learn_inner_lr : bool or None
        None = the algorithm's default: a learned scalar for maml / fomaml,
        per-parameter for metasgd (always), fixed for reptile (never learnable).
    outer_lr : float
        AdamW step size of the outer loop.
    weight_decay : float
        AdamW decoupled weight decay on the policy weights (not on step sizes);
        with early stopping, the guard against memorising the training period.
    val_fraction : float
        Share of the training period's dates, taken from its END, whose tasks
        validate; training tasks end before it (no label overlaps it). 0 = none.
    val_tasks : int
        At most this many validation tasks (evenly spaced anchors).
    eval_every : int
        Meta-steps between validations.
    patience : int
        Stop after this many validations without a new best validation loss;
        the best validated parameters are returned.
    seed : int
        Fixes initial weights, task sampling and hence the result.
    memory_attention : {"dot", "cosine"}
        How the memory policy scores past segments against the current window
        (:mod:`metamodels.memory_policy`): scaled dot product, or cosine times a
        learned scale. Other learners ignore it.
    init : {"random", "erm"}
        Where a gradient learner's meta-training starts: the seeded random weights,
        or the weights ERM fits to the same training bars with the same settings and
        seed (pooled training first, then meta-training on top of it). The context
        and memory learners ignore it; the random-init ablation stays random.
    unadapted_weight : float
        A gradient learner's meta-loss adds this weight times the query loss of
        the initial weights before any inner step (0 = plain meta-learning): the
        initial weights must then trade well on their own too, and adaptation
        starts from them (:class:`metamodels.learners.MetaLearner`). The context
        and memory learners ignore it.
    threads : int
        Torch intra-op threads while training (restored afterwards). The
        tensors are small, so extra threads gain little, and on a busy machine
        a parallel op waits for its slowest thread; a fixed count also keeps
        results independent of the machine's core count.
    """

    # Defaults picked by validation loss only (the later part of each training
    # period) on the basket ETFs 2005-2011 and the synthetic study market: the
    # smaller inner and outer step sizes and the stronger weight decay won on both.
    algorithm: str = "maml"
    compare: tuple[str, ...] = ()
    meta_steps: int = 600
    tasks_per_step: int = 64
    inner_steps: int = 5
    inner_lr: float = 0.1
    learn_inner_lr: bool | None = None
    outer_lr: float = 3e-3
    weight_decay: float = 0.1
    val_fraction: float = 0.25
    val_tasks: int = 512
    eval_every: int = 20
    patience: int = 8
    seed: int = 0
    threads: int = 1
    memory_attention: str = "dot"
    init: str = "random"
    unadapted_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"train.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        object.__setattr__(self, "compare", tuple(self.compare))
        if self.memory_attention not in ATTENTIONS:
            raise ValueError(
                f"train.memory_attention must be one of {ATTENTIONS}, got {self.memory_attention!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"train.init must be one of {INITS}, got {self.init!r}")
        if not (self.unadapted_weight >= 0 and math.isfinite(self.unadapted_weight)):
            raise ValueError(
                f"train.unadapted_weight must be a number >= 0, got {self.unadapted_weight!r}"
            )
        for name in self.compare:
            if name not in FORWARD_LEARNERS:
                raise ValueError(f"train.compare lists {name!r}; it takes {list(FORWARD_LEARNERS)}")
        for name in (
            "meta_steps",
            "tasks_per_step",
            "val_tasks",
            "eval_every",
            "patience",
            "threads",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_steps < 0:
            raise ValueError(f"train.inner_steps must be >= 0, got {self.inner_steps}")
        for name in ("inner_lr", "outer_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"train.{name} must be a positive number, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"train.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.learn_inner_lr is True and self.algorithm == "reptile":
            raise ValueError(
                "train.learn_inner_lr = true is impossible for reptile (no gradient "
                "for the step size); leave it unset or use maml / fomaml / metasgd"
            )
        if self.learn_inner_lr is False and self.algorithm == "metasgd":
            raise ValueError(
                "train.learn_inner_lr = false turns metasgd into maml; "
                'use algorithm = "maml" instead'
            )

    @property
    def learns_inner_lr(self) -> bool:
        """Whether the inner step size(s) are learned (resolving the None default)."""
        if self.learn_inner_lr is None:
            return _LR_DEFAULT[self.algorithm]
        return bool(self.learn_inner_lr)


@dataclass(frozen=True)
class MetaModel:
    """A trained policy initialisation and how to adapt it.

    Attributes
    ----------
    params : dict of Tensor
        Initial weights (float32, detached), the ones adaptation starts from.
    inner_lr : float or dict of Tensor
        Inner step size, or one tensor per parameter (Meta-SGD).
    inner_steps : int
        Adaptation steps it was trained for.
    algorithm : str
        ``maml``, ``fomaml``, ``reptile``, ``metasgd``, ``erm`` or ``random``.
    policy_spec, objective_spec : PolicySpec, ObjectiveSpec
    feature_spec, task_spec : FeatureSpec, TaskSpec or None
        What the inputs were (None for models built without frames).
    config : TrainConfig or None
    train_period, val_period : (str, str) or None
        ISO dates ``[start, end)`` of the training and validation tasks' bars.
    best_step : int
        The (meta-)step whose parameters were kept (0 = the initialisation).
    lr_length_power : float
        Exponent k of the step size's dependence on the support length n:
        the step is ``inner_lr * (n / LR_LENGTH_REF) ** k`` (0 = the same for every n).
    bank_assets : tuple of str
        Memory policy: the asset names its bank's ``bank.asset`` indices refer to.
    history : dict of list
        ``step``, ``train_loss`` (mean training loss since the previous
        validation), ``val_loss`` (mean validation query loss after
        adaptation) and ``val_loss_unadapted`` (the same tasks with no
        adaptation: if it is lower, adapting hurts on this data).
    """

    params: Params
    inner_lr: float | dict[str, torch.Tensor]
    inner_steps: int
    algorithm: str
    policy_spec: PolicySpec
    objective_spec: ObjectiveSpec
    feature_spec: Any = None
    task_spec: Any = None
    config: TrainConfig | None = None
    train_period: tuple[str, str] | None = None
    val_period: tuple[str, str] | None = None
    best_step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    lr_length_power: float = 0.0
    bank_assets: tuple[str, ...] = ()

    def seen_period(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """First and last bar dates (inclusive) its training and validation looked at.

        None for a model built without data (a random initialisation). A strategy
        trading this model must start after the second date.
        """
        if self.train_period is None:
            return None
        end = self.val_period[1] if self.val_period else self.train_period[1]
        return pd.Timestamp(self.train_period[0]), pd.Timestamp(end) - pd.Timedelta(days=1)

    def numpy_params(self) -> NumpyParams:
        """Float64 numpy copy of the weights, for per-bar inference and fast adaptation."""
        return to_numpy(self.params)

    def numpy_inner_lr(self) -> NumpyLR:
        """The inner step size(s) in the form :func:`metamodels.numpy_policy.adapt` takes."""
        if isinstance(self.inner_lr, dict):
            return to_numpy(self.inner_lr)
        return float(self.inner_lr)


def length_scale(n: Any, power: float) -> Any:
    """Step-size factor for a support window of ``n`` bars: ``(n / LR_LENGTH_REF) ** power``."""
    return (n / LR_LENGTH_REF) ** power


def adapted_query_losses(
    params: Params,
    inner_lr: float | dict[str, torch.Tensor],
    tasks: Any,
    steps: int,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    lr_length_power: float = 0.0,
) -> np.ndarray:
    """Query loss of every task after adapting ``params`` on its support window.

    ``tasks`` is a ``TaskBatch`` (numpy) or :class:`metamodels.learners.TorchTasks`;
    every task is adapted independently, in one batched call of the reference
    :func:`~metamodels.adapt.adapt`. Returns a float64 array ``(B,)``.
    """
    t = tasks if isinstance(tasks, TorchTasks) else TorchTasks.from_batch(tasks)
    theta = {k: v.detach() for k, v in params.items()}
    scale = length_scale(t.support_lengths(), lr_length_power) if lr_length_power else None
    phi = adapt(
        expand_tasks(theta, len(t)),
        t.support_x,
        t.support_y,
        steps,
        inner_lr,
        policy_spec,
        objective_spec,
        inv_vol=t.support_inv_vol,
        mask=t.support_mask,
        lr_scale=scale,
    )
    with torch.no_grad():
        return (
            query_loss(
                phi,
                t.query_x,
                t.query_y,
                policy_spec,
                objective_spec,
                t.query_inv_vol,
                t.query_mask,
            )
            .double()
            .numpy()
        )


def evaluate(model: MetaModel, tasks: Any, steps: int | None = None) -> np.ndarray:
    """Per-task query loss of ``model`` after ``steps`` adaptation steps (default: its own)."""
    return adapted_query_losses(
        model.params,
        model.inner_lr,
        tasks,
        model.inner_steps if steps is None else steps,
        model.policy_spec,
        model.objective_spec,
        model.lr_length_power,
    )

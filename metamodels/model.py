"""What training produces: ``TrainConfig`` in, ``MetaModel`` out.

Kept apart from the training loop so checkpoints, strategies and reports can
use a trained model without importing the trainer (or rich, or the task
sampler). ``TrainConfig`` itself lives in the torch-free
:mod:`metamodels.train_config` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from metabt.metamodels.adapt import adapt, expand_tasks, query_loss
from metabt.metamodels.learners import LR_LENGTH_REF, TorchTasks
from metabt.metamodels.numpy_policy import NumpyLR, NumpyParams
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import Params, PolicySpec, to_numpy
from metabt.metamodels.train_config import ALGORITHMS, FORWARD_LEARNERS, INITS, TrainConfig

__all__ = [
    "ALGORITHMS",
    "FORWARD_LEARNERS",
    "INITS",
    "MetaModel",
    "TrainConfig",
    "adapted_query_losses",
    "evaluate",
    "length_scale",
]


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

"""The meta-learned volatility forecaster: a log-variance model trained with QLIKE.

The model predicts ``h_t = log(sigma^2_{t+1} / v_t)``, the log ratio of next bar's
variance to the EWM reference variance ``v_t`` (see :mod:`feeds.vol_features`), as a
linear function of the inputs: ``h = x @ w0 + b0``. Zero weights reproduce the EWM
estimator; meta-training finds weights from which a few SGD steps on the window
since a regime change fit that regime's volatility dynamics.

It is trained by the project's meta-learners (MAML, FOMAML, Reptile, Meta-SGD) on
the same change-anchored tasks as the trading policy, through
:func:`metamodels.adapt.adapt`: the weights have the shapes of a policy with no
hidden layer, and :class:`VolObjective` supplies the loss. The loss is QLIKE
(Patton 2011), robust to the noise of a one-bar variance proxy ``y``::

    qlike(y, h) = y * exp(-h) + h - log(y) - 1      (0 for a perfect forecast)

Its gradient in ``h`` is ``1 - y * exp(-h)``, so the numpy fast path used at trading
time is a few lines; ``tests/test_volatility.py`` checks it equals the torch path to 1e-6.
``h`` is clipped to ``+-LOG_CLIP`` (a forecast within e^4 of the reference variance)
so one bad adaptation step cannot produce a zero or infinite volatility.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from metabt.feeds.tasks import TaskSpec
from metabt.feeds.vol_features import VolFeatureSpec
from metabt.metamodels.checkpoint import (
    INNER_LR_PREFIX,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    split_inner_lrs,
)
from metabt.metamodels.model import MetaModel, TrainConfig, length_scale
from metabt.metamodels.policy import NumpyParams, PolicySpec, to_numpy

LOG_CLIP = 4.0
# Floor of the proxy inside log(y): a bar with no price change has y = 0, and only
# the constant of the loss (not its gradient) depends on log(y).
Y_FLOOR = 1e-6
KIND = "volatility"


@dataclass(frozen=True)
class VolObjective:
    """QLIKE of the log-variance forecast; plugs into :func:`metamodels.adapt.adapt`."""

    log_clip: float = LOG_CLIP

    def window_loss(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean QLIKE of every window over its real bars, ``(...)``."""
        terms = qlike(y, log_ratio(params, x, self.log_clip))
        if mask is None:
            return terms.mean(-1)
        return (terms * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def log_ratio(
    params: dict[str, torch.Tensor], x: torch.Tensor, clip: float = LOG_CLIP
) -> torch.Tensor:
    """``h`` for every bar of ``x`` (``(..., n, F)`` -> ``(..., n)``); batched weights allowed."""
    w, b = params["w0"], params["b0"]
    h = torch.baddbmm(b.unsqueeze(1), x, w) if w.dim() == 3 else x @ w + b
    return h[..., 0].clamp(-clip, clip)


def qlike(y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per-bar QLIKE of forecast ``exp(h)`` against proxy ``y`` (both relative to ``v``)."""
    return y * torch.exp(-h) + h - torch.log(y.clamp(min=Y_FLOOR)) - 1.0


# -- numpy twin: what runs at trading time -------------------------------------
def numpy_log_ratio(params: NumpyParams, x: np.ndarray, clip: float = LOG_CLIP) -> np.ndarray:
    """Numpy twin of :func:`log_ratio` for unbatched weights, ``(n, F)`` or ``(F,)``."""
    h = np.asarray(x) @ params["w0"][:, 0] + params["b0"][0]
    return np.clip(h, -clip, clip)


def numpy_qlike(y: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Numpy twin of :func:`qlike`."""
    y = np.asarray(y, dtype=np.float64)
    return y * np.exp(-h) + h - np.log(np.maximum(y, Y_FLOOR)) - 1.0


def numpy_vol_loss_and_grad(
    params: NumpyParams, x: np.ndarray, y: np.ndarray, clip: float = LOG_CLIP
) -> tuple[float, NumpyParams]:
    """Mean QLIKE on one window and its gradient in ``w0``, ``b0``."""
    z = x @ params["w0"][:, 0] + params["b0"][0]
    h = np.clip(z, -clip, clip)
    n = max(len(y), 1)
    # torch.clamp passes the gradient at the bounds themselves, not beyond them.
    dh = (1.0 - y * np.exp(-h)) * ((z >= -clip) & (z <= clip)) / n
    loss = float(numpy_qlike(y, h).mean())
    return loss, {"w0": (x.T @ dh)[:, None], "b0": np.array([dh.sum()])}


def fast_adapt_vol(
    params: NumpyParams,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: float | NumpyParams,
    clip: float = LOG_CLIP,
) -> NumpyParams:
    """``steps`` SGD steps of QLIKE on one window: :func:`metamodels.adapt.adapt` in numpy."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cur = dict(params)
    for _ in range(steps):
        _, grads = numpy_vol_loss_and_grad(cur, x, y, clip)
        cur = {k: cur[k] - (lr[k] if isinstance(lr, dict) else lr) * grads[k] for k in cur}
    return cur


# -- the trained model ------------------------------------------------------------
@dataclass(frozen=True)
class VolModel:
    """A meta-learned volatility forecaster, in numpy.

    Attributes
    ----------
    params : dict of ndarray
        Initial weights ``w0`` ``(F, 1)`` and ``b0`` ``(1,)`` every adaptation starts from.
    inner_lr : float or dict of ndarray
        Adaptation step size (per weight for Meta-SGD).
    inner_steps : int
        SGD steps per adaptation.
    feature_spec : VolFeatureSpec
    task_spec : TaskSpec
        Window lengths it was meta-trained on.
    lr_length_power : float
        The step on an ``n``-bar window is ``inner_lr * (n / 60) ** lr_length_power``.
    algorithm : str
    train_period : (str, str)
        ISO dates ``[start, end)`` of the bars meta-training and validation saw.
    """

    params: NumpyParams
    inner_lr: float | NumpyParams
    inner_steps: int
    feature_spec: VolFeatureSpec
    task_spec: TaskSpec
    lr_length_power: float = 0.0
    algorithm: str = "maml"
    train_period: tuple[str, str] = ("", "")

    def step_size(self, n: int) -> float | NumpyParams:
        scale = float(length_scale(n, self.lr_length_power))
        if isinstance(self.inner_lr, dict):
            return {k: v * scale for k, v in self.inner_lr.items()}
        return float(self.inner_lr) * scale

    def adapt(self, x: np.ndarray, y: np.ndarray) -> NumpyParams:
        """Weights adapted on one support window (rows with known targets only)."""
        return fast_adapt_vol(self.params, x, y, self.inner_steps, self.step_size(len(y)))

    def log_ratio(self, x: np.ndarray, params: NumpyParams | None = None) -> np.ndarray:
        return numpy_log_ratio(self.params if params is None else params, x)

    @classmethod
    def from_meta_model(cls, model: MetaModel) -> VolModel:
        lr = model.inner_lr
        last = model.val_period[1] if model.val_period else model.train_period[1]  # type: ignore[index]
        return cls(
            params=to_numpy(model.params),
            inner_lr=to_numpy(lr) if isinstance(lr, dict) else float(lr),
            inner_steps=model.inner_steps,
            feature_spec=model.feature_spec,
            task_spec=model.task_spec,
            lr_length_power=model.lr_length_power,
            algorithm=model.algorithm,
            train_period=(model.train_period[0], last),  # type: ignore[index]
        )


def train_vol_model(
    frames: dict[str, pd.DataFrame],
    feature_spec: VolFeatureSpec,
    task_spec: TaskSpec,
    config: TrainConfig,
    start: Any = None,
    end: Any = None,
    changes: Any = None,
    progress: bool = False,
) -> VolModel:
    """Meta-train the forecaster on tasks from ``[start, end)`` (validation at its end)."""
    from metabt.metamodels.trainer import meta_train  # the trainer imports the learners

    spec = PolicySpec(n_features=len(feature_spec.names), hidden=())
    model = meta_train(
        frames, feature_spec, task_spec, spec, VolObjective(), config, start, end, progress, changes
    )
    return VolModel.from_meta_model(model)


def save_vol_model(model: VolModel, path: str | Path, config: dict[str, Any]) -> Path:
    """Write the forecaster as a checkpoint folder (safetensors + JSON sidecar)."""
    tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in model.params.items()}
    per_parameter = isinstance(model.inner_lr, dict)
    if isinstance(model.inner_lr, dict):
        tensors.update(
            {
                INNER_LR_PREFIX + k: torch.as_tensor(v, dtype=torch.float32)
                for k, v in model.inner_lr.items()
            }
        )
    end = (pd.Timestamp(model.train_period[1]) - pd.Timedelta(days=1)).date().isoformat()
    meta = {
        "algorithm": model.algorithm,
        "policy": {"kind": KIND, "n_features": len(model.feature_spec.names), "hidden": []},
        "features": dataclasses.asdict(model.feature_spec),
        "task": dataclasses.asdict(model.task_spec),
        "objective": {"loss": "qlike", "log_clip": LOG_CLIP},
        "inner": {
            "steps": model.inner_steps,
            "lr": None if isinstance(model.inner_lr, dict) else float(model.inner_lr),
            "per_parameter_lr": per_parameter,
            "length_power": float(model.lr_length_power),
        },
        "training_period": {"start": model.train_period[0], "end": end},
        "config": config,
    }
    return save_checkpoint(path, tensors, meta)


def load_vol_model(path: str | Path) -> VolModel:
    """Load a forecaster saved by :func:`save_vol_model`."""
    path = Path(path)
    tensors, meta = load_checkpoint(path)
    if meta.policy.get("kind") != KIND:
        raise CheckpointError(
            f"{path}: not a volatility forecaster (policy.kind is {meta.policy.get('kind')!r}); "
            "pass the model_vol folder of a volatility run"
        )
    params, lrs = split_inner_lrs(tensors)
    n = int(meta.policy["n_features"])
    feature_spec = VolFeatureSpec(**meta.features)
    if set(params) != {"w0", "b0"} or tuple(params["w0"].shape) != (n, 1):
        raise CheckpointError(f"{path}: the weights do not match a {n}-input volatility model")
    if len(feature_spec.names) != n:
        raise CheckpointError(
            f"{path}: the feature spec gives {len(feature_spec.names)} inputs, not {n}"
        )
    end = (pd.Timestamp(meta.training_period.end) + pd.Timedelta(days=1)).date().isoformat()
    return VolModel(
        params=to_numpy(params),
        inner_lr=to_numpy(lrs) if meta.inner.per_parameter_lr else float(meta.inner.lr),
        inner_steps=meta.inner.steps,
        feature_spec=feature_spec,
        task_spec=TaskSpec(**meta.task.model_dump()),
        lr_length_power=meta.inner.length_power,
        algorithm=meta.algorithm,
        train_period=(meta.training_period.start.isoformat(), end),
    )

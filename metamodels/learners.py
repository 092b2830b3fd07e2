"""Meta-learners: MAML, first-order MAML, Reptile and Meta-SGD.

Each learner turns a batch of tasks into a meta-loss and the gradient of that
loss with respect to its *meta-parameters*: the policy's initial weights plus,
when learned, the inner step sizes (kept as logs so they stay positive).

Two engines compute the same thing:

``"batched"`` (default)
    The weights are expanded over a task dimension (``(B, in, out)`` views of
    the shared tensors, no copy) and every task is adapted by one call of
    :func:`metamodels.adapt.adapt` on the whole batch; each layer is a single
    batched matmul and the inner gradient is written out in torch
    (:mod:`metamodels.inner_grad`), so the inner loop is one forward graph
    and the meta-gradient one backward pass. On CPU this is tens of times
    faster than the loop and about twice as fast as ``torch.func.vmap`` over
    per-task ``grad`` calls (``metabt bench`` measures all three, and ``higher``).
``"loop"``
    The textbook version: adapt and differentiate one task at a time, with
    autograd's inner gradient. Kept as the reference the tests compare the
    batched engine with, and for the benchmark.

Both engines call the same :func:`~metamodels.adapt.adapt`, which is also the
reference for the trading-time numpy path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from metabt.metamodels.adapt import LearningRate, adapt, expand_tasks, query_loss
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import Params, PolicySpec

LOG_LR = "log_lr"  # key of a learned scalar inner step size (its log)
# Key of the learned exponent k of the step size's dependence on the support
# length n: lr(n) = lr * (n / LR_LENGTH_REF) ** k. Short windows are noisier, so
# the best step on 20 bars need not be the best on 120.
LR_POWER = "log_lr.length_power"
LR_LENGTH_REF = 60.0
ENGINES = ("batched", "loop")


class TorchTasks(NamedTuple):
    """Float32 task batch: support ``(B, S, F)``/``(B, S)``, query ``(B, Q, F)``/``(B, Q)``.

    The optional ``*_inv_vol`` (``1 / vol`` per bar) and ``*_mask`` (1 = a real
    bar, 0 = left padding) have the shape of the labels.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    support_inv_vol: torch.Tensor | None = None
    support_mask: torch.Tensor | None = None
    query_inv_vol: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, batch: object) -> TorchTasks:
        """Convert a ``feeds.tasks.TaskBatch`` (or anything with its arrays)."""

        def tensor(name: str) -> torch.Tensor | None:
            value = getattr(batch, name, None)
            return None if value is None else torch.as_tensor(np.asarray(value, dtype=np.float32))

        return cls(*(tensor(name) for name in cls._fields))

    def __len__(self) -> int:  # number of tasks, like TaskBatch
        return int(self.support_x.shape[0])

    def support_lengths(self) -> torch.Tensor:
        """Real bars per support window, ``(B,)``."""
        if self.support_mask is None:
            return torch.full((len(self),), float(self.support_y.shape[-1]))
        return self.support_mask.sum(-1)

    def task(self, b: int) -> TorchTasks:
        """Task ``b`` alone, unbatched and with its padding removed (the loop engine's view)."""
        n_s = int(self.support_lengths()[b])
        n_q = (
            int(self.query_mask[b].sum()) if self.query_mask is not None else self.query_y.shape[-1]
        )

        def cut(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
            return None if t is None else t[b, t.shape[1] - n :]

        return TorchTasks(
            cut(self.support_x, n_s),
            cut(self.support_y, n_s),
            cut(self.query_x, n_q),
            cut(self.query_y, n_q),
            cut(self.support_inv_vol, n_s),
            None,
            cut(self.query_inv_vol, n_q),
            None,
        )


@dataclass(frozen=True)
class MetaLearner:
    """Shared machinery; subclasses define :meth:`adapted_grads`.

    Parameters
    ----------
    inner_lr : float
        Inner SGD step size (the starting value when it is learned).
    inner_steps : int
        Inner SGD steps on the support window.
    learn_inner_lr : bool
        Learn one scalar inner step size alongside the weights.
    learn_lr_length_power : bool
        Also learn how the step size scales with the support length (see ``LR_POWER``).
    engine : {"batched", "loop"}
        See module docstring; both give the same gradients.
    unadapted_weight : float
        Weight of a second term of the meta-loss: the query loss of the initial
        weights themselves, before any inner step (0 = none, plain meta-learning).
        It asks the initial weights to trade well unadapted too, as ERM's do, so
        that adaptation starts from a sound policy rather than one that is only
        good once adapted (the reported loss stays the adapted one).
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    learn_inner_lr: bool = False
    learn_lr_length_power: bool = False
    engine: str = "batched"
    unadapted_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (self.inner_lr > 0 and math.isfinite(self.inner_lr)):
            raise ValueError(f"inner_lr must be a positive number, got {self.inner_lr}")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not (self.unadapted_weight >= 0 and math.isfinite(self.unadapted_weight)):
            raise ValueError(f"unadapted_weight must be >= 0, got {self.unadapted_weight}")

    # -- meta-parameters ---------------------------------------------------
    def init_meta(self, params: Params) -> Params:
        """Fresh leaf tensors the outer optimiser updates (weights + learned LRs)."""
        meta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        dtype = next(iter(params.values())).dtype
        if self.learn_inner_lr:
            meta[LOG_LR] = torch.tensor(math.log(self.inner_lr), dtype=dtype, requires_grad=True)
        if self.learn_lr_length_power:
            meta[LR_POWER] = torch.tensor(0.0, dtype=dtype, requires_grad=True)
        return meta

    def is_lr_key(self, name: str) -> bool:
        """True for meta-parameters that are step sizes (no weight decay on them)."""
        return name.startswith(LOG_LR)

    def split(self, meta: Params) -> tuple[Params, LearningRate]:
        """Policy weights and the inner step size(s) they adapt with."""
        params = {k: v for k, v in meta.items() if not self.is_lr_key(k)}
        lr = torch.exp(meta[LOG_LR]) if self.learn_inner_lr else self.inner_lr
        return params, lr

    def lr_scale(self, meta: Params, tasks: TorchTasks) -> torch.Tensor | None:
        """Per-task step-size factor ``(n / LR_LENGTH_REF) ** k`` (None when k is not learned)."""
        if LR_POWER not in meta:
            return None
        return torch.exp(meta[LR_POWER] * torch.log(tasks.support_lengths() / LR_LENGTH_REF))

    def final_power(self, meta: Params) -> float:
        """The learned length exponent k to store with a trained model (0 = none)."""
        return float(meta[LR_POWER].detach()) if LR_POWER in meta else 0.0

    def final_lr(self, meta: Params) -> float | dict[str, torch.Tensor]:
        """The inner step size(s) to store with a trained model (detached)."""
        lr = self.split(meta)[1]
        if isinstance(lr, dict):
            return {k: v.detach().clone() for k, v in lr.items()}
        return float(lr)

    def meta_grads(
        self,
        meta: Params,
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
    ) -> tuple[float, Params]:
        """Mean query loss after adaptation, and d(meta-loss)/d(meta) for every key of ``meta``.

        The meta-loss is the learner's own (:meth:`adapted_grads`) plus
        ``unadapted_weight`` times the mean query loss of the initial weights.
        """
        loss, grads = self.adapted_grads(meta, tasks, policy_spec, objective_spec)
        if self.unadapted_weight:
            params = self.split(meta)[0]
            unadapted = self._query_losses(
                [expand_tasks(params, len(tasks))], tasks, policy_spec, objective_spec
            ).mean()
            extra = _grads_or_zeros(self.unadapted_weight * unadapted, meta)
            grads = {k: g + extra[k] for k, g in grads.items()}
        return loss, grads

    def adapted_grads(
        self,
        meta: Params,
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
    ) -> tuple[float, Params]:
        """Mean query loss after adaptation and the learner's gradient of it."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------
    def _adapt_all(
        self,
        params: Params,
        lr: LearningRate,
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
        create_graph: bool,
        lr_scale: torch.Tensor | None = None,
    ) -> list[Params]:
        """Adapted weights: one ``(B, ...)`` dict (batched) or B unbatched dicts (loop)."""
        if self.engine == "batched":
            return [
                adapt(
                    expand_tasks(params, len(tasks)),
                    tasks.support_x,
                    tasks.support_y,
                    self.inner_steps,
                    lr,
                    policy_spec,
                    objective_spec,
                    create_graph=create_graph,
                    inv_vol=tasks.support_inv_vol,
                    mask=tasks.support_mask,
                    lr_scale=lr_scale,
                )
            ]
        out = []
        for b in range(len(tasks)):
            one = tasks.task(b)
            out.append(
                adapt(
                    params,
                    one.support_x,
                    one.support_y,
                    self.inner_steps,
                    lr,
                    policy_spec,
                    objective_spec,
                    create_graph=create_graph,
                    inv_vol=one.support_inv_vol,
                    lr_scale=None if lr_scale is None else lr_scale[b : b + 1],
                )
            )
        return out

    def _query_losses(
        self,
        adapted: list[Params],
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
    ) -> torch.Tensor:
        """Per-task query losses ``(B,)`` at the adapted weights."""
        if len(adapted) == 1 and adapted[0]["w0"].dim() == 3:
            return query_loss(
                adapted[0],
                tasks.query_x,
                tasks.query_y,
                policy_spec,
                objective_spec,
                tasks.query_inv_vol,
                tasks.query_mask,
            )
        losses = []
        for b, p in enumerate(adapted):
            one = tasks.task(b)
            losses.append(
                query_loss(
                    p, one.query_x, one.query_y, policy_spec, objective_spec, one.query_inv_vol
                )
            )
        return torch.stack(losses)


def _grads_or_zeros(loss: torch.Tensor, meta: Params) -> Params:
    names = list(meta)
    grads = torch.autograd.grad(loss, [meta[k] for k in names], allow_unused=True)
    return {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(names, grads)}


@dataclass(frozen=True)
class MAML(MetaLearner):
    """Second-order MAML: differentiate the query loss through the inner steps."""

    def adapted_grads(
        self,
        meta: Params,
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
    ) -> tuple[float, Params]:
        params, lr = self.split(meta)
        adapted = self._adapt_all(
            params, lr, tasks, policy_spec, objective_spec, True, self.lr_scale(meta, tasks)
        )
        loss = self._query_losses(adapted, tasks, policy_spec, objective_spec).mean()
        return float(loss.detach()), _grads_or_zeros(loss, meta)


@dataclass(frozen=True)
class FOMAML(MetaLearner):
    """First-order MAML: the query-loss gradient at the adapted weights, taken as the
    gradient at the initial weights (the inner steps are treated as constants).

    A learned scalar step size still gets an exact first-order gradient:
    ``phi = theta - alpha * s_b * G`` with ``G`` held constant, so
    ``dL/dlog(alpha) = <dL/dphi, phi - theta>``, and the length exponent ``k``
    of ``s_b = (n_b / ref) ** k`` gets the same product times ``log(n_b / ref)``.
    """

    def adapted_grads(
        self,
        meta: Params,
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
    ) -> tuple[float, Params]:
        params, lr = self.split(meta)
        theta = {k: v.detach() for k, v in params.items()}
        step = float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)
        scale = self.lr_scale(meta, tasks)
        scale = None if scale is None else scale.detach()
        adapted = self._adapt_all(theta, step, tasks, policy_spec, objective_spec, False, scale)
        adapted = [{k: v.requires_grad_(True) for k, v in p.items()} for p in adapted]
        loss = self._query_losses(adapted, tasks, policy_spec, objective_spec).mean()
        flat = [(i, p, k) for i, p in enumerate(adapted) for k in theta]
        gphi = torch.autograd.grad(loss, [p[k] for _, p, k in flat])
        grads = {k: torch.zeros_like(v) for k, v in meta.items()}
        log_len = torch.log(tasks.support_lengths() / LR_LENGTH_REF)
        for (i, p, k), g in zip(flat, gphi):
            # Batched: g is (B, ...) with one slice per task; loop: one task.
            batched = g.dim() > theta[k].dim()
            grads[k] += g.sum(0) if batched else g
            moved = g * (p[k].detach() - theta[k])
            if self.learn_inner_lr:
                grads[LOG_LR] += moved.sum()
            if LR_POWER in meta:
                per_task = moved.reshape(moved.shape[0], -1).sum(1) if batched else moved.sum()
                grads[LR_POWER] += (per_task * (log_len if batched else log_len[i])).sum()
        return float(loss.detach()), grads


@dataclass(frozen=True)
class Reptile(MetaLearner):
    """Reptile: move the initial weights toward the weights adapted on each support window.

    The meta-"gradient" is ``(theta - mean_b phi_b) / (inner_lr * inner_steps)``:
    the average inner gradient along the path, so the outer step size means the
    same thing as for the other learners. The query window is not used for the
    update; the reported loss is the query loss after adaptation.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.learn_inner_lr:
            raise ValueError(
                "Reptile has no gradient for the inner step size; "
                "set learn_inner_lr = false or use maml / fomaml / metasgd"
            )

    def adapted_grads(
        self,
        meta: Params,
        tasks: TorchTasks,
        policy_spec: PolicySpec,
        objective_spec: ObjectiveSpec,
    ) -> tuple[float, Params]:
        theta = {k: v.detach() for k, v in meta.items()}
        adapted = self._adapt_all(theta, self.inner_lr, tasks, policy_spec, objective_spec, False)
        with torch.no_grad():
            loss = self._query_losses(adapted, tasks, policy_spec, objective_spec).mean()
            scale = 1.0 / (self.inner_lr * max(self.inner_steps, 1))
            grads = {}
            for k, v in theta.items():
                mean_phi = torch.stack([p[k] for p in adapted]).reshape(-1, *v.shape).mean(0)
                grads[k] = (v - mean_phi) * scale
        return float(loss.detach()), grads


@dataclass(frozen=True)
class MetaSGD(MAML):
    """Meta-SGD: second-order MAML that also learns one inner step size per weight.

    The step sizes are stored as logs (``log_lr.w0`` ...), so they stay
    positive; they start at ``inner_lr``. ``learn_inner_lr`` is implied.
    """

    def init_meta(self, params: Params) -> Params:
        meta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        for k, v in params.items():
            meta[f"{LOG_LR}.{k}"] = torch.full_like(v, math.log(self.inner_lr)).requires_grad_(True)
        if self.learn_lr_length_power:
            meta[LR_POWER] = torch.tensor(0.0, dtype=v.dtype, requires_grad=True)
        return meta

    def split(self, meta: Params) -> tuple[Params, LearningRate]:
        params = {k: v for k, v in meta.items() if not self.is_lr_key(k)}
        return params, {k: torch.exp(meta[f"{LOG_LR}.{k}"]) for k in params}


LEARNERS: dict[str, type[MetaLearner]] = {
    "maml": MAML,
    "fomaml": FOMAML,
    "reptile": Reptile,
    "metasgd": MetaSGD,
}

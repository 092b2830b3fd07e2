"""The one definition of adaptation: a few SGD steps on a support window.

Meta-training (every learner, batched or looped) and the reference for the
trading-time numpy path (:mod:`metamodels.numpy_policy`) both go through
:func:`adapt`, so what was trained is what trades.

A batch of tasks (weights with a task dimension) under the trading loss takes
its gradient from :mod:`metamodels.inner_grad` (written out, no autograd call
per step); one window, or another objective, uses autograd, which is the
reference the tests hold the batched path to.
"""

from __future__ import annotations

import torch

from metabt.metamodels.inner_grad import Support, pack, packed_grads, unpack, written_out
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.metamodels.policy import Params, PolicySpec, positions

LearningRate = float | torch.Tensor | dict[str, torch.Tensor]


Tensor = torch.Tensor


def support_loss(
    params: Params,
    x: Tensor,
    y: Tensor,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Summed trading loss of every window in ``x`` (a scalar).

    Summing (not averaging) over tasks keeps each task's gradient exact when
    every task carries its own copy of the weights: task ``b``'s loss depends
    only on weights ``[b]``.
    """
    return window_losses(params, x, y, policy_spec, objective_spec, inv_vol, mask).sum()


def window_losses(
    params: Params,
    x: Tensor,
    y: Tensor,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Loss of every window, ``(...)``: the trading loss of the policy's positions, or the
    objective's own ``window_loss`` when it scores another model on the same weights
    (the volatility forecaster's QLIKE, :mod:`metamodels.vol_model`)."""
    own = getattr(objective_spec, "window_loss", None)
    if own is not None:
        return own(params, x, y, mask)
    return trading_loss(positions(params, x, policy_spec), y, objective_spec, inv_vol, mask)


def lr_for(
    lr: LearningRate, name: str, lr_scale: Tensor | None = None, ndim: int = 0
) -> float | Tensor:
    """The step size of parameter ``name``: shared, or Meta-SGD's per-parameter tensor.

    ``lr_scale`` (``(B,)``, one factor per task, e.g. from the support length)
    multiplies it, shaped to broadcast over a ``(B, ...)`` parameter of ``ndim`` dims.
    """
    rate = lr[name] if isinstance(lr, dict) else lr
    if lr_scale is None:
        return rate
    return rate * lr_scale.reshape(-1, *([1] * (ndim - 1)))


def adapt(
    params: Params,
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: LearningRate,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    create_graph: bool = False,
    inv_vol: Tensor | None = None,
    mask: Tensor | None = None,
    lr_scale: Tensor | None = None,
) -> Params:
    """Adapt ``params`` to one support window (or a batch of them) by plain SGD.

    Parameters
    ----------
    params : dict of Tensor
        Initial weights. Unbatched with ``x`` of shape ``(n, F)``; or with a
        leading task dimension (``(B, in, out)``) with ``x`` of shape
        ``(B, n, F)``, which adapts every task's copy independently.
    x, y : Tensor
        Support features ``(..., n, F)`` and labels ``(..., n)``.
    steps : int
        Number of gradient steps; 0 returns the parameters unchanged.
    lr : float, 0-d Tensor or dict of Tensor
        Inner step size: shared, learned scalar, or one tensor per parameter
        (Meta-SGD), broadcastable to that parameter.
    create_graph : bool
        Keep the graph of the inner steps so a meta-gradient can flow through
        them (second-order MAML, Meta-SGD). When False the result is detached.
    inv_vol, mask : Tensor, optional
        ``1 / vol`` and the real-bar mask per support bar, ``(..., n)`` (see
        :func:`metamodels.objective.trading_loss`).
    lr_scale : Tensor, optional
        Batched only: one step-size factor per task, ``(B,)``.

    Returns
    -------
    dict of Tensor
        New parameter dict; the input dict and its tensors are never modified.
    """
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    if steps == 0:
        return dict(params)
    if written_out(params, policy_spec, objective_spec):
        return _adapt_written_out(
            params,
            x,
            y,
            steps,
            lr,
            policy_spec,
            objective_spec,
            create_graph,
            inv_vol,
            mask,
            lr_scale,
        )
    names = list(params)
    with torch.enable_grad():
        if create_graph:
            # Leaves that are plain data still need a grad slot for the inner step.
            cur = {
                k: v if v.requires_grad else v.detach().requires_grad_(True)
                for k, v in params.items()
            }
        else:
            cur = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        for _ in range(steps):
            loss = support_loss(cur, x, y, policy_spec, objective_spec, inv_vol, mask)
            grads = torch.autograd.grad(loss, [cur[k] for k in names], create_graph=create_graph)
            if create_graph:
                cur = {
                    k: cur[k] - lr_for(lr, k, lr_scale, g.dim()) * g for k, g in zip(names, grads)
                }
            else:
                with torch.no_grad():
                    cur = {
                        k: cur[k] - lr_for(lr, k, lr_scale, g.dim()) * g
                        for k, g in zip(names, grads)
                    }
                cur = {k: v.requires_grad_(True) for k, v in cur.items()}
    if not create_graph:
        cur = {k: v.detach() for k, v in cur.items()}
    return cur


def _adapt_written_out(
    params: Params,
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: LearningRate,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    create_graph: bool,
    inv_vol: Tensor | None,
    mask: Tensor | None,
    lr_scale: Tensor | None,
) -> Params:
    """:func:`adapt` for a task batch with the gradient of :mod:`metamodels.inner_grad`.

    No autograd call per step: with ``create_graph`` the steps are recorded as
    one forward graph the meta-gradient differentiates; without it nothing is
    recorded at all.
    """
    support = Support(x, y, objective_spec, inv_vol, mask)
    with torch.set_grad_enabled(create_graph):
        scale = 1.0 if lr_scale is None else lr_scale.reshape(-1, 1, 1)  # per task
        rates: list[float | Tensor]
        if isinstance(lr, dict):  # Meta-SGD: one step size per weight, packed like the weights
            rates = [r * scale for r in pack(lr, policy_spec)]
        else:
            rates = [lr * scale] * (2 * policy_spec.n_layers - 1)
        cur = pack(params, policy_spec)
        for _ in range(steps):
            grads = packed_grads(cur, support, policy_spec)
            cur = [v - r * g for v, r, g in zip(cur, rates, grads)]
        out = unpack(cur, policy_spec)
    return out if create_graph else {k: v.detach() for k, v in out.items()}


def expand_tasks(params: Params, n_tasks: int) -> Params:
    """Give each of ``n_tasks`` tasks its own view of the weights, ``(B, ...)``.

    ``expand`` copies nothing; the gradient of every task's copy flows back to
    the shared weights, so one graph holds the whole batch.
    """
    return {k: v.unsqueeze(0).expand(n_tasks, *v.shape) for k, v in params.items()}


def query_loss(
    params: Params,
    x: Tensor,
    y: Tensor,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-task trading loss on query windows, ``(B,)`` (or a scalar for one window)."""
    return window_losses(params, x, y, policy_spec, objective_spec, inv_vol, mask)

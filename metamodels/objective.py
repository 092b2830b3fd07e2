"""The differentiable trading objective on a window of bars: the traded P&L after costs.

The strategy holds, per asset, the weight ``w_t = p_t * target_vol / vol_t``
(volatility targeting) from the open after bar ``t`` to the next open, and pays
``c`` per unit of weight traded. With ``y_t`` the label of
:func:`feeds.features.compute_labels` (that open-to-open return divided by
``vol_t``) the traded return is ``w_t * y_t * vol_t = target_vol * p_t * y_t``,
so in units of ``target_vol`` the loss to *minimise* is::

    loss = -mean(p * y) + risk * mean((p * y) ** 2)
           + cost * mean(|p_t / vol_t - p_{t-1} / vol_{t-1}|)

``cost`` is in return units per unit of weight traded (commission plus slippage,
0.001 = 10 bp): divided by a day's vol it becomes ~0.04 of a volatile day and
~0.17 of a calm one, which is why the objective can prefer staying flat in calm
regimes. The quadratic term is a mean-variance penalty that keeps the optimum
finite. Windows can be padded to a common length: ``mask`` marks the real bars
(padding must come first), and turnover is only charged between real bars.

The numpy twin and its hand-written gradient live in :mod:`metamodels.numpy_policy`
under the same names; tests keep the two identical and check that the objective's pnl and costs are
what the backtest engine books.
"""

from __future__ import annotations

import torch

from metabt.metamodels.specs import ObjectiveSpec

__all__ = ["ObjectiveSpec", "trading_loss"]


def trading_loss(
    pos: torch.Tensor,
    y: torch.Tensor,
    spec: ObjectiveSpec,
    inv_vol: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss of positions ``pos`` against labels ``y`` over the last axis.

    Parameters
    ----------
    pos, y : Tensor
        ``(..., n)``, bars in time order along the last axis.
    spec : ObjectiveSpec
    inv_vol : Tensor, optional
        ``1 / vol_t`` per bar (``(..., n)``); turnover is charged on ``p * inv_vol``.
        None charges it on ``p`` (vol of 1).
    mask : Tensor, optional
        ``(..., n)`` of 0/1: which bars are real (left padding is 0).

    Returns
    -------
    Tensor
        ``(...)``: one loss per window (a scalar for a single window).
    """
    pnl = pos * y
    terms = -pnl + spec.risk * pnl * pnl
    if mask is None:
        loss = terms.mean(-1)
    else:
        loss = (terms * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    if pos.shape[-1] > 1 and spec.cost > 0:
        held = pos if inv_vol is None else pos * inv_vol
        step = (held[..., 1:] - held[..., :-1]).abs()
        if mask is None:
            loss = loss + spec.cost * step.mean(-1)
        else:
            pair = mask[..., 1:] * mask[..., :-1]
            loss = loss + spec.cost * (step * pair).sum(-1) / pair.sum(-1).clamp(min=1.0)
    return loss

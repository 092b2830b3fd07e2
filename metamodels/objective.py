"""The differentiable trading objective on a window of bars.

For positions ``p_t`` and vol-scaled next-bar returns ``y_t`` (the labels of
``feeds.features.compute_labels``: the return earned by a position decided at
the close of bar ``t`` and filled at the next open, divided by trailing vol),
the per-bar pnl is ``r_t = p_t * y_t`` and the loss to *minimise* is::

    loss = -mean(r) + risk * mean(r ** 2) + cost * mean(|p[1:] - p[:-1]|)

The quadratic term is a mean-variance style penalty that keeps the optimum
finite (without it a linear pnl pushes every position to the bound); the last
term charges turnover, in the same vol-scaled units as ``y``. Because ``y`` is
scaled by trailing vol, one set of weights suits every asset.

The same formula is written out with its gradient in
:mod:`metamodels.fast_adapt`; a test keeps the two identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ObjectiveSpec:
    """Weights of the trading objective.

    Parameters
    ----------
    risk : float
        Weight of ``mean(pnl ** 2)`` (risk aversion, per unit vol-scaled pnl squared).
    cost : float
        Weight of the mean absolute position change per bar (a turnover charge in
        vol-scaled return units: 0.01 ~ 1% of a day's vol per unit of turnover).
    """

    risk: float = 0.05
    cost: float = 0.01

    def __post_init__(self) -> None:
        for name in ("risk", "cost"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"ObjectiveSpec.{name} must be a finite number >= 0, got {value}")


def trading_loss(pos: torch.Tensor, y: torch.Tensor, spec: ObjectiveSpec) -> torch.Tensor:
    """Loss of positions ``pos`` against labels ``y`` over the last axis.

    Parameters
    ----------
    pos, y : Tensor
        ``(..., n)``, bars in time order along the last axis.
    spec : ObjectiveSpec

    Returns
    -------
    Tensor
        ``(...)``: one loss per window (a scalar for a single window).
    """
    pnl = pos * y
    loss = -pnl.mean(-1) + spec.risk * (pnl * pnl).mean(-1)
    if pos.shape[-1] > 1 and spec.cost > 0:
        loss = loss + spec.cost * (pos[..., 1:] - pos[..., :-1]).abs().mean(-1)
    return loss


def numpy_trading_loss(pos: np.ndarray, y: np.ndarray, spec: ObjectiveSpec) -> np.ndarray:
    """Numpy twin of :func:`trading_loss` (for reports and adaptation logs)."""
    pos = np.asarray(pos, dtype=np.float64)
    pnl = pos * np.asarray(y, dtype=np.float64)
    loss = -pnl.mean(-1) + spec.risk * (pnl * pnl).mean(-1)
    if pos.shape[-1] > 1 and spec.cost > 0:
        loss = loss + spec.cost * np.abs(np.diff(pos, axis=-1)).mean(-1)
    return loss

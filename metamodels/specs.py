"""What the policy is and what it optimises, with no torch in sight.

:class:`PolicySpec` (the network's shape and position mode) and
:class:`ObjectiveSpec` (the trading loss's weights) are read by the torch
reference (:mod:`metamodels.policy`, :mod:`metamodels.objective`,
:mod:`metamodels.adapt`) and by its numpy twin (:mod:`metamodels.numpy_policy`),
so a strategy can trade without importing torch.

Position modes
--------------
``long_short``
    ``tanh(z)`` in (-1, 1).
``long_only``
    ``(1 + tanh(z)) / 2`` in (0, 1); the same curve as ``sigmoid(2 z)``,
    written through ``tanh`` so all three modes share one derivative.
``overlay``
    ``clip(base + tilt * tanh(z), overlay_min, overlay_max)``: a fixed base
    weight (e.g. 1.0 = fully long) plus a learned tilt. The clip is a safety
    net (e.g. never short when ``overlay_min = 0``); with the defaults it
    never binds, so the gradient never vanishes at the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("long_short", "long_only", "overlay")


@dataclass(frozen=True)
class PolicySpec:
    """Architecture and position mode of the policy.

    Parameters
    ----------
    n_features : int
        Features per bar (the width of the input).
    hidden : tuple of int
        Widths of the tanh hidden layers.
    mode : {"long_short", "long_only", "overlay"}
        How the network output becomes a position (see the module docstring).
    overlay_base : float
        Overlay mode: the position when the tilt is zero (fraction of equity).
    overlay_tilt : float
        Overlay mode: the largest change the network can make to the base.
    overlay_min, overlay_max : float
        Overlay mode: the position is clipped to this range.
    """

    n_features: int
    hidden: tuple[int, ...] = (16,)
    mode: str = "long_short"
    overlay_base: float = 1.0
    overlay_tilt: float = 0.5
    overlay_min: float = 0.0
    overlay_max: float = 1.5

    def __post_init__(self) -> None:
        if int(self.n_features) < 1:
            raise ValueError(f"PolicySpec.n_features must be >= 1, got {self.n_features}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"PolicySpec.hidden widths must be >= 1, got {self.hidden}")
        if self.mode not in MODES:
            raise ValueError(f"PolicySpec.mode must be one of {MODES}, got {self.mode!r}")
        if self.overlay_tilt < 0:
            raise ValueError(f"PolicySpec.overlay_tilt must be >= 0, got {self.overlay_tilt}")
        if self.overlay_min > self.overlay_max:
            raise ValueError(
                "PolicySpec.overlay_min must be <= overlay_max, got "
                f"{self.overlay_min} > {self.overlay_max}"
            )

    @property
    def widths(self) -> tuple[int, ...]:
        """Layer widths from input to the single output, e.g. ``(14, 16, 1)``."""
        return (int(self.n_features), *self.hidden, 1)

    @property
    def n_layers(self) -> int:
        """Number of affine layers."""
        return len(self.widths) - 1


def param_shapes(spec: PolicySpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in forward order."""
    shapes: dict[str, tuple[int, ...]] = {}
    widths = spec.widths
    for i in range(spec.n_layers):
        shapes[f"w{i}"] = (widths[i], widths[i + 1])
        shapes[f"b{i}"] = (widths[i + 1],)
    return shapes


def check_params(params: dict, spec: PolicySpec) -> None:
    """Raise ``ValueError`` unless ``params`` has exactly the names and shapes of ``spec``.

    Leading task dimensions (``(B, in, out)`` weights) are allowed.
    """
    shapes = param_shapes(spec)
    if set(params) != set(shapes):
        raise ValueError(
            f"policy parameters {sorted(params)} do not match the spec's {sorted(shapes)}"
        )
    for name, shape in shapes.items():
        got = tuple(params[name].shape)
        if got[len(got) - len(shape) :] != shape:
            raise ValueError(f"policy parameter {name!r} has shape {got}, expected {shape}")


@dataclass(frozen=True)
class ObjectiveSpec:
    """Weights of the trading objective.

    Parameters
    ----------
    risk : float
        Weight of ``mean(pnl ** 2)`` (risk aversion, per unit vol-scaled pnl squared).
    cost : float
        Cost per unit of portfolio weight traded, in return units (0.001 = 10 bp:
        5 bp commission + 5 bp slippage). It is charged on the change of
        ``p / vol``, the vol-targeted weight, so its bite depends on the regime's vol.
    """

    risk: float = 0.1
    cost: float = 0.001

    def __post_init__(self) -> None:
        for name in ("risk", "cost"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"ObjectiveSpec.{name} must be a finite number >= 0, got {value}")

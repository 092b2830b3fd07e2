"""The policy network: a bar's features -> a target position.

A small tanh MLP whose parameters are a plain ``dict[str, Tensor]``
(``w0, b0, w1, b1, ...``; ``w_i`` has shape ``(in, out)``). The forward pass
is a pure function of that dict, so adaptation can build new dicts without
ever touching a module in place, and the same weights run in numpy for
per-bar inference inside Backtrader (a torch call per bar is ~4x slower).

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

import math
from dataclasses import dataclass

import numpy as np
import torch

Params = dict[str, torch.Tensor]
NumpyParams = dict[str, np.ndarray]

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
        How the network output becomes a position (see module docstring).
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


def init_params(spec: PolicySpec, seed: int) -> Params:
    """Fresh float32 parameters, uniform in +-1/sqrt(fan_in) (torch's Linear default).

    Uses its own ``torch.Generator`` so the result depends on ``seed`` only,
    not on anything else that touched the global RNG.
    """
    gen = torch.Generator().manual_seed(int(seed))
    params: Params = {}
    for name, shape in param_shapes(spec).items():
        bound = 1.0 / math.sqrt(spec.widths[int(name[1:])])  # fan_in of layer i
        params[name] = (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    return params


def _squash_torch(z: torch.Tensor, spec: PolicySpec) -> torch.Tensor:
    t = torch.tanh(z)
    if spec.mode == "long_short":
        return t
    if spec.mode == "long_only":
        return 0.5 * (1.0 + t)
    return torch.clamp(
        spec.overlay_base + spec.overlay_tilt * t, spec.overlay_min, spec.overlay_max
    )


def positions(params: Params, x: torch.Tensor, spec: PolicySpec) -> torch.Tensor:
    """Target positions for every bar of ``x``; a pure function of ``params``.

    Parameters
    ----------
    params : dict of Tensor
        ``w_i`` of shape ``(in, out)`` and ``b_i`` of shape ``(out,)``, or with
        a leading task dimension ``(B, in, out)`` / ``(B, out)`` when every
        task carries its own weights (then ``x`` must be ``(B, n, F)``).
    x : Tensor
        Features, ``(..., n, F)``.
    spec : PolicySpec

    Returns
    -------
    Tensor
        Positions, ``(..., n)``.
    """
    h = x
    last = spec.n_layers - 1
    for i in range(spec.n_layers):
        w, b = params[f"w{i}"], params[f"b{i}"]
        if w.dim() == 3:
            # One weight matrix per task: a single fused batched matmul keeps
            # the whole task batch in one autograd graph.
            h = torch.baddbmm(b.unsqueeze(1), h, w)
        else:
            h = h @ w + b
        if i < last:
            h = torch.tanh(h)
    return _squash_torch(h[..., 0], spec)


def to_numpy(params: Params, dtype: type = np.float64) -> NumpyParams:
    """Copy torch parameters to numpy (float64 by default, for the fast path)."""
    return {k: v.detach().cpu().numpy().astype(dtype) for k, v in params.items()}


def squash_numpy(z: np.ndarray, spec: PolicySpec) -> tuple[np.ndarray, np.ndarray]:
    """Positions and their derivative d position / d z (same math as the torch path)."""
    t = np.tanh(z)
    dt = 1.0 - t * t
    if spec.mode == "long_short":
        return t, dt
    if spec.mode == "long_only":
        return 0.5 * (1.0 + t), 0.5 * dt
    u = spec.overlay_base + spec.overlay_tilt * t
    # torch.clamp passes the gradient where min <= u <= max (bounds included).
    inside = (u >= spec.overlay_min) & (u <= spec.overlay_max)
    return np.clip(u, spec.overlay_min, spec.overlay_max), spec.overlay_tilt * dt * inside


def numpy_positions(params: NumpyParams, x: np.ndarray, spec: PolicySpec) -> np.ndarray:
    """Numpy twin of :func:`positions` for per-bar inference.

    Parameters
    ----------
    params : dict of ndarray
        Unbatched weights (see :func:`to_numpy`).
    x : ndarray
        ``(F,)`` for one bar or ``(n, F)``.

    Returns
    -------
    ndarray
        A 0-d array for one bar, else ``(n,)``.
    """
    h = np.asarray(x)
    last = spec.n_layers - 1
    for i in range(spec.n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < last:
            h = np.tanh(h)
    return squash_numpy(h[..., 0], spec)[0]

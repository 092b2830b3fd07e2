"""The policy network in torch: a bar's features -> a target position.

A small tanh MLP whose parameters are a plain ``dict[str, Tensor]``
(``w0, b0, w1, b1, ...``; ``w_i`` has shape ``(in, out)``). The forward pass
is a pure function of that dict, so adaptation can build new dicts without
ever touching a module in place. This is the reference meta-training
differentiates through; :mod:`metamodels.numpy_policy` is its numpy twin under
the same names, which the strategy runs per bar (a torch call per bar is ~4x
slower). The position modes are described in :mod:`metamodels.specs`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from metabt.metamodels.numpy_policy import NumpyParams
from metabt.metamodels.specs import MODES, PolicySpec, check_params, param_shapes

__all__ = [
    "MODES",
    "NumpyParams",
    "Params",
    "PolicySpec",
    "check_params",
    "init_params",
    "param_shapes",
    "positions",
    "to_numpy",
]

Params = dict[str, torch.Tensor]


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
    """Copy torch parameters to numpy (float64 by default, for :mod:`metamodels.numpy_policy`)."""
    return {k: v.detach().cpu().numpy().astype(dtype) for k, v in params.items()}

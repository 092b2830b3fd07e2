"""The support loss's gradient written out in torch, for the batched inner loop.

Calling ``torch.autograd.grad`` at every inner step records a backward graph,
runs it, and (second order) records the backward of the backward.
:func:`support_grads` computes the same gradient by backpropagation written
with ordinary torch ops, the torch twin of :func:`metamodels.numpy_policy.loss_and_grad`.
Those ops are differentiable, so second-order MAML still differentiates
through them: the whole inner loop is one forward graph of a few batched ops
per step, which the single meta-backward pass walks once, and first-order
learners run it with no graph at all.

Derivatives that autograd takes as zero are held constant here too, which keeps
the graph short without changing a number: the turnover term's gradient
``cost * sign(dh)`` (the derivative of ``sign`` is 0) and the overlay clip's
pass-through mask.

``tests/test_inner_grad.py`` checks :func:`support_grads` against autograd of
:func:`metamodels.adapt.support_loss` (first and second derivatives, every
position mode, padding and ``1 / vol``).
"""

from __future__ import annotations

import torch

from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import Params, PolicySpec
from metabt.metamodels.specs import param_shapes

Tensor = torch.Tensor


def written_out(params: Params, policy_spec: PolicySpec, objective_spec: ObjectiveSpec) -> bool:
    """True when :func:`support_grads` applies: batched policy weights under the trading loss.

    Objectives that score another model on the weights (``window_loss``, e.g. the
    volatility forecaster) keep autograd.
    """
    return (
        getattr(objective_spec, "window_loss", None) is None
        and set(params) == set(param_shapes(policy_spec))
        and params["w0"].dim() == 3
    )


class LossWeights:
    """Per-bar factors of the loss's gradient that do not depend on the weights.

    Computed once per support batch, outside the inner loop. With ``m`` the
    mask and ``c = sum(m)``: ``dL/dp = p * y * risk_w - pnl_w`` plus the
    turnover term, where ``pnl_w = m * y / c`` and ``risk_w = 2 * risk * y * pnl_w``.
    """

    def __init__(
        self,
        y: Tensor,
        spec: ObjectiveSpec,
        inv_vol: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> None:
        n = y.shape[-1]
        if mask is None:
            self.pnl_w = y / n
        else:
            self.pnl_w = y * mask / mask.sum(-1, keepdim=True).clamp(min=1.0)
        self.risk_w = (2.0 * spec.risk) * y * self.pnl_w
        self.inv_vol = inv_vol
        self.turnover_w: Tensor | None = None
        if n > 1 and spec.cost > 0:
            if mask is None:
                self.turnover_w = torch.full_like(y[..., 1:], spec.cost / (n - 1))
            else:
                pair = mask[..., 1:] * mask[..., :-1]
                self.turnover_w = spec.cost * pair / pair.sum(-1, keepdim=True).clamp(min=1.0)

    def grad_positions(self, pos: Tensor) -> Tensor:
        """d loss / d positions, ``(B, n)``; the numpy twin is ``numpy_policy._loss_grad_pos``."""
        g = pos * self.risk_w - self.pnl_w
        if self.turnover_w is None:
            return g
        with torch.no_grad():  # cost * sign(dh): its derivative is 0, as autograd takes it
            held = pos if self.inv_vol is None else pos * self.inv_vol
            s = torch.sign(held[..., 1:] - held[..., :-1]) * self.turnover_w
            # d/dh_t of sum_t s_t * (h_{t+1} - h_t) = s_{t-1} - s_t (zero outside the window)
            g_held = torch.nn.functional.pad(s, (1, 0)) - torch.nn.functional.pad(s, (0, 1))
            if self.inv_vol is not None:
                g_held = g_held * self.inv_vol
        return g + g_held


def _squash_and_slope(z: Tensor, spec: PolicySpec) -> tuple[Tensor, Tensor]:
    """Positions from the output ``z`` and d position / d z (numpy twin: ``squash``)."""
    t = torch.tanh(z)
    dt = 1.0 - t * t
    if spec.mode == "long_short":
        return t, dt
    if spec.mode == "long_only":
        return 0.5 * (1.0 + t), 0.5 * dt
    u = spec.overlay_base + spec.overlay_tilt * t
    # torch.clamp passes the gradient where min <= u <= max (bounds included).
    inside = ((u >= spec.overlay_min) & (u <= spec.overlay_max)).to(z.dtype).detach()
    return u.clamp(spec.overlay_min, spec.overlay_max), spec.overlay_tilt * dt * inside


# The inner loop keeps the weights "feature-major": layer i as V_i = w_i^T of shape
# (B, out, in) and its bias as (B, out, 1), and activations as (B, width, n). The
# first layer's bias rides along as an extra input column of ones, so that layer
# (the largest) is one matmul forward and one for its gradient. Measured on CPU,
# this layout ran a second-order meta-step 3-9% faster than (B, n, width) with a
# separate bias (``baddbmm``), the matmuls along the support's length getting
# contiguous operands.


def pack(tensors: Params, policy_spec: PolicySpec) -> list[Tensor]:
    """``w0, b0, w1, b1, ...`` (batched or not) as ``[V0 | b0, V1, c1, ...]``, see above."""
    packed = [torch.cat([tensors["w0"].transpose(-1, -2), tensors["b0"].unsqueeze(-1)], dim=-1)]
    for i in range(1, policy_spec.n_layers):
        packed += [tensors[f"w{i}"].transpose(-1, -2), tensors[f"b{i}"].unsqueeze(-1)]
    return packed


def unpack(packed: list[Tensor], policy_spec: PolicySpec) -> Params:
    """The inverse of :func:`pack` (views, no copies)."""
    n_in = policy_spec.widths[0]
    out = {"w0": packed[0][..., :n_in].transpose(-1, -2), "b0": packed[0][..., n_in]}
    for i in range(1, policy_spec.n_layers):
        out[f"w{i}"] = packed[2 * i - 1].transpose(-1, -2)
        out[f"b{i}"] = packed[2 * i][..., 0]
    return out


class Support:
    """A batch of support windows in the layout of the inner loop, built once per batch."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        objective_spec: ObjectiveSpec,
        inv_vol: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> None:
        self.x1 = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)  # (B, n, F + 1)
        self.x1_t = self.x1.transpose(1, 2).contiguous()  # (B, F + 1, n)
        self.loss = LossWeights(y, objective_spec, inv_vol, mask)


def packed_grads(packed: list[Tensor], support: Support, policy_spec: PolicySpec) -> list[Tensor]:
    """Gradient of the summed support loss for packed weights (see :func:`support_grads`)."""
    last = policy_spec.n_layers - 1
    hidden = []
    a = torch.bmm(packed[0], support.x1_t)  # (B, width, n)
    for i in range(1, last + 1):
        h = torch.tanh(a)
        hidden.append(h)
        v, c = packed[2 * i - 1], packed[2 * i]
        a = torch.bmm(v, h) + c
    pos, slope = _squash_and_slope(a[:, 0], policy_spec)
    g = (support.loss.grad_positions(pos) * slope).unsqueeze(1)  # d loss / d z, (B, 1, n)
    grads: list[Tensor] = [torch.empty(0)] * len(packed)
    for i in range(last, 0, -1):
        h, v = hidden[i - 1], packed[2 * i - 1]
        grads[2 * i - 1] = torch.bmm(g, h.transpose(1, 2))
        grads[2 * i] = g.sum(-1, keepdim=True)
        # Back through layer i and the tanh before it; a one-row layer (the output)
        # is a broadcast product rather than a matmul with an inner size of 1.
        g_h = v.transpose(1, 2) * g if g.shape[1] == 1 else torch.bmm(v.transpose(1, 2), g)
        g = g_h * torch.addcmul(torch.ones((), dtype=h.dtype), h, h, value=-1.0)
    grads[0] = torch.bmm(g, support.x1)
    return grads


def support_grads(
    params: Params,
    x: Tensor,
    y: Tensor,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: Tensor | None = None,
    mask: Tensor | None = None,
) -> Params:
    """Gradient of :func:`metamodels.adapt.support_loss` for every task's weights, by hand.

    Parameters
    ----------
    params : dict of Tensor
        Batched weights, ``w_i`` of shape ``(B, in, out)`` and ``b_i`` of ``(B, out)``.
    x, y : Tensor
        Support features ``(B, n, F)`` and labels ``(B, n)``.
    inv_vol, mask : Tensor, optional
        ``1 / vol`` and the real-bar mask, ``(B, n)``.

    Returns
    -------
    dict of Tensor
        Same keys and shapes as ``params``; differentiable (second order) when
        ``params`` are.
    """
    support = Support(x, y, objective_spec, inv_vol, mask)
    return unpack(packed_grads(pack(params, policy_spec), support, policy_spec), policy_spec)

"""The numpy twin of the torch policy: positions, trading loss, its gradient, adaptation.

Inside a Backtrader run the strategy maps every bar to a position and, when the
regime detector fires, re-adapts the policy on a short window. Through autograd
an adaptation costs ~8 ms (graph building for a 14-16-1 network dominates); the
same five SGD steps in float64 numpy take ~0.1 ms. So the trading-time path is
written here once, in numpy and without torch, under the names of the torch
reference it mirrors:

=====================  ===========================================
numpy (this module)    torch reference
=====================  ===========================================
:func:`positions`      :func:`metamodels.policy.positions`
:func:`trading_loss`   :func:`metamodels.objective.trading_loss`
:func:`support_loss`   :func:`metamodels.adapt.support_loss`
:func:`loss_and_grad`  autograd of :func:`metamodels.adapt.support_loss`
:func:`adapt`          :func:`metamodels.adapt.adapt`
=====================  ===========================================

``tests/test_adapt.py`` checks each pair agrees (forward, loss, gradient,
adaptation) for every position mode, so what was trained is what trades.

Gradient of ``loss = -mean(r) + risk*mean(r^2) + cost*mean(|dh|)`` with
``r = p*y``, ``h = p*a`` (``a = 1/vol``), ``dh_t = h_{t+1} - h_t``::

    dL/dp_t = (-y_t + 2 risk r_t y_t) / n
              + cost/(n-1) * a_t * (sign(dh_{t-1}) - sign(dh_t))

then back through the squash and the tanh layers.
"""

from __future__ import annotations

import numpy as np

from metabt.metamodels.specs import ObjectiveSpec, PolicySpec

NumpyParams = dict[str, np.ndarray]
NumpyLR = float | dict[str, np.ndarray]


def squash(z: np.ndarray, spec: PolicySpec) -> tuple[np.ndarray, np.ndarray]:
    """Positions from the network's output ``z`` and their derivative d position / d z."""
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


def _forward(
    params: NumpyParams, x: np.ndarray, spec: PolicySpec
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The network's output ``z`` (before the squash) and the input of every layer."""
    h = x
    inputs = [h]
    last = spec.n_layers - 1
    for i in range(spec.n_layers):
        w, b = params[f"w{i}"], params[f"b{i}"]
        if w.ndim == 3:
            # One weight matrix per asset or task: (B, n, in) @ (B, in, out).
            h = np.matmul(h, w) + b[:, None, :]
        else:
            h = h @ w + b
        if i < last:
            h = np.tanh(h)
            inputs.append(h)
    return h[..., 0], inputs


def positions(params: NumpyParams, x: np.ndarray, spec: PolicySpec) -> np.ndarray:
    """Target positions for every bar of ``x``; numpy twin of :func:`metamodels.policy.positions`.

    Parameters
    ----------
    params : dict of ndarray
        ``w_i`` of shape ``(in, out)`` and ``b_i`` of shape ``(out,)``, or with a
        leading dimension ``(B, in, out)`` / ``(B, out)`` when every asset (or
        task) carries its own weights; then ``x`` is ``(B, n, F)``.
    x : ndarray
        ``(F,)`` for one bar, ``(n, F)``, or ``(B, n, F)`` with batched weights.

    Returns
    -------
    ndarray
        A 0-d array for one bar, else ``(n,)`` or ``(B, n)``.
    """
    return squash(_forward(params, np.asarray(x), spec)[0], spec)[0]


def trading_loss(
    pos: np.ndarray, y: np.ndarray, spec: ObjectiveSpec, inv_vol: np.ndarray | None = None
) -> np.ndarray:
    """Numpy twin of :func:`metamodels.objective.trading_loss` on unpadded windows."""
    pos = np.asarray(pos, dtype=np.float64)
    pnl = pos * np.asarray(y, dtype=np.float64)
    loss = -pnl.mean(-1) + spec.risk * (pnl * pnl).mean(-1)
    if pos.shape[-1] > 1 and spec.cost > 0:
        held = pos if inv_vol is None else pos * np.asarray(inv_vol, dtype=np.float64)
        loss = loss + spec.cost * np.abs(np.diff(held, axis=-1)).mean(-1)
    return loss


def support_loss(
    params: NumpyParams,
    x: np.ndarray,
    y: np.ndarray,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: np.ndarray | None = None,
) -> float:
    """Trading loss of ``params`` on one window: the adaptation's before/after figure."""
    return float(trading_loss(positions(params, x, policy_spec), y, objective_spec, inv_vol))


def _loss_grad_pos(
    pos: np.ndarray, y: np.ndarray, inv_vol: np.ndarray | None, spec: ObjectiveSpec
) -> np.ndarray:
    """d trading_loss / d positions of one window, or of a batch of windows (last axis = bars)."""
    n = pos.shape[-1]
    g_pos = (2.0 * spec.risk * pos * y - 1.0) * y * (1.0 / n)
    if n > 1 and spec.cost > 0:
        held = pos if inv_vol is None else pos * inv_vol
        s = np.sign(np.diff(held, axis=-1)) * (spec.cost / (n - 1))
        g_held = np.zeros_like(pos)
        g_held[..., 1:] += s
        g_held[..., :-1] -= s
        g_pos += g_held if inv_vol is None else g_held * inv_vol
    return g_pos


def _grads(
    params: NumpyParams,
    x: np.ndarray,
    y: np.ndarray,
    inv_vol: np.ndarray | None,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
) -> tuple[np.ndarray, NumpyParams]:
    """Positions of one window and the loss's gradient for every parameter (backprop).

    With batched weights (a leading dimension ``B``, see :func:`positions`) ``x`` is
    ``(B, n, F)``, ``y`` and ``inv_vol`` ``(B, n)``, and every gradient gets the leading
    dimension too: ``B`` windows adapt in one pass of a few large numpy operations.
    """
    z, inputs = _forward(params, x, policy_spec)
    pos, dpos = squash(z, policy_spec)
    g = _loss_grad_pos(pos, y, inv_vol, objective_spec) * dpos  # d loss / d z, (..., n)
    last = policy_spec.n_layers - 1
    grads = {
        f"w{last}": np.swapaxes(inputs[last], -1, -2) @ g[..., None],
        f"b{last}": g.sum(-1, keepdims=True),
    }
    if last > 0:
        g = g[..., None] * params[f"w{last}"][..., None, :, 0]
    for i in range(last - 1, -1, -1):
        h = inputs[i + 1]  # tanh output of layer i
        g *= 1.0 - h * h
        grads[f"w{i}"] = np.swapaxes(inputs[i], -1, -2) @ g
        grads[f"b{i}"] = g.sum(-2)
        if i > 0:
            g = g @ np.swapaxes(params[f"w{i}"], -1, -2)
    return pos, grads


def _float64(
    x: np.ndarray, y: np.ndarray, inv_vol: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    return (
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
        None if inv_vol is None else np.asarray(inv_vol, dtype=np.float64),
    )


def loss_and_grad(
    params: NumpyParams,
    x: np.ndarray,
    y: np.ndarray,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: np.ndarray | None = None,
) -> tuple[float, NumpyParams]:
    """Trading loss of one window and its gradient with respect to every parameter.

    Parameters
    ----------
    params : dict of ndarray
        Unbatched weights (see :func:`metamodels.policy.to_numpy`).
    x, y : ndarray
        Features ``(n, F)`` and labels ``(n,)`` of one window.
    inv_vol : ndarray, optional
        ``1 / vol`` per bar, ``(n,)`` (see :func:`trading_loss`).

    Returns
    -------
    loss : float
    grads : dict of ndarray
        float64, same keys and shapes as ``params``.
    """
    x, y, inv_vol = _float64(x, y, inv_vol)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    pos, grads = _grads(params, x, y, inv_vol, policy_spec, objective_spec)
    loss = float(trading_loss(pos, y, objective_spec, inv_vol))
    return loss, {k: grads[k] for k in params}


def adapt(
    params: NumpyParams,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    lr: NumpyLR,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: np.ndarray | None = None,
) -> NumpyParams:
    """Numpy twin of :func:`metamodels.adapt.adapt` for one support window.

    Parameters
    ----------
    params : dict of ndarray
        Initial weights (not modified).
    x, y : ndarray
        Support features ``(n, F)`` and labels ``(n,)``; computed in float64.
    steps : int
        SGD steps (0 returns float64 copies of ``params``).
    lr : float or dict of ndarray
        Shared step size, or one array per parameter (Meta-SGD).
    inv_vol : ndarray, optional
        ``1 / vol`` per support bar, ``(n,)``.

    Returns
    -------
    dict of ndarray
        Adapted float64 weights.
    """
    if steps < 0:
        raise ValueError(f"adaptation steps must be >= 0, got {steps}")
    x, y, inv_vol = _float64(x, y, inv_vol)
    cur = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    rates = lr if isinstance(lr, dict) else dict.fromkeys(cur, lr)
    for _ in range(steps):
        _, grads = _grads(cur, x, y, inv_vol, policy_spec, objective_spec)
        for k, g in grads.items():
            cur[k] -= rates[k] * g
    return cur

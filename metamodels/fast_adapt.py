"""Trading-time adaptation in numpy, with the objective's gradient written by hand.

Inside a Backtrader run the strategy re-adapts the policy on a short window
whenever the regime detector fires. Through autograd that costs ~8 ms (graph
building for a 14-16-1 network dominates); the same five SGD steps in float64
numpy take ~0.1 ms. The math is exactly that of
:func:`metamodels.adapt.adapt` with :func:`metamodels.objective.trading_loss`;
``tests/test_adapt.py`` checks the two agree to 1e-6 for every position mode,
so what was trained is what trades.

Gradient of ``loss = -mean(r) + risk*mean(r^2) + cost*mean(|dh|)`` with
``r = p*y``, ``h = p*a`` (``a = 1/vol``), ``dh_t = h_{t+1} - h_t``::

    dL/dp_t = (-y_t + 2 risk r_t y_t) / n
              + cost/(n-1) * a_t * (sign(dh_{t-1}) - sign(dh_t))

then back through the squash and the tanh layers.
"""

from __future__ import annotations

import numpy as np

from metabt.metamodels.objective import ObjectiveSpec, numpy_trading_loss
from metabt.metamodels.policy import NumpyParams, PolicySpec, numpy_positions, squash_numpy

NumpyLR = float | dict[str, np.ndarray]


def _pack(params: NumpyParams, n_layers: int) -> list[np.ndarray]:
    """Weights with the bias as an extra input row, ``(in + 1, out)``: one matmul per
    layer and one for its gradient (a separate ``sum(0)`` costs as much as the matmul)."""
    return [
        np.vstack(
            [
                np.asarray(params[f"w{i}"], dtype=np.float64),
                np.asarray(params[f"b{i}"], dtype=np.float64)[None, :],
            ]
        )
        for i in range(n_layers)
    ]


def _unpack(packed: list[np.ndarray]) -> NumpyParams:
    out: NumpyParams = {}
    for i, wa in enumerate(packed):
        out[f"w{i}"] = wa[:-1].copy()
        out[f"b{i}"] = wa[-1].copy()
    return out


def _with_ones(a: np.ndarray) -> np.ndarray:
    out = np.ones((a.shape[0], a.shape[1] + 1))
    out[:, :-1] = a
    return out


def _packed_grads(
    packed: list[np.ndarray],
    acts: list[np.ndarray],
    y: np.ndarray,
    inv_vol: np.ndarray | None,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    want_loss: bool,
) -> tuple[float, list[np.ndarray]]:
    """Loss (if asked) and gradients of packed weights. ``acts[i]`` is layer i's
    input with a trailing ones column; ``acts[0]`` holds the features and hidden
    activations are written into ``acts[1:]`` in place."""
    last = len(packed) - 1
    for i in range(last):
        np.tanh(acts[i] @ packed[i], out=acts[i + 1][:, :-1])
    pos, dpos = squash_numpy(acts[last] @ packed[last][:, 0], policy_spec)

    n = pos.shape[0]
    pnl = pos * y
    risk, cost = objective_spec.risk, objective_spec.cost
    loss = float(risk * (pnl @ pnl) / n - pnl.mean()) if want_loss else 0.0
    g_pos = (2.0 * risk * pnl - 1.0) * y * (1.0 / n)
    if n > 1 and cost > 0:
        held = pos if inv_vol is None else pos * inv_vol
        diff = held[1:] - held[:-1]
        if want_loss:
            loss += cost * float(np.abs(diff).mean())
        s = np.sign(diff) * (cost / (n - 1))
        g_held = np.zeros(n)
        g_held[1:] += s
        g_held[:-1] -= s
        g_pos += g_held if inv_vol is None else g_held * inv_vol

    g = g_pos * dpos  # d loss / d z, (n,)
    grads = [np.empty(0)] * len(packed)
    grads[last] = (acts[last].T @ g)[:, None]
    if last > 0:
        g = np.multiply.outer(g, packed[last][:-1, 0])
    for i in range(last - 1, -1, -1):
        h = acts[i + 1][:, :-1]
        g *= 1.0 - h * h
        grads[i] = acts[i].T @ g
        if i > 0:
            g = g @ packed[i][:-1].T
    return loss, grads


def _activations(x: np.ndarray, policy_spec: PolicySpec) -> list[np.ndarray]:
    n = x.shape[0]
    return [_with_ones(np.asarray(x, dtype=np.float64))] + [
        np.ones((n, h + 1)) for h in policy_spec.hidden
    ]


def _vec(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


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
        ``1 / vol`` per bar, ``(n,)`` (see :func:`metamodels.objective.trading_loss`).

    Returns
    -------
    loss : float
    grads : dict of ndarray
        float64, same keys and shapes as ``params``.
    """
    packed = _pack(params, policy_spec.n_layers)
    loss, grads = _packed_grads(
        packed,
        _activations(x, policy_spec),
        np.asarray(y, dtype=np.float64),
        _vec(inv_vol),
        policy_spec,
        objective_spec,
        want_loss=True,
    )
    return loss, _unpack(grads)


def fast_adapt(
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
    n_layers = policy_spec.n_layers
    packed = _pack(params, n_layers)
    if isinstance(lr, dict):
        rates: list = [
            _pack(
                {
                    "w0": np.broadcast_to(lr[f"w{i}"], packed[i][:-1].shape),
                    "b0": np.broadcast_to(lr[f"b{i}"], packed[i][-1].shape),
                },
                1,
            )[0]
            for i in range(n_layers)
        ]
    else:
        rates = [float(lr)] * n_layers
    acts = _activations(x, policy_spec)
    y, inv_vol = np.asarray(y, dtype=np.float64), _vec(inv_vol)
    for _ in range(steps):
        _, grads = _packed_grads(
            packed, acts, y, inv_vol, policy_spec, objective_spec, want_loss=False
        )
        for wa, g, rate in zip(packed, grads, rates):
            wa -= rate * g
    return _unpack(packed)


def window_loss(
    params: NumpyParams,
    x: np.ndarray,
    y: np.ndarray,
    policy_spec: PolicySpec,
    objective_spec: ObjectiveSpec,
    inv_vol: np.ndarray | None = None,
) -> float:
    """Trading loss of ``params`` on one window (e.g. before/after an adaptation)."""
    pos = numpy_positions(params, np.asarray(x, dtype=np.float64), policy_spec)
    return float(numpy_trading_loss(pos, y, objective_spec, inv_vol))

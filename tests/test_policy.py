"""The policy network and the trading objective (their numpy twin: tests/test_adapt.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metabt.metamodels import numpy_policy
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.metamodels.policy import (
    MODES,
    PolicySpec,
    check_params,
    init_params,
    param_shapes,
    positions,
)

SPECS = [PolicySpec(14, (16,), mode) for mode in MODES] + [
    PolicySpec(5, (7, 3), "long_short"),
    PolicySpec(5, (), "long_only"),
    # Overlay with bounds that bind (base 0.8 +- 0.5 clipped to [0, 1]).
    PolicySpec(6, (4,), "overlay", overlay_base=0.8, overlay_tilt=0.5, overlay_max=1.0),
]


def _scaled(params: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    # Larger weights push tanh into saturation, where a wrong formula shows.
    return {k: v * factor for k, v in params.items()}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.mode}-{s.hidden}")
def test_positions_stay_in_the_modes_range(spec):
    params = _scaled(init_params(spec, seed=1), 10.0)
    x = torch.randn(400, spec.n_features, generator=torch.Generator().manual_seed(0)) * 5
    pos = positions(params, x, spec)
    lo, hi = {
        "long_short": (-1, 1),
        "long_only": (0, 1),
        "overlay": (spec.overlay_min, spec.overlay_max),
    }[spec.mode]
    assert float(pos.min()) >= lo and float(pos.max()) <= hi
    assert float(pos.max() - pos.min()) > 0.5  # not stuck at one value


def test_overlay_is_base_plus_tilt():
    spec = PolicySpec(3, (4,), "overlay", overlay_base=1.0, overlay_tilt=0.5)
    params = {k: torch.zeros_like(v) for k, v in init_params(spec, 0).items()}
    x = torch.randn(10, 3)
    assert torch.allclose(positions(params, x, spec), torch.full((10,), 1.0))
    params["b1"] = torch.tensor([100.0])  # tanh -> 1: full tilt up
    assert torch.allclose(positions(params, x, spec), torch.full((10,), 1.5))


def test_task_batched_weights_match_per_task_forward():
    spec = PolicySpec(4, (5,), "long_short")
    gen = torch.Generator().manual_seed(0)
    per_task = [init_params(spec, seed) for seed in range(3)]
    stacked = {k: torch.stack([p[k] for p in per_task]) for k in per_task[0]}
    x = torch.randn(3, 8, 4, generator=gen)
    batched = positions(stacked, x, spec)
    for b, p in enumerate(per_task):
        assert torch.allclose(batched[b], positions(p, x[b], spec), atol=1e-6)


def test_init_is_seeded_and_shaped():
    spec = PolicySpec(14, (16,))
    a, b, c = init_params(spec, 7), init_params(spec, 7), init_params(spec, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert {k: tuple(v.shape) for k, v in a.items()} == param_shapes(spec)
    assert all(v.dtype == torch.float32 for v in a.values())
    check_params(a, spec)


def test_check_params_rejects_wrong_shapes_and_names():
    spec = PolicySpec(14, (16,))
    params = init_params(spec, 0)
    with pytest.raises(ValueError, match="w0"):
        check_params({**params, "w0": torch.zeros(13, 16)}, spec)
    with pytest.raises(ValueError, match="do not match"):
        check_params({k: v for k, v in params.items() if k != "b1"}, spec)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "short_only"},
        {"hidden": (0,)},
        {"n_features": 0},
        {"overlay_tilt": -1.0},
        {"overlay_min": 2.0, "overlay_max": 1.0},
    ],
)
def test_bad_policy_spec_is_refused(kwargs):
    with pytest.raises(ValueError, match="PolicySpec"):
        PolicySpec(**{"n_features": 3, **kwargs})


def test_trading_loss_is_the_documented_formula():
    pos = torch.tensor([1.0, -1.0, 0.5])
    y = torch.tensor([1.0, 2.0, -2.0])
    spec = ObjectiveSpec(risk=0.05, cost=0.01)
    pnl = [1.0, -2.0, -1.0]
    want = -np.mean(pnl) + 0.05 * np.mean(np.square(pnl)) + 0.01 * np.mean([2.0, 1.5])
    assert float(trading_loss(pos, y, spec)) == pytest.approx(want, rel=1e-6)
    assert float(numpy_policy.trading_loss(pos.numpy(), y.numpy(), spec)) == pytest.approx(want)
    # Batched windows give one loss each, equal to the single-window loss.
    batch = trading_loss(torch.stack([pos, -pos]), torch.stack([y, y]), spec)
    assert batch.shape == (2,)
    assert float(batch[0]) == pytest.approx(want, rel=1e-6)


def test_costs_and_risk_raise_the_loss():
    gen = torch.Generator().manual_seed(0)
    pos, y = torch.tanh(torch.randn(40, generator=gen)), torch.randn(40, generator=gen)
    free = trading_loss(pos, y, ObjectiveSpec(risk=0.0, cost=0.0))
    assert trading_loss(pos, y, ObjectiveSpec(risk=0.0, cost=0.01)) > free
    assert trading_loss(pos, y, ObjectiveSpec(risk=0.05, cost=0.0)) > free
    with pytest.raises(ValueError, match="cost"):
        ObjectiveSpec(cost=-0.01)

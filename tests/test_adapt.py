"""Adaptation: the torch reference and its numpy twin (the trading-time path) agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metabt.feeds.tasks import random_task_batch
from metabt.metamodels import numpy_policy
from metabt.metamodels.adapt import adapt, expand_tasks, support_loss
from metabt.metamodels.model import MetaModel, evaluate
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import MODES, PolicySpec, init_params, positions, to_numpy

OBJ = ObjectiveSpec(risk=0.05, cost=0.01)
SPECS = [PolicySpec(14, (16,), mode) for mode in MODES] + [
    PolicySpec(6, (5, 4), "long_short"),
    PolicySpec(6, (), "long_only"),
    PolicySpec(6, (8,), "overlay", overlay_base=0.6, overlay_tilt=0.6, overlay_max=1.0),
]
IDS = [f"{s.mode}-{'x'.join(map(str, s.hidden)) or 'linear'}" for s in SPECS]


def _task(spec: PolicySpec, seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, spec.n_features)), rng.standard_normal(n)


def _torch64(params: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in params.items()}


def _scaled(params: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    # Larger weights push tanh into saturation (and overlay into its clip), where a
    # wrong formula shows.
    return {k: v * factor for k, v in params.items()}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_numpy_and_torch_paths_agree(spec):
    """numpy_policy mirrors the torch reference: forward, loss, gradient, adaptation."""
    for seed in range(4):
        torch_params = _scaled(init_params(spec, seed), 3.0 if seed == 3 else 1.0)
        params = to_numpy(torch_params)
        x, y = _task(spec, 100 + seed)
        inv_vol = None if seed % 2 else np.random.default_rng(seed).uniform(0.5, 2.0, len(y))
        tx, ty, ta = (None if v is None else torch.tensor(v) for v in (x, y, inv_vol))

        # Forward: every bar at once, one bar at a time (as the strategy calls it), and
        # float32 weights straight from training.
        want_pos = positions(_torch64(params), tx, spec).numpy()
        got_pos = numpy_policy.positions(params, x, spec)
        np.testing.assert_allclose(got_pos, want_pos, rtol=0, atol=1e-12)
        one = np.array([numpy_policy.positions(params, row, spec) for row in x])
        np.testing.assert_allclose(one, want_pos, rtol=0, atol=1e-12)
        got32 = numpy_policy.positions(
            to_numpy(torch_params, np.float32), x.astype(np.float32), spec
        )
        np.testing.assert_allclose(got32, want_pos, rtol=0, atol=1e-5)

        # Loss and its hand-written gradient.
        tp = {k: v.requires_grad_(True) for k, v in _torch64(params).items()}
        tloss = support_loss(tp, tx, ty, spec, OBJ, ta)
        tgrads = dict(zip(tp, torch.autograd.grad(tloss, list(tp.values()))))
        loss, grads = numpy_policy.loss_and_grad(params, x, y, spec, OBJ, inv_vol)
        assert loss == pytest.approx(float(tloss.detach()), abs=1e-12)
        np_loss = float(numpy_policy.trading_loss(got_pos, y, OBJ, inv_vol))
        assert np_loss == pytest.approx(float(tloss.detach()), abs=1e-12)
        for k in tp:
            np.testing.assert_allclose(grads[k], tgrads[k].numpy(), rtol=0, atol=1e-12, err_msg=k)

        # Adaptation, with a shared step size and with Meta-SGD's per-parameter ones.
        lr = (
            0.5
            if seed % 2
            else {
                k: np.random.default_rng(seed).uniform(0.1, 0.9, v.shape) for k, v in params.items()
            }
        )
        got = numpy_policy.adapt(params, x, y, 5, lr, spec, OBJ, inv_vol)
        torch_lr = _torch64(lr) if isinstance(lr, dict) else lr
        want = adapt(_torch64(params), tx, ty, 5, torch_lr, spec, OBJ, inv_vol=ta)
        moved = max(np.abs(got[k] - params[k]).max() for k in params)
        assert moved > 1e-3  # the check below must compare real adaptation, not two no-ops
        for k in params:
            np.testing.assert_allclose(got[k], want[k].numpy(), rtol=0, atol=1e-6, err_msg=k)


def test_numpy_positions_with_one_weight_set_per_asset():
    """Batched weights (one set per asset) give each asset its own forward pass."""
    spec = PolicySpec(14)
    stacked = [to_numpy(init_params(spec, seed)) for seed in range(3)]
    batched = {k: np.stack([p[k] for p in stacked]) for k in stacked[0]}
    x = np.random.default_rng(0).standard_normal((3, 1, 14))
    got = numpy_policy.positions(batched, x, spec)
    for b, p in enumerate(stacked):
        np.testing.assert_allclose(got[b], numpy_policy.positions(p, x[b], spec), atol=1e-15)


def test_zero_steps_change_nothing():
    spec = PolicySpec(14)
    params = init_params(spec, 0)
    x, y = torch.randn(60, 14), torch.randn(60)
    same = adapt(params, x, y, 0, 0.5, spec, OBJ)
    assert all(torch.equal(same[k], params[k]) for k in params)
    same_np = numpy_policy.adapt(to_numpy(params), x.numpy(), y.numpy(), 0, 0.5, spec, OBJ)
    assert all(np.array_equal(same_np[k], to_numpy(params)[k]) for k in params)


def test_adapt_is_pure():
    spec = PolicySpec(14)
    params = init_params(spec, 0)
    before = {k: v.clone() for k, v in params.items()}
    np_params = to_numpy(params)
    np_before = {k: v.copy() for k, v in np_params.items()}
    x, y = torch.randn(60, 14), torch.randn(60)
    adapt(params, x, y, 3, 0.5, spec, OBJ)
    numpy_policy.adapt(np_params, x.numpy(), y.numpy(), 3, 0.5, spec, OBJ)
    assert all(torch.equal(before[k], params[k]) for k in params)
    assert all(np.array_equal(np_before[k], np_params[k]) for k in np_params)


def test_a_small_step_lowers_the_support_loss():
    spec = PolicySpec(14)
    params = to_numpy(init_params(spec, 2))
    x, y = _task(spec, 3)

    def loss(p: dict) -> float:
        return float(numpy_policy.trading_loss(numpy_policy.positions(p, x, spec), y, OBJ))

    before = loss(params)
    after = loss(numpy_policy.adapt(params, x, y, 1, 0.05, spec, OBJ))
    assert after < before


def test_batched_adaptation_equals_one_task_at_a_time():
    spec = PolicySpec(14)
    params = init_params(spec, 1)
    tasks = random_task_batch(5, 60, 20, 14, seed=2)
    x, y = torch.tensor(tasks.support_x), torch.tensor(tasks.support_y)
    batched = adapt(expand_tasks(params, 5), x, y, 4, 0.3, spec, OBJ)
    for b in range(5):
        single = adapt(params, x[b], y[b], 4, 0.3, spec, OBJ)
        for k in params:
            torch.testing.assert_close(batched[k][b], single[k], rtol=0, atol=1e-6)


def test_meta_model_adapts_with_its_own_step_sizes():
    spec = PolicySpec(14)
    params = init_params(spec, 4)
    lrs = {k: torch.full_like(v, 0.2) for k, v in params.items()}
    lrs["w0"] = lrs["w0"] * 2
    model = MetaModel(
        params=params,
        inner_lr=lrs,
        inner_steps=3,
        algorithm="metasgd",
        policy_spec=spec,
        objective_spec=OBJ,
    )
    tasks = random_task_batch(3, 60, 20, 14, seed=5)
    adapted = numpy_policy.adapt(
        model.numpy_params(),
        tasks.support_x[0],
        tasks.support_y[0],
        model.inner_steps,
        model.numpy_inner_lr(),
        spec,
        OBJ,
    )
    want = adapt(
        _torch64(model.numpy_params()),
        torch.tensor(tasks.support_x[0]).double(),
        torch.tensor(tasks.support_y[0]).double(),
        3,
        _torch64(model.numpy_inner_lr()),
        spec,
        OBJ,
    )
    for k in params:
        np.testing.assert_allclose(adapted[k], want[k].numpy(), rtol=0, atol=1e-6)
    # evaluate() adapts every task the same way before scoring the query window.
    pos = numpy_policy.positions(adapted, tasks.query_x[0].astype(np.float64), spec)
    assert evaluate(model, tasks)[0] == pytest.approx(
        float(numpy_policy.trading_loss(pos, tasks.query_y[0], OBJ)), abs=1e-5
    )


def test_negative_steps_are_refused():
    spec = PolicySpec(3)
    with pytest.raises(ValueError, match="steps"):
        adapt(init_params(spec, 0), torch.zeros(5, 3), torch.zeros(5), -1, 0.1, spec, OBJ)
    with pytest.raises(ValueError, match="steps"):
        numpy_policy.adapt(
            to_numpy(init_params(spec, 0)), np.zeros((5, 3)), np.zeros(5), -1, 0.1, spec, OBJ
        )


def test_the_numpy_twin_runs_without_torch():
    import subprocess
    import sys

    code = "import sys, metabt.metamodels.numpy_policy; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

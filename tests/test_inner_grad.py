"""The batched inner loop's hand-written gradient equals autograd's, first and second order."""

from __future__ import annotations

import pytest
import torch

from metabt.feeds.tasks import random_task_batch
from metabt.metamodels.adapt import adapt, expand_tasks, support_loss
from metabt.metamodels.inner_grad import support_grads, written_out
from metabt.metamodels.learners import TorchTasks
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import MODES, PolicySpec, init_params

OBJ = ObjectiveSpec(risk=0.05, cost=0.01)
SPECS = [PolicySpec(6, (5,), mode) for mode in MODES] + [
    PolicySpec(6, (5, 4), "long_short"),
    PolicySpec(6, (), "long_only"),
    # A tight clip, so some positions sit at the bounds where the gradient stops.
    PolicySpec(6, (8,), "overlay", overlay_base=0.6, overlay_tilt=0.6, overlay_max=1.0),
]
IDS = [f"{s.mode}-{'x'.join(map(str, s.hidden)) or 'linear'}" for s in SPECS]


def _tasks(spec: PolicySpec, padded: bool, seed: int = 0) -> TorchTasks:
    batch = random_task_batch(5, 24, 4, spec.n_features, seed=seed, variable=padded)
    return TorchTasks(*(None if v is None else v.double() for v in TorchTasks.from_batch(batch)))


def _weights(spec: PolicySpec, n_tasks: int, seed: int = 1) -> dict[str, torch.Tensor]:
    # Each task gets its own (perturbed) weights, scaled so tanh saturates in places.
    gen = torch.Generator().manual_seed(seed)
    return {
        k: (
            2.0 * v.double()
            + 0.3 * torch.randn(n_tasks, *v.shape, generator=gen, dtype=torch.float64)
        ).requires_grad_(True)
        for k, v in init_params(spec, seed).items()
    }


def _support(tasks: TorchTasks) -> tuple:
    return tasks.support_x, tasks.support_y, tasks.support_inv_vol, tasks.support_mask


def _by_hand(params, spec, tasks):
    x, y, inv_vol, mask = _support(tasks)
    return support_grads(params, x, y, spec, OBJ, inv_vol, mask)


def _by_autograd(params, spec, tasks):
    x, y, inv_vol, mask = _support(tasks)
    loss = support_loss(params, x, y, spec, OBJ, inv_vol, mask)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True)))


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_hand_written_gradient_equals_autograd(spec, padded):
    tasks = _tasks(spec, padded)
    params = _weights(spec, len(tasks))
    hand, auto = _by_hand(params, spec, tasks), _by_autograd(params, spec, tasks)
    assert set(hand) == set(params)
    assert max(float(g.detach().abs().max()) for g in auto.values()) > 1e-3  # a real gradient
    for k in params:
        torch.testing.assert_close(hand[k], auto[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_hand_written_gradient_has_autograds_second_derivative(spec):
    # Second-order MAML differentiates through the inner gradient: the hand-written
    # one must give the same Hessian-vector products as autograd's double backward.
    tasks = _tasks(spec, padded=True, seed=2)
    params = _weights(spec, len(tasks), seed=3)
    gen = torch.Generator().manual_seed(4)
    direction = {
        k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()
    }

    def hvp(grads: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        dot = sum((grads[k] * direction[k]).sum() for k in params)
        return list(torch.autograd.grad(dot, list(params.values())))

    hand, auto = hvp(_by_hand(params, spec, tasks)), hvp(_by_autograd(params, spec, tasks))
    assert max(float(h.abs().max()) for h in auto) > 1e-3
    for k, h, a in zip(params, hand, auto):
        torch.testing.assert_close(h, a, rtol=1e-9, atol=1e-11, msg=k)


def test_gradcheck_of_the_hand_written_gradient():
    # Finite differences of the gradient itself (float64): independent of autograd's
    # own formulas for the loss.
    spec = PolicySpec(3, (4,), "long_short")
    tasks = _tasks(spec, padded=True, seed=5)
    x, y, inv_vol, mask = (t[:2, -8:] for t in _support(tasks))
    mask = mask.clone()
    mask[:, :2] = 0.0  # two padded bars in both tasks
    names = list(_weights(spec, 2))

    def flat_grads(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grads = support_grads(dict(zip(names, tensors)), x, y, spec, OBJ, inv_vol, mask)
        return tuple(grads[k] for k in names)

    params = _weights(spec, 2, seed=6)
    assert torch.autograd.gradcheck(flat_grads, tuple(params.values()), eps=1e-6, atol=1e-7)


def test_batched_adaptation_is_autograds_and_only_policy_weights_use_the_hand_gradient():
    spec = SPECS[0]
    tasks = _tasks(spec, padded=True, seed=7)
    params = {k: v.double() for k, v in init_params(spec, 0).items()}
    batched = expand_tasks(params, len(tasks))
    assert written_out(batched, spec, OBJ)
    assert not written_out(params, spec, OBJ)  # one window: the autograd reference
    assert not written_out({**batched, "extra": batched["b0"]}, spec, OBJ)
    x, y, inv_vol, mask = _support(tasks)
    fast = adapt(batched, x, y, 4, 0.3, spec, OBJ, inv_vol=inv_vol, mask=mask)
    for b in range(len(tasks)):
        one = tasks.task(b)
        ref = adapt(
            params, one.support_x, one.support_y, 4, 0.3, spec, OBJ, inv_vol=one.support_inv_vol
        )
        for k in params:
            torch.testing.assert_close(fast[k][b], ref[k], rtol=1e-10, atol=1e-12, msg=(b, k))

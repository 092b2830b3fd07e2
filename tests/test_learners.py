"""Meta-learners: the batched engine computes the textbook meta-gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metabt.feeds.tasks import random_task_batch
from metabt.metamodels.learners import FOMAML, LEARNERS, LOG_LR, MAML, MetaSGD, Reptile, TorchTasks
from metabt.metamodels.model import ALGORITHMS, FORWARD_LEARNERS
from metabt.metamodels.numpy_policy import adapt as numpy_adapt
from metabt.metamodels.numpy_policy import loss_and_grad
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy

OBJ = ObjectiveSpec(risk=0.05, cost=0.0001)
SPEC = PolicySpec(6, (5,))


def _tasks(n: int = 6, seed: int = 0) -> TorchTasks:
    # Variable lengths (padding + masks) and a 1/vol per bar, as sampled tasks have: the
    # batched engine must give each padded task exactly its unpadded loop result.
    batch = random_task_batch(n, 30, 10, 6, seed=seed, variable=True)
    return TorchTasks(
        *(torch.tensor(getattr(batch, f), dtype=torch.float64) for f in TorchTasks._fields)
    )


def _support(tasks: TorchTasks, b: int) -> tuple[np.ndarray, ...]:
    """Task b's support window without padding: features, labels, 1 / vol."""
    one = tasks.task(b)
    return one.support_x.numpy(), one.support_y.numpy(), one.support_inv_vol.numpy()


def _query(tasks: TorchTasks, b: int) -> tuple[np.ndarray, ...]:
    one = tasks.task(b)
    return one.query_x.numpy(), one.query_y.numpy(), one.query_inv_vol.numpy()


def _meta(learner, seed: int = 0) -> dict[str, torch.Tensor]:
    return learner.init_meta({k: v.double() for k, v in init_params(SPEC, seed).items()})


def _theta_np(meta: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return to_numpy({k: v for k, v in meta.items() if not k.startswith(LOG_LR)})


LEARNER_CASES = {
    "maml": {"cls": MAML},
    "maml-learned-lr": {"cls": MAML, "learn_inner_lr": True},
    "maml-length-power": {"cls": MAML, "learn_inner_lr": True, "learn_lr_length_power": True},
    "fomaml": {"cls": FOMAML},
    "fomaml-learned-lr": {"cls": FOMAML, "learn_inner_lr": True},
    "fomaml-length-power": {"cls": FOMAML, "learn_inner_lr": True, "learn_lr_length_power": True},
    "metasgd": {"cls": MetaSGD},
    "metasgd-length-power": {"cls": MetaSGD, "learn_lr_length_power": True},
    "reptile": {"cls": Reptile},
}


@pytest.mark.parametrize("case", LEARNER_CASES, ids=list(LEARNER_CASES))
def test_batched_and_looped_meta_gradients_agree(case):
    kw = dict(LEARNER_CASES[case])
    cls = kw.pop("cls")
    tasks = _tasks()
    batched, looped = (
        cls(inner_lr=0.4, inner_steps=3, **kw),
        cls(inner_lr=0.4, inner_steps=3, engine="loop", **kw),
    )
    meta = _meta(batched)
    loss_b, grads_b = batched.meta_grads(meta, tasks, SPEC, OBJ)
    loss_l, grads_l = looped.meta_grads(meta, tasks, SPEC, OBJ)
    assert loss_b == pytest.approx(loss_l, abs=1e-12)
    assert set(grads_b) == set(meta) == set(grads_l)
    assert max(float(g.abs().max()) for g in grads_b.values()) > 1e-4  # a real gradient
    for k in meta:
        torch.testing.assert_close(grads_b[k], grads_l[k], rtol=1e-9, atol=1e-12, msg=k)


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights():
    tasks = _tasks(n=5, seed=1)
    learner = FOMAML(inner_lr=0.3, inner_steps=4)
    meta = _meta(learner)
    _, grads = learner.meta_grads(meta, tasks, SPEC, OBJ)
    # Hand-built reference, independent of torch: adapt each task in numpy, take
    # the hand-written query-loss gradient there, average over tasks.
    theta = _theta_np(meta)
    want = {k: np.zeros_like(v) for k, v in theta.items()}
    for b in range(len(tasks)):
        phi = numpy_adapt(theta, *_support(tasks, b)[:2], 4, 0.3, SPEC, OBJ, _support(tasks, b)[2])
        _, g = loss_and_grad(phi, *_query(tasks, b)[:2], SPEC, OBJ, _query(tasks, b)[2])
        for k in want:
            want[k] += g[k] / len(tasks)
    for k, value in want.items():
        np.testing.assert_allclose(grads[k].numpy(), value, rtol=0, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("cls", [MAML, FOMAML, MetaSGD])
def test_zero_inner_steps_is_plain_query_gradient(cls):
    tasks = _tasks(n=4, seed=2)
    learner = cls(inner_lr=0.3, inner_steps=0)
    meta = _meta(learner)
    before = {k: v.detach().clone() for k, v in meta.items()}
    _, grads = learner.meta_grads(meta, tasks, SPEC, OBJ)
    theta = _theta_np(meta)
    want = {k: np.zeros_like(v) for k, v in theta.items()}
    for b in range(len(tasks)):
        _, g = loss_and_grad(theta, *_query(tasks, b)[:2], SPEC, OBJ, _query(tasks, b)[2])
        for k in want:
            want[k] += g[k] / len(tasks)
    for k in meta:
        assert torch.equal(meta[k], before[k])  # meta-parameters untouched
        if k in want:
            np.testing.assert_allclose(grads[k].numpy(), want[k], rtol=0, atol=1e-10)
        else:  # step sizes do nothing without steps
            assert float(grads[k].abs().max()) == 0.0


@pytest.mark.parametrize("cls", [MAML, FOMAML, MetaSGD, Reptile])
def test_unadapted_weight_adds_the_initial_weights_query_gradient(cls):
    # meta-loss = adapted query loss + w * query loss of the initial weights: its gradient is
    # the learner's own plus w times the plain query gradient at theta (numpy, hand-written).
    tasks = _tasks(n=5, seed=4)
    w = 0.7
    plain, anchored = (
        cls(inner_lr=0.3, inner_steps=2),
        cls(inner_lr=0.3, inner_steps=2, unadapted_weight=w),
    )
    meta = _meta(plain)
    loss_plain, grads_plain = plain.meta_grads(meta, tasks, SPEC, OBJ)
    loss_anchored, grads_anchored = anchored.meta_grads(meta, tasks, SPEC, OBJ)
    assert loss_anchored == loss_plain  # the reported loss stays the adapted one
    theta = _theta_np(meta)
    want = {k: np.zeros_like(v) for k, v in theta.items()}
    for b in range(len(tasks)):
        _, g = loss_and_grad(theta, *_query(tasks, b)[:2], SPEC, OBJ, _query(tasks, b)[2])
        for k in want:
            want[k] += w * g[k] / len(tasks)
    assert max(float(np.abs(v).max()) for v in want.values()) > 1e-4  # a real extra term
    for k in meta:
        extra = want[k] if k in want else 0.0  # step sizes do not move the initial weights
        np.testing.assert_allclose(
            (grads_anchored[k] - grads_plain[k]).numpy(), extra, rtol=0, atol=1e-10, err_msg=k
        )


def test_unadapted_weight_must_be_a_nonnegative_number():
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="unadapted_weight"):
            MAML(unadapted_weight=bad)


def _meta_loss(learner, meta, tasks) -> float:
    return learner.meta_grads(
        {k: v.detach().clone().requires_grad_(True) for k, v in meta.items()}, tasks, SPEC, OBJ
    )[0]


@pytest.mark.parametrize(
    "learner",
    [MAML(inner_lr=0.3, inner_steps=3, learn_inner_lr=True), MetaSGD(inner_lr=0.3, inner_steps=2)],
    ids=["maml", "metasgd"],
)
def test_second_order_meta_gradient_matches_finite_differences(learner):
    tasks = _tasks(n=4, seed=3)
    meta = _meta(learner)
    _, grads = learner.meta_grads(meta, tasks, SPEC, OBJ)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in meta:
        flat = meta[name].detach().reshape(-1)
        for i in rng.choice(flat.numel(), size=min(3, flat.numel()), replace=False):
            up = {k: v.detach().clone() for k, v in meta.items()}
            down = {k: v.detach().clone() for k, v in meta.items()}
            up[name].view(-1)[i] += eps
            down[name].view(-1)[i] -= eps
            numeric = (_meta_loss(learner, up, tasks) - _meta_loss(learner, down, tasks)) / (
                2 * eps
            )
            analytic = float(grads[name].reshape(-1)[i])
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-7), (name, i)


def test_second_order_term_is_really_there():
    tasks = _tasks(n=6, seed=4)
    kw = {"inner_lr": 0.5, "inner_steps": 3}
    meta = _meta(MAML(**kw))
    _, second = MAML(**kw).meta_grads(meta, tasks, SPEC, OBJ)
    _, first = FOMAML(**kw).meta_grads(meta, tasks, SPEC, OBJ)
    gap = max(float((second[k] - first[k]).abs().max()) for k in meta)
    assert gap > 1e-4


def test_fomaml_step_size_gradient_is_exact_for_one_step():
    # With one inner step the adapted weights depend on the step size only
    # through theta - alpha * g(theta), so the first-order formula is exact.
    tasks = _tasks(n=5, seed=5)
    kw = {"inner_lr": 0.4, "inner_steps": 1, "learn_inner_lr": True}
    meta = _meta(MAML(**kw))
    _, exact = MAML(**kw).meta_grads(meta, tasks, SPEC, OBJ)
    _, first = FOMAML(**kw).meta_grads(meta, tasks, SPEC, OBJ)
    assert float(first[LOG_LR]) == pytest.approx(float(exact[LOG_LR]), rel=1e-6)


def test_reptile_pulls_the_init_toward_the_adapted_weights():
    tasks = _tasks(n=4, seed=6)
    learner = Reptile(inner_lr=0.2, inner_steps=3)
    meta = _meta(learner)
    _, grads = learner.meta_grads(meta, tasks, SPEC, OBJ)
    theta = _theta_np(meta)
    phis = [
        numpy_adapt(theta, *_support(tasks, b)[:2], 3, 0.2, SPEC, OBJ, _support(tasks, b)[2])
        for b in range(len(tasks))
    ]
    for k in theta:
        want = (theta[k] - np.mean([p[k] for p in phis], axis=0)) / (0.2 * 3)
        np.testing.assert_allclose(grads[k].numpy(), want, rtol=0, atol=1e-9)


def test_registry_and_invalid_combinations():
    # The gradient learners; context and memory adapt by a forward pass instead.
    gradient = set(ALGORITHMS) - set(FORWARD_LEARNERS)
    assert set(LEARNERS) == gradient == {"maml", "fomaml", "reptile", "metasgd"}
    with pytest.raises(ValueError, match="Reptile"):
        Reptile(learn_inner_lr=True)
    with pytest.raises(ValueError, match="engine"):
        MAML(engine="gpu")
    lr = MetaSGD(inner_lr=0.25).final_lr(_meta(MetaSGD(inner_lr=0.25)))
    assert isinstance(lr, dict) and set(lr) == set(init_params(SPEC, 0))
    assert all(torch.allclose(v, torch.full_like(v, 0.25)) for v in lr.values())


def test_bench_engines_agree_with_each_other_and_with_higher():
    from metabt.metamodels.bench import run_bench

    threads = torch.get_num_threads()
    result = run_bench(n_tasks=4, inner_steps=2, repeats=1, support=20, query=5)
    assert torch.get_num_threads() == threads  # the bench restores the setting
    # The thread count is measured, not assumed: the batched step at 1 and 2 threads.
    assert set(result["maml_batched_ms_by_threads"]) == {"1", "2"}
    assert all(ms > 0 for ms in result["maml_batched_ms_by_threads"].values())
    for key in (
        "maml_vmap_ms",
        "maml_batched_ms",
        "fomaml_batched_ms",
        "maml_loop_ms",
        "maml_higher_ms",
        "speedup_vs_loop",
        "speedup_vs_higher",
        "adapt_p50_ms",
        "adapt_p95_ms",
        "infer_numpy_us",
        "infer_torch_us",
    ):
        assert key in result
    # The speed-ups compare engines that compute the same meta-gradient
    # (higher is a dev dependency; without it the bench says why).
    assert result["grad_diff_loop"] < 1e-5
    assert result["grad_diff_funcvmap"] < 1e-5
    if result["maml_higher_ms"] is None:
        assert result["higher_error"]
    else:
        assert result["grad_diff_higher"] < 1e-5

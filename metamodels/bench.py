"""Speed benchmark behind ``metabt bench``: measured, never asserted in tests.

On identical tasks and the same 14-16-1 network, in one run:

* one second-order MAML meta-step (64 tasks x 5 inner steps) with our batched
  engine (weights expanded over a task dimension, one batched matmul per layer;
  reported as ``maml_batched_*``, and under its older name ``maml_vmap_*``,
  although it does not use ``torch.func.vmap``), with the plain per-task
  autograd loop, with the ``higher`` library
  (the usual way to write MAML over ``nn.Module``), and with ``torch.func``
  ``vmap`` over per-task ``grad`` calls; the meta-gradients of all four are
  compared so the speed-up is for the same answer, and the batched step takes
  turns with each slower engine so both see the same machine load;
* one trading-time adaptation (5 steps on 60 bars): the numpy path the
  strategy uses and the torch reference;
* per-bar inference in numpy and in torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from metabt.feeds.tasks import random_task_batch
from metabt.metamodels import numpy_policy
from metabt.metamodels.adapt import adapt
from metabt.metamodels.bench_targets import targets_of
from metabt.metamodels.learners import FOMAML, MAML, MetaLearner, TorchTasks
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.metamodels.policy import (
    Params,
    PolicySpec,
    init_params,
    positions,
    to_numpy,
)

# The bounds come from the one table of targets; these are the figures this module measures.
TARGETS = targets_of({"speedup_vs_higher", "speedup_vs_loop", "adapt_p50_ms"})


def _times_ms(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def _grad(p: torch.Tensor) -> torch.Tensor:
    if p.grad is None:  # set by the backward pass before it is read
        raise RuntimeError("a parameter has no gradient")
    return p.grad


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _ms_by_threads(
    fn: Callable[[], Any], counts: tuple[int, ...], repeats: int
) -> dict[str, float]:
    """Median ms of ``fn`` at each torch thread count, the counts taking turns so a load
    change on the machine hits them alike (the thread setting is restored). The first
    call after a switch (the thread pool resizing) is not timed."""
    before = torch.get_num_threads()
    times: dict[str, list[float]] = {str(n): [] for n in counts}
    try:
        for _ in range(repeats):
            for n in counts:
                torch.set_num_threads(n)
                times[str(n)].append(float(_times_ms(fn, 1, warmup=1)[0]))
    finally:
        torch.set_num_threads(before)
    return {n: float(np.median(t)) for n, t in times.items()}


def _higher_step(
    theta: Params,
    tasks: TorchTasks,
    steps: int,
    lr: float,
    spec: PolicySpec,
    objective: ObjectiveSpec,
) -> Callable[[], dict[str, torch.Tensor]]:
    """A second-order MAML meta-step written the usual ``higher`` way (raises ImportError)."""
    import higher  # dev extra; imported lazily so the package never needs it

    widths = spec.widths
    layers: list[torch.nn.Module] = []
    for i in range(spec.n_layers):
        lin = torch.nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            lin.weight.copy_(theta[f"w{i}"].T)
            lin.bias.copy_(theta[f"b{i}"])
        layers += [lin, torch.nn.Tanh()] if i < spec.n_layers - 1 else [lin]
    net = torch.nn.Sequential(*layers)
    inner_opt = torch.optim.SGD(net.parameters(), lr=lr)

    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trading_loss(torch.tanh(model(x)[:, 0]), y, objective)

    def step() -> dict[str, torch.Tensor]:
        net.zero_grad()
        n = len(tasks)
        for b in range(n):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, opt):
                for _ in range(steps):
                    opt.step(loss(fnet, tasks.support_x[b], tasks.support_y[b]))
                (loss(fnet, tasks.query_x[b], tasks.query_y[b]) / n).backward()
        lins = [m for m in net if isinstance(m, torch.nn.Linear)]
        grads = {f"w{i}": _grad(m.weight).T.clone() for i, m in enumerate(lins)}
        grads.update({f"b{i}": _grad(m.bias).clone() for i, m in enumerate(lins)})
        return grads

    return step


def _funcvmap_step(
    theta: Params,
    tasks: TorchTasks,
    steps: int,
    lr: float,
    spec: PolicySpec,
    objective: ObjectiveSpec,
) -> Callable[[], dict[str, torch.Tensor]]:
    """The torch.func tutorial's MAML: ``vmap`` over tasks of an inner loop of ``grad`` calls."""
    from torch.func import grad, vmap

    def inner_loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trading_loss(positions(p, x, spec), y, objective)

    def task_loss(
        p: Params, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> torch.Tensor:
        for _ in range(steps):
            g = grad(inner_loss)(p, sx, sy)
            p = {k: p[k] - lr * g[k] for k in p}
        return inner_loss(p, qx, qy)

    def step() -> dict[str, torch.Tensor]:
        loss = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(theta, *tasks[:4]).mean()
        return dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))

    return step


def run_bench(
    n_tasks: int = 64,
    inner_steps: int = 5,
    repeats: int = 5,
    seed: int = 0,
    support: int = 60,
    query: int = 20,
    n_features: int = 14,
    hidden: int = 16,
    inner_lr: float = 0.1,
    with_higher: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Measure the meta-learning core; returns one flat dict of figures (JSON-ready).

    Parameters
    ----------
    n_tasks, inner_steps : int
        Meta-batch size and inner SGD steps of the timed meta-step.
    repeats : int
        Timed repetitions of each meta-step (``higher`` gets at most 3: it is slow).
    seed : int
        Seeds the tasks and the network.
    support, query, n_features, hidden : int
        Task windows and network size (defaults: the ones the strategy uses).
    inner_lr : float
        Inner step size.
    with_higher : bool
        Skip the ``higher`` comparison (it takes a few seconds) when False.
    threads : int or None
        Torch intra-op threads for every engine (restored afterwards); None
        leaves torch's setting. Default 1, as in training: with these small
        tensors a second thread gains little, while on a busy machine every
        parallel op waits for its slowest thread, and a thread the OS has
        parked costs a whole time slice (the batched step then swings from
        ~10 ms to seconds). ``maml_batched_ms_by_threads`` measures the
        batched step at 1 and 2 threads in the same run, so the choice stays
        checked.

    Returns
    -------
    dict
        Times in ms (meta-steps, adaptation) and microseconds (inference),
        tasks/s, speed-ups, the largest meta-gradient difference between the
        engines, and the run's settings. ``maml_higher_ms`` is None with a
        ``higher_error`` reason when the library is missing or fails.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(
            n_tasks,
            inner_steps,
            repeats,
            seed,
            support,
            query,
            n_features,
            hidden,
            inner_lr,
            with_higher,
        )
    finally:
        torch.set_num_threads(before)


def _run(
    n_tasks: int,
    inner_steps: int,
    repeats: int,
    seed: int,
    support: int,
    query: int,
    n_features: int,
    hidden: int,
    inner_lr: float,
    with_higher: bool,
) -> dict[str, Any]:
    spec, objective = PolicySpec(n_features, (hidden,)), ObjectiveSpec()
    tasks = TorchTasks.from_batch(random_task_batch(n_tasks, support, query, n_features, seed))
    theta = {k: v.requires_grad_(True) for k, v in init_params(spec, seed).items()}
    kw: dict[str, Any] = {"inner_lr": inner_lr, "inner_steps": inner_steps}
    out: dict[str, Any] = {
        "n_tasks": n_tasks,
        "inner_steps": inner_steps,
        "support": support,
        "query": query,
        "network": "-".join(map(str, spec.widths)),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
    }

    def meta_step(learner: MetaLearner) -> Callable[[], dict[str, torch.Tensor]]:
        return lambda: learner.meta_grads(theta, tasks, spec, objective)[1]

    engines = {
        "batched": meta_step(MAML(**kw)),
        "loop": meta_step(MAML(engine="loop", **kw)),
        "funcvmap": _funcvmap_step(theta, tasks, inner_steps, inner_lr, spec, objective),
    }
    batched = engines["batched"]
    reference = batched()
    # The batched step is also timed once before every run of each slower engine, and
    # its median is over all those runs: on a shared machine the load drifts during the
    # seconds the slow engines take, and a speed-up is only fair if both sides see it.
    batched_ms = list(_times_ms(batched, repeats))

    def in_turns(fn: Callable[[], Any], runs: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        own: list[float] = []
        for _ in range(runs):
            batched_ms.extend(_times_ms(batched, 1, warmup=0))
            own.extend(_times_ms(fn, 1, warmup=0))
        return float(np.median(own))

    out["maml_batched_ms"] = out["maml_batched_tasks_per_s"] = None  # set once all turns ran
    for name in ("loop", "funcvmap"):
        ms = in_turns(engines[name], max(1, repeats // 2) if name == "loop" else repeats)
        out[f"maml_{name}_ms"] = ms
        out[f"maml_{name}_tasks_per_s"] = n_tasks / ms * 1e3
        out[f"grad_diff_{name}"] = _max_diff(reference, engines[name]())
    out["maml_batched_ms_by_threads"] = _ms_by_threads(batched, (1, 2), repeats)
    fomaml = meta_step(FOMAML(**kw))
    out["fomaml_batched_ms"] = float(np.median(_times_ms(fomaml, repeats)))

    out["maml_higher_ms"] = out["maml_higher_tasks_per_s"] = out["grad_diff_higher"] = None
    out["higher_error"] = None if with_higher else "skipped (with_higher=False)"
    if with_higher:
        try:
            hstep = _higher_step(theta, tasks, inner_steps, inner_lr, spec, objective)
            out["grad_diff_higher"] = _max_diff(reference, hstep())
            ms = in_turns(hstep, min(repeats, 3), warmup=0)
            out["maml_higher_ms"], out["maml_higher_tasks_per_s"] = ms, n_tasks / ms * 1e3
        except ImportError as exc:
            out["higher_error"] = f"higher is not installed ({exc}); pip install 'metabt[dev]'"
        except (RuntimeError, TypeError, AttributeError, ValueError) as exc:
            # A higher release that no longer fits this torch must not kill the bench.
            out["higher_error"] = f"higher failed: {type(exc).__name__}: {exc}"
    ms = float(np.median(batched_ms))
    out["maml_batched_ms"], out["maml_batched_tasks_per_s"] = ms, n_tasks / ms * 1e3
    # The keys the batched engine had before it was named for what it does.
    out["maml_vmap_ms"] = out["maml_batched_ms"]
    out["maml_vmap_tasks_per_s"] = out["maml_batched_tasks_per_s"]
    out["fomaml_vmap_ms"] = out["fomaml_batched_ms"]
    out["speedup_vs_loop"] = out["maml_loop_ms"] / out["maml_batched_ms"]
    out["speedup_vs_higher"] = (
        None if out["maml_higher_ms"] is None else out["maml_higher_ms"] / out["maml_batched_ms"]
    )

    # Trading time: one adaptation on the last `support` bars of one task.
    np_params = to_numpy(theta)
    x, y = tasks.support_x[0].double().numpy(), tasks.support_y[0].double().numpy()
    t_np = _times_ms(
        lambda: numpy_policy.adapt(np_params, x, y, inner_steps, inner_lr, spec, objective),
        max(200, 400 * repeats),
        warmup=20,
    )
    out["adapt_p50_ms"], out["adapt_p95_ms"] = (float(v) for v in np.percentile(t_np, [50, 95]))
    x32, y32 = tasks.support_x[0], tasks.support_y[0]
    t_torch = _times_ms(
        lambda: adapt(theta, x32, y32, inner_steps, inner_lr, spec, objective),
        max(20, 40 * repeats),
        warmup=5,
    )
    out["adapt_torch_p50_ms"] = float(np.percentile(t_torch, 50))

    bar_np, bar_t = x[-1], x32[-1:].detach()
    out["infer_numpy_us"] = 1e3 * float(
        np.median(
            _times_ms(
                lambda: numpy_policy.positions(np_params, bar_np, spec), 2000 * repeats, warmup=50
            )
        )
    )
    frozen = {k: v.detach() for k, v in theta.items()}

    def torch_bar() -> None:
        with torch.no_grad():
            positions(frozen, bar_t, spec)

    out["infer_torch_us"] = 1e3 * float(np.median(_times_ms(torch_bar, 1000 * repeats, 50)))
    out["targets"] = dict(TARGETS)
    return out

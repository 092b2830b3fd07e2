"""``metabt bench`` on the console: a progress line per stage, then every figure against its target.

The stages are the measurements of :mod:`metabt.metamodels.bench`,
:mod:`metabt.strategies.detector_bench`, :mod:`metabt.strategies.speed_bench`
and (``--serve``) :mod:`metabt.backtests.serve.bench`; this module only runs
them in turn, says which one is running, and renders the figures they return
next to :data:`metabt.metamodels.bench_targets.TARGETS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from metabt.backtests.heartbeat import Heartbeat
from metabt.metamodels.bench_targets import AR_FLIP_MAX_FALSE_ALARMS, TARGETS, Target, figure

Figures = dict[str, Any]
Stage = tuple[str, Callable[[], Figures]]


def bench_stages(repeats: int, serve: bool) -> list[Stage]:
    """The measurements, in the order they run, each returning figures to merge."""
    from metabt.backtests.paper.bench import bench_paper
    from metabt.metamodels.bench import run_bench
    from metabt.strategies.conditioned_bench import bench_conditioned
    from metabt.strategies.detection_bound import ar_flip_bound
    from metabt.strategies.detector_bench import bench_ar_flips, bench_detectors
    from metabt.strategies.speed_bench import bench_strategy_speed

    def detectors() -> Figures:
        flips = bench_ar_flips()
        rows = bench_detectors()["detectors"]
        return {
            "detectors": {name: {**row, **flips[name]} for name, row in rows.items()},
            # What the optimal detector, told the true change, reaches on the same flips.
            "ar_flip_bound": ar_flip_bound(max_false_alarms=AR_FLIP_MAX_FALSE_ALARMS),
        }

    stages: list[Stage] = [
        (
            "meta-learners: MAML step batched, looped and with higher; adaptation; inference",
            lambda: run_bench(repeats=repeats),
        ),
        ("detectors: update cost, volatility changes, autocorrelation flips", detectors),
        (
            "MetaAdaptiveStrategy vs the SMA crossover inside Backtrader",
            lambda: bench_strategy_speed(repeats=max(1, repeats // 2)),
        ),
        (
            "context and memory policies: adaptation and per-bar inference",
            lambda: bench_conditioned(repeats=repeats),
        ),
        ("paper loop: ms per bar, 8 assets, about 2,400 stored bars", bench_paper),
    ]
    if serve:
        from metabt.backtests.serve.bench import bench_serve

        stages.append(("metabt serve over HTTP (about a minute)", bench_serve))
    return stages


def run_stages(stages: list[Stage], console: Console) -> Figures:
    """Run each stage with a live status line (a plain line per stage when piped)."""
    figures: Figures = {}
    for i, (label, run) in enumerate(stages, 1):
        heading = f"bench {i}/{len(stages)}: {label}"
        t0 = time.monotonic()
        if console.is_terminal:
            with console.status(heading + " ..."):
                figures.update(run())
        else:
            console.print(heading + " ...", highlight=False)
            with Heartbeat(console, step=label):
                figures.update(run())
        console.print(
            f"  done in {time.monotonic() - t0:.0f} s: {label.split(':')[0]}", highlight=False
        )
    return figures


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flat(figures: Figures) -> list[tuple[str, Any]]:
    rows = []
    for key, value in figures.items():
        if key == "targets":  # the bounds, shown in their own column
            continue
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in _flat(value)]
        else:
            rows.append((key, value))
    return rows


def _target_row(target: Target, figures: Figures) -> tuple[Text, str, str, Text]:
    value = figure(figures, target.key)
    met = target.met(value)
    verdict = (
        Text("not measured")
        if met is None
        else Text("met", "green")
        if met
        else Text("NOT MET", "bold red")
    )
    name = Text(target.key)
    name.append(f"\n{target.what}", "dim")
    return name, _fmt(value), target.text, verdict


def bench_table(figures: Figures) -> Table:
    """Every figure; those with a target show it and whether it was met."""
    by_key = {t.key: t for t in TARGETS}
    table = Table(title="metabt bench (medians)")
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    rows = _flat(figures)
    measured = {k for k, _ in rows}
    for key, value in rows:
        target = by_key.get(key)
        if target is None:
            table.add_row(key, _fmt(value), "", "")
            continue
        table.add_row(*_target_row(target, figures))
    # Targets on a figure no single key holds (the best detector), or not measured in this run.
    for target in TARGETS:
        if target.key not in measured:
            value = figure(figures, target.key)
            if value is None and target.key.startswith(("context_", "memory_", "serve_")):
                continue  # a learner or --serve this run did not include
            table.add_row(*_target_row(target, figures))
    return table


def target_summary(figures: Figures) -> str:
    """``targets met: 5 of 14 (not met: ...)``, over the targets this run measured."""
    results = [(t, t.met(figure(figures, t.key))) for t in TARGETS]
    measured = [(t, met) for t, met in results if met is not None]
    missed = [t.key for t, met in measured if not met]
    text = f"targets met: {len(measured) - len(missed)} of {len(measured)}"
    return text + (f" (not met: {', '.join(missed)})" if missed else "")

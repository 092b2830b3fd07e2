"""The walk-forward study: train on the past, freeze, trade the future, repeat.

One *segment* is: meta-train (and ERM-train) on ``[start, split)``, tune the
static comparators on the same bars, then run every strategy and ablation on
``[split, next_split)`` with the same costs. A plain study is one segment; an
expanding walk-forward (``refit_every``) chains segments, each trained only on
data before its own split. Bars at or after a split never reach its training.
The training itself is :mod:`backtests.training`; here the strategies are set up
and the test period is traded.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from joblib import Memory, Parallel, delayed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from metabt.backtests.config import Specs, StudyConfig, build_specs, parse_period
from metabt.backtests.data import StudyData
from metabt.backtests.shared_work import (
    in_turn,
    run_once,
    seed_run_once,
    tune_once,
)
from metabt.backtests.training import Models, train_models, true_changes
from metabt.feeds.btfeed import feature_frame, make_feature_feed
from metabt.feeds.errors import DataError
from metabt.feeds.features import FeatureSpec
from metabt.feeds.loaders import Frames, slice_period
from metabt.metamodels.model import MetaModel
from metabt.strategies.adaptive_policy import AdaptivePolicy, adaptive_policy
from metabt.strategies.conditioned_policy import ContextPolicy
from metabt.strategies.engine import BacktestResult, CostSpec, run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy
from metabt.strategies.regime_bound import RegimeBound, fit_regime_rules
from metabt.strategies.static import DEFAULT_GRIDS, STATIC_STRATEGIES
from metabt.strategies.tuning import TuningResult

log = logging.getLogger(__name__)

META_STRATEGIES = (
    "meta_adaptive",
    "meta_frozen",
    "meta_calendar",
    "meta_random_init",
    "erm_static",
)


@dataclass
class Segment:
    """What one train -> test step produced."""

    split: pd.Timestamp
    end: pd.Timestamp | None
    meta: MetaModel
    results: dict[str, BacktestResult]
    tuning: dict[str, TuningResult]
    train_sharpe: dict[str, float] = field(default_factory=dict)
    #: variant -> one result per meta-training seed (the headline runs trade the seeds' average)
    seed_results: dict[str, list[BacktestResult]] = field(default_factory=dict)


def segment_splits(config: StudyConfig, last_bar: pd.Timestamp) -> list[pd.Timestamp]:
    """Split dates of the walk-forward (one date when there is no refit)."""
    splits = [pd.Timestamp(config.data.split)]
    if config.walk_forward.refit_every:
        step = parse_period(config.walk_forward.refit_every)
        while splits[-1] + step <= last_bar:
            splits.append(splits[-1] + step)
    return splits


def warmup_start(config: StudyConfig, split: pd.Timestamp) -> pd.Timestamp:
    """First bar fed before ``split`` so indicators, detectors and windows are warm."""
    return split - pd.tseries.offsets.BDay(config.strategy.warmup_bars)


def strategy_params(config: StudyConfig) -> dict:
    """MetaAdaptiveStrategy params every meta variant shares (detector, windows, sizing)."""
    s = config.strategy
    return {
        "detector": config.detector.name,
        "detector_settings": dict(config.detector.settings),
        "min_window": s.min_window,
        "max_window": s.max_window,
        "fallback": s.fallback,
        "readapt_every": s.readapt_every,
        "calendar_window": s.calendar_window,
        "long_only": s.long_only,
        "vol_target": s.vol_target,
        "gross_cap": s.gross_cap,
        "asset_weight": s.asset_weight,
        "rebalance_threshold": s.rebalance_threshold,
    }


def _policies(models: list[MetaModel], specs: Specs) -> tuple[AdaptivePolicy | ContextPolicy, ...]:
    return tuple(adaptive_policy(m, specs.features) for m in models)


def meta_adaptive_params(
    config: StudyConfig, meta: MetaModel | list[MetaModel], specs: Specs
) -> dict:
    """Params of ``meta_adaptive`` itself: what a backtest and the paper loop both trade."""
    models = meta if isinstance(meta, list) else [meta]
    return {**strategy_params(config), "policy": _policies(models, specs), "trigger": "regime"}


def meta_runs(
    config: StudyConfig, models: Models, specs: Specs, regimes: dict[str, pd.Series] | None = None
) -> dict[str, dict]:
    """Strategy params of the meta policy and its ablations (same sizing, same costs).

    Each trades the average position of its per-seed models. With known regimes
    (synthetic data) an oracle runs too: the same policy re-adapted on windows
    that start at the true change dates, the best a detector could do.
    """
    common = strategy_params(config)
    pol = _policies(models["meta"], specs)
    runs = {
        "meta_adaptive": meta_adaptive_params(config, models["meta"], specs),
        "meta_frozen": {**common, "policy": pol, "trigger": "never"},
        "meta_calendar": {**common, "policy": pol, "trigger": "calendar"},
        "meta_random_init": {
            **common,
            "policy": _policies(models["random"], specs),
            "trigger": "regime",
        },
        "erm_static": {**common, "policy": _policies(models["erm"], specs), "trigger": "never"},
    }
    for name in specs.train.compare:
        # The same ablations for the forward-pass learners: never adapted (no context)
        # and re-read on the calendar window instead of the window since the change.
        other = _policies(models[name], specs)
        runs[f"meta_{name}"] = {**common, "policy": other, "trigger": "regime"}
        runs[f"meta_{name}_frozen"] = {**common, "policy": other, "trigger": "never"}
        runs[f"meta_{name}_calendar"] = {**common, "policy": other, "trigger": "calendar"}
    if regimes is not None:
        runs["meta_oracle"] = {
            **common,
            "policy": pol,
            "trigger": "oracle",
            "known_changes": true_changes(regimes),
        }
    return runs


def per_seed_runs(runs: dict[str, dict]) -> dict[str, dict]:
    """One run per seed of every ensemble run: ``"<name>#<i>"`` -> params."""
    out = {}
    for name, params in runs.items():
        pols = params.get("policy")
        if isinstance(pols, tuple) and len(pols) > 1:
            for i, pol in enumerate(pols):
                out[f"{name}#{i}"] = {**params, "policy": (pol,)}
    return out


def _run_one(
    frames: Frames,
    name: str,
    params: dict,
    costs: CostSpec,
    split: pd.Timestamp,
    end: pd.Timestamp | None,
    features: FeatureSpec,
    tables: dict[str, pd.DataFrame],
) -> tuple[str, BacktestResult, list[str]]:
    # Runs in a worker process: its warnings are returned so the caller can re-issue them.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name in STATIC_STRATEGIES or name == "regime_bound":
            cls = RegimeBound if name == "regime_bound" else STATIC_STRATEGIES[name]
            result = run_backtest(frames, cls, params, costs, trade_start=split, end=end)
        else:
            result = run_backtest(
                frames,
                MetaAdaptiveStrategy,
                params,
                costs,
                trade_start=split,
                end=end,
                # Features are causal, so the rows of the precomputed table are the
                # features of the (possibly end-cut) frame the engine passes here.
                feed_factory=lambda s, f: make_feature_feed(
                    s, f, features, table=tables[s].loc[f.index[0] : f.index[-1]]
                ),
            )
    return name, result, [str(w.message) for w in caught]


def _shared_run(cache: Memory, frames: Frames, name: str, args: tuple) -> tuple:
    """``(key, call)`` of one test run for :func:`backtests.shared_work.in_turn`."""
    if name in STATIC_STRATEGIES:
        return None, lambda: run_once(cache, _run_one, frames, name, *args)
    if "#" in name:
        return seed_run_once(cache, _run_one, frames, name, *args)
    return None, lambda: _run_one(frames, name, *args)


def split_assets(frames: Frames, config: StudyConfig) -> tuple[Frames, Frames]:
    """Frames to train (and tune) on and frames to trade: ``data.held_out`` splits them."""
    held = config.data.held_out
    if not held:
        return frames, frames
    missing = [s for s in held if s not in frames]
    if missing:
        raise DataError(
            f"data.held_out names {missing[0]!r} but the data has no such symbol "
            f"(it has {', '.join(frames)}); fix data.held_out"
        )
    if len(held) >= len(frames):
        raise DataError("data.held_out leaves no symbol to train on; hold out fewer")
    learn = {s: f for s, f in frames.items() if s not in held}
    return learn, {s: frames[s] for s in held}


def run_segment(
    data: StudyData,
    config: StudyConfig,
    split: pd.Timestamp,
    end: pd.Timestamp | None,
    model_path: Path | None = None,
    n_jobs: int = 2,
    progress: bool = True,
    console: Console | None = None,
    cache: Memory | None = None,
) -> Segment:
    """Train on ``[start, split)``, then trade every strategy on ``[split, end)``.

    ``cache`` (a sweep's, see :mod:`backtests.shared_work`) keeps the work that no
    seed changes, the comparators' tuning and test runs, for the sweep's other runs.
    """
    console = console or Console(stderr=True)
    specs = build_specs(config)
    console.print(
        f"[bold]segment[/bold] train < {split.date()}, test {split.date()} .. "
        f"{'end' if end is None else end.date()}"
    )
    learn, trade = split_assets(data.frames, config)
    if trade is not data.frames:
        console.print(f"  zero-shot: train on {', '.join(learn)}; trade {', '.join(trade)}")
    models = train_models(
        learn, config, specs, split, model_path, progress, data.regimes, n_jobs, console, cache
    )
    train_frames = slice_period(learn, None, split)
    first_bar = min(f.index[0] for f in train_frames.values())
    # Every config is scored from the same day, once the slowest one is warm.
    start = max(pd.Timestamp(config.data.start or first_bar), first_bar) + pd.tseries.offsets.BDay(
        config.strategy.warmup_bars
    )
    tuning: dict[str, TuningResult] = {}
    for name in config.comparators.names:
        grid = config.comparators.grids.get(name, DEFAULT_GRIDS[name])
        log.info("tuning %s on the training period", name)
        tuning[name] = tune_once(
            cache, train_frames, name, grid, specs.costs, start, split, n_jobs=n_jobs
        )
        console.print(
            f"  tuned {name} on the training period: {tuning[name].best_params} "
            f"(in-sample Sharpe {tuning[name].best_score:.2f}, "
            f"{tuning[name].n_trials} configs)"
        )
    # The test run is fed `warmup_bars` of history before the split so indicators,
    # detectors and the first adaptation window are warm; nothing before the split is traded.
    test_frames = slice_period(trade, warmup_start(config, split), end)
    runs = meta_runs(config, models, specs, data.regimes)
    jobs = {**runs, **{name: t.best_params for name, t in tuning.items()}}
    if data.regimes is not None:
        rules = fit_regime_rules(train_frames, data.regimes, split, specs.features)
        jobs["regime_bound"] = {
            "rules": rules,
            "regimes": data.regimes,
            "vol_target": config.strategy.vol_target,
        }
    if config.ensemble.per_seed_runs:
        jobs.update(per_seed_runs(runs))
    # Every meta strategy reads the same features: computed once per asset, not once per run.
    tables = {s: feature_frame(f, specs.features) for s, f in test_frames.items()}

    def args(name: str, params: dict) -> tuple:
        # Static rules read no features.
        return (
            params,
            specs.costs,
            split,
            end,
            specs.features,
            {} if name in STATIC_STRATEGIES else tables,
        )

    if cache is None:
        done = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(_run_one)(test_frames, name, *args(name, params))
            for name, params in jobs.items()
        )
    else:
        # A static rule's test run, and each seed's own run, is the same in every run
        # of a sweep over seeds that trades it: each is computed once per sweep.
        done = iter(
            in_turn(
                cache, [_shared_run(cache, test_frames, n, args(n, p)) for n, p in jobs.items()]
            )
        )
    results = {}
    with Progress(
        TextColumn("  test period"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=len(jobs))
        log.info("test period: 0 of %d runs done", len(jobs))
        finished = []
        for item in done:
            finished.append(item)
            bar.update(task, advance=1, description=item[0])
            log.info("test period: %d of %d runs done (%s)", len(finished), len(jobs), item[0])
    seed_results: dict[str, list[BacktestResult]] = {}
    for name, result, notes in sorted(finished, key=lambda item: list(jobs).index(item[0])):
        if "#" in name:
            seed_results.setdefault(name.split("#")[0], []).append(result)
            continue
        results[name] = result
        for note in notes:
            warnings.warn(f"{name} (test period): {note}", stacklevel=2)
    return Segment(
        split,
        end,
        models["meta"][0],
        results,
        tuning,
        {name: t.best_score for name, t in tuning.items()},
        seed_results,
    )

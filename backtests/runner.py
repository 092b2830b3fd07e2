"""The walk-forward study: train on the past, freeze, trade the future, repeat.

One *segment* is: meta-train (and ERM-train) on ``[start, split)``, tune the
static comparators on the same bars, then run every strategy and ablation on
``[split, next_split)`` with the same costs. A plain study is one segment; an
expanding walk-forward (``refit_every``) chains segments, each trained only on
data before its own split. Bars at or after a split never reach its training.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backtests.config import Specs, StudyConfig, build_specs
from backtests.data import StudyData
from feeds.btfeed import make_feature_feed
from feeds.errors import DataError
from feeds.features import FeatureSpec
from feeds.loaders import Frames, slice_period
from metamodels.erm import erm_train, random_init
from metamodels.model import MetaModel
from metamodels.model_io import load_model
from metamodels.trainer import meta_train
from strategies.engine import BacktestResult, CostSpec, run_backtest
from strategies.meta_adaptive import AdaptivePolicy, MetaAdaptiveStrategy
from strategies.static import DEFAULT_GRIDS, STATIC_STRATEGIES
from strategies.tuning import TuningResult, tune_static

log = logging.getLogger(__name__)

META_STRATEGIES = ("meta_adaptive", "meta_frozen", "meta_calendar", "meta_random_init",
                   "erm_static")


@dataclass
class Segment:
    """What one train -> test step produced."""

    split: pd.Timestamp
    end: pd.Timestamp | None
    meta: MetaModel
    results: dict[str, BacktestResult]
    tuning: dict[str, TuningResult]
    train_sharpe: dict[str, float] = field(default_factory=dict)


def parse_period(text: str) -> pd.DateOffset:
    """``"1y"``, ``"6m"``, ``"2w"`` -> a calendar offset for the walk-forward."""
    match = re.fullmatch(r"\s*(\d+)\s*([ymw])\s*", text or "")
    if not match or int(match.group(1)) == 0:
        raise DataError(f"--refit-every {text!r}: use a number and a unit, e.g. 1y, 6m or 2w")
    n, unit = int(match.group(1)), match.group(2)
    return {"y": pd.DateOffset(years=n), "m": pd.DateOffset(months=n),
            "w": pd.DateOffset(weeks=n)}[unit]


def segment_splits(config: StudyConfig, last_bar: pd.Timestamp) -> list[pd.Timestamp]:
    """Split dates of the walk-forward (one date when there is no refit)."""
    splits = [pd.Timestamp(config.data.split)]
    if config.walk_forward.refit_every:
        step = parse_period(config.walk_forward.refit_every)
        while splits[-1] + step <= last_bar:
            splits.append(splits[-1] + step)
    return splits


def adaptive_policy(model: MetaModel, features: FeatureSpec) -> AdaptivePolicy:
    """The numpy view of a model that the strategy adapts and runs."""
    return AdaptivePolicy(model.policy_spec, model.objective_spec, model.numpy_params(),
                          model.numpy_inner_lr(), model.inner_steps, features.names)


def warmup_start(config: StudyConfig, split: pd.Timestamp) -> pd.Timestamp:
    """First bar fed before ``split`` so indicators, detectors and windows are warm."""
    return split - pd.tseries.offsets.BDay(config.strategy.warmup_bars)


def train_meta(frames: Frames, config: StudyConfig, specs: Specs, split: pd.Timestamp,
               progress: bool = True) -> MetaModel:
    """Meta-train on the bars in ``[data.start, split)`` only."""
    train = slice_period(frames, config.data.start, split)
    return meta_train(train, specs.features, specs.task, specs.policy, specs.objective,
                      specs.train, config.data.start, split, progress=progress)


def train_models(frames: Frames, config: StudyConfig, specs: Specs, split: pd.Timestamp,
                 model_path: Path | None, progress: bool) -> tuple[MetaModel, MetaModel, MetaModel]:
    """Meta-learned, ERM and random-init models from bars before ``split`` only."""
    if model_path is not None:
        meta, last_bar = load_model(model_path)
        if last_bar >= split:
            raise DataError(f"{model_path}: trained on bars up to {last_bar.date()}, on or after "
                            f"the split {split.date()}; it has seen the test period. Re-train "
                            "or move --split later")
        if meta.feature_spec != specs.features:
            raise DataError(f"{model_path}: its feature spec differs from the config's "
                            "[features]; use the config it was trained with")
    else:
        meta = train_meta(frames, config, specs, split, progress)
    erm = erm_train(slice_period(frames, config.data.start, split), specs.features, specs.task, specs.policy, specs.objective,
                    specs.train, config.data.start, split, progress=progress)
    # The random init is the very start point of meta-training (same seed), adapted
    # with the meta-model's step sizes: the ablation isolates what meta-learning added.
    rand = random_init(specs.policy, specs.objective, specs.train, inner_lr=meta.inner_lr)
    return meta, erm, rand


def strategy_params(config: StudyConfig) -> dict:
    """MetaAdaptiveStrategy params every meta variant shares (detector, windows, sizing)."""
    s = config.strategy
    return {"detector": config.detector.name,
            "detector_settings": dict(config.detector.settings),
            "min_window": s.min_window, "max_window": s.max_window, "cooldown": s.cooldown,
            "calendar_every": s.calendar_every, "long_only": s.long_only,
            "gross_cap": s.gross_cap, "asset_weight": s.asset_weight,
            "rebalance_threshold": s.rebalance_threshold}


def meta_adaptive_params(config: StudyConfig, meta: MetaModel, specs: Specs) -> dict:
    """Params of ``meta_adaptive`` itself: what a backtest and the paper loop both trade."""
    return {**strategy_params(config), "policy": adaptive_policy(meta, specs.features),
            "trigger": "regime"}


def meta_runs(config: StudyConfig, meta: MetaModel, erm: MetaModel, rand: MetaModel,
              specs: Specs, regimes: dict[str, pd.Series] | None = None) -> dict[str, dict]:
    """Strategy params of the meta policy and its ablations (same sizing, same costs).

    With known regimes (synthetic data) an oracle runs too: the same policy
    re-adapted at the true change dates, the best a detector could do.
    """
    common = strategy_params(config)
    pol = adaptive_policy(meta, specs.features)
    runs = {
        "meta_adaptive": meta_adaptive_params(config, meta, specs),
        "meta_frozen": {**common, "policy": pol, "trigger": "never"},
        "meta_calendar": {**common, "policy": pol, "trigger": "calendar"},
        "meta_random_init": {**common, "policy": adaptive_policy(rand, specs.features),
                             "trigger": "regime"},
        "erm_static": {**common, "policy": adaptive_policy(erm, specs.features),
                       "trigger": "never"},
    }
    if regimes is not None:
        changes = {s: list(r.index[1:][r.to_numpy()[1:] != r.to_numpy()[:-1]])
                   for s, r in regimes.items()}
        runs["meta_oracle"] = {**common, "policy": pol, "trigger": "oracle",
                               "known_changes": changes}
    return runs


def _run_one(frames: Frames, name: str, params: dict, costs: CostSpec, split: pd.Timestamp,
             end: pd.Timestamp | None, features: FeatureSpec
             ) -> tuple[str, BacktestResult, list[str]]:
    # Runs in a worker process: its warnings are returned so the caller can re-issue them.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if name in STATIC_STRATEGIES:
            result = run_backtest(frames, STATIC_STRATEGIES[name], params, costs,
                                  trade_start=split, end=end)
        else:
            result = run_backtest(frames, MetaAdaptiveStrategy, params, costs, trade_start=split,
                                  end=end,
                                  feed_factory=lambda s, f: make_feature_feed(s, f, features))
    return name, result, [str(w.message) for w in caught]


def run_segment(data: StudyData, config: StudyConfig, split: pd.Timestamp,
                end: pd.Timestamp | None, model_path: Path | None = None, n_jobs: int = 2,
                progress: bool = True, console: Console | None = None) -> Segment:
    """Train on ``[start, split)``, then trade every strategy on ``[split, end)``."""
    console = console or Console(stderr=True)
    specs = build_specs(config)
    console.print(f"[bold]segment[/bold] train < {split.date()}, test {split.date()} .. "
                  f"{'end' if end is None else end.date()}")
    meta, erm, rand = train_models(data.frames, config, specs, split, model_path, progress)
    train_frames = slice_period(data.frames, None, split)
    first_bar = min(f.index[0] for f in train_frames.values())
    # Every config is scored from the same day, once the slowest one is warm.
    start = max(pd.Timestamp(config.data.start or first_bar), first_bar) + \
        pd.tseries.offsets.BDay(config.strategy.warmup_bars)
    tuning: dict[str, TuningResult] = {}
    for name in config.comparators.names:
        grid = config.comparators.grids.get(name, DEFAULT_GRIDS[name])
        tuning[name] = tune_static(train_frames, name, grid, specs.costs, start, split,
                                   n_jobs=n_jobs)
        console.print(f"  tuned {name} on the training period: {tuning[name].best_params} "
                      f"(in-sample Sharpe {tuning[name].best_score:.2f}, "
                      f"{tuning[name].n_trials} configs)")
    # The test run is fed `warmup_bars` of history before the split so indicators,
    # detectors and the first adaptation window are warm; nothing before the split is traded.
    test_frames = slice_period(data.frames, warmup_start(config, split), end)
    jobs = {**meta_runs(config, meta, erm, rand, specs, data.regimes),
            **{name: t.best_params for name, t in tuning.items()}}
    done = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        delayed(_run_one)(test_frames, name, params, specs.costs, split, end, specs.features)
        for name, params in jobs.items())
    results = {}
    with Progress(TextColumn("  test period"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  disable=not progress) as bar:
        task = bar.add_task("", total=len(jobs))
        finished = []
        for item in done:
            finished.append(item)
            bar.update(task, advance=1, description=item[0])
    for name, result, notes in sorted(finished, key=lambda item: list(jobs).index(item[0])):
        results[name] = result
        for note in notes:
            warnings.warn(f"{name} (test period): {note}", stacklevel=2)
    return Segment(split, end, meta, results, tuning,
                   {name: t.best_score for name, t in tuning.items()})

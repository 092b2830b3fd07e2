"""Bars per second of MetaAdaptiveStrategy against Backtrader's plain SMA crossover.

Both run in the same process on the same bars (the bundled sample), each
several times, and the medians are compared, so the ratio is meaningful even
on a busy machine where the absolute numbers are not.
"""

from __future__ import annotations

import statistics
import time

import backtrader as bt
import pandas as pd

from metabt.feeds.btfeed import ArrayPandasData, make_feature_feed
from metabt.feeds.features import FeatureSpec
from metabt.feeds.loaders import Frames, load_sample, slice_period
from metabt.feeds.tasks import TaskSpec
from metabt.metamodels.model import TrainConfig
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec
from metabt.metamodels.trainer import meta_train
from metabt.strategies.adaptive_policy import AdaptivePolicy
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy


class PlainSmaCross(bt.Strategy):
    """Backtrader's textbook SMA crossover, the reference speed."""

    params = (("fast", 20), ("slow", 100))

    def __init__(self) -> None:
        self.cross = {
            d: bt.ind.CrossOver(
                bt.ind.SMA(d, period=self.p.fast), bt.ind.SMA(d, period=self.p.slow)
            )
            for d in self.datas
        }

    def next(self) -> None:
        for d, cross in self.cross.items():
            if cross[0] > 0:
                self.order_target_percent(data=d, target=1.0 / len(self.datas))
            elif cross[0] < 0:
                self.order_target_percent(data=d, target=0.0)


def _bars(frames: Frames) -> int:
    return sum(len(f) for f in frames.values())


def _time_sma(frames: Frames) -> float:
    cerebro = bt.Cerebro(stdstats=False)
    for symbol, frame in frames.items():
        cerebro.adddata(ArrayPandasData(dataname=frame, name=symbol))
    cerebro.addstrategy(PlainSmaCross)
    t0 = time.perf_counter()
    cerebro.run()
    return _bars(frames) / (time.perf_counter() - t0)


def _trained_policy(frames: Frames, spec: FeatureSpec, end: pd.Timestamp) -> AdaptivePolicy:
    """A briefly meta-trained policy: a random one trades on every wiggle, which is not
    what a study runs (and would time Backtrader's order machinery, not the strategy)."""
    policy_spec = PolicySpec(n_features=len(spec.names))
    objective = ObjectiveSpec()  # the study default: 10 bp per unit of weight traded
    train = slice_period(frames, None, end)
    model = meta_train(
        train,
        spec,
        TaskSpec(),
        policy_spec,
        objective,
        TrainConfig(meta_steps=60, eval_every=20),
        None,
        end,
        progress=False,
    )
    return AdaptivePolicy(
        policy_spec,
        objective,
        model.numpy_params(),
        model.numpy_inner_lr(),
        model.inner_steps,
        spec.names,
    )


def _time_meta(frames: Frames, spec: FeatureSpec, policy: AdaptivePolicy) -> float:
    t0 = time.perf_counter()
    run_backtest(
        frames,
        MetaAdaptiveStrategy,
        {"policy": policy, "trigger": "regime"},
        CostSpec(),
        feed_factory=lambda s, f: make_feature_feed(s, f, spec),
    )
    return _bars(frames) / (time.perf_counter() - t0)


def bench_strategy_speed(
    repeats: int = 3, start: str = "2008-01-01", end: str = "2012-01-01"
) -> dict:
    """Median bars/s of both strategies on the 8 sample ETFs, and their ratio.

    The meta strategy's time includes building its feed's features, the
    detector on every bar and every adaptation; the SMA's its indicators. The
    policy is meta-trained briefly on the bars before ``start``.
    """
    sample = load_sample()
    frames = slice_period(sample, pd.Timestamp(start), pd.Timestamp(end))
    spec = FeatureSpec()
    policy = _trained_policy(sample, spec, pd.Timestamp(start))
    sma, meta = [], []
    for _ in range(repeats):
        sma.append(_time_sma(frames))
        meta.append(_time_meta(frames, spec, policy))
    sma_speed, meta_speed = statistics.median(sma), statistics.median(meta)
    return {
        "strategy_bars_per_s": meta_speed,
        "sma_bars_per_s": sma_speed,
        "strategy_speed_ratio": meta_speed / sma_speed,
        "strategy_bench_bars": _bars(frames),
    }

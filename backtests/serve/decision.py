"""The one place the service turns a history into a decision: run the backtest, read its last bar.

:func:`decide_last_bar` does not know how the strategy decides. It builds the
strategy params with :func:`backtests.runner.meta_adaptive_params` and runs
:class:`strategies.meta_adaptive.MetaAdaptiveStrategy` through
:func:`strategies.engine.run_backtest` with the model's feature feed and costs,
exactly as ``metabt backtest`` runs ``meta_adaptive``; then it reads the target
weights the engine recorded on the last bar, the alarms the strategy logged and
the adaptation it had in force then. When the strategy's schedule, sizing or features change, the
service's answers change with them, with no second copy to keep in step.

The first traded day is the last bar. That gives the backtest's decision for
any earlier first traded day too: :class:`strategies.base.TargetWeightStrategy`
calls ``target_weights`` on every bar, warm-up included, and records the
decision whatever was ordered, so the weight of a bar does not depend on when
trading started (tests/test_serve.py compares with a backtest over the whole
test period on many dates).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field

import pandas as pd

from metabt.backtests.config import StudyConfig, build_specs
from metabt.backtests.runner import meta_adaptive_params
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.loaders import Frames
from metabt.metamodels.model import MetaModel
from metabt.strategies.engine import run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

# Backtrader keeps state in class attributes and warnings.catch_warnings is process-wide,
# so one backtest runs at a time per process; the work is CPU-bound under the GIL anyway,
# and parallelism comes from uvicorn's worker processes.
_ENGINE_LOCK = threading.Lock()


class _LastPositions(MetaAdaptiveStrategy):
    """MetaAdaptiveStrategy that also keeps what it traded on the last traded bar.

    It only records: the weights and orders are those of its parent class.

    Params:
        positions_out (dict): filled with ``{asset: position}`` of the last traded bar.
        in_force_out (dict): filled with ``{asset: adaptation event or None}``, the
            adaptation whose weights traded then (None: the initial weights).
    """

    params = (("positions_out", None), ("in_force_out", None))  # type: ignore[assignment]

    def target_weights(self) -> dict:
        positions = super().target_weights()
        if self.trading:
            self.p.positions_out.clear()
            self.p.positions_out.update({d._name: float(p) for d, p in positions.items()})
            self.p.in_force_out.clear()
            self.p.in_force_out.update({d._name: st.in_force for d, st in self._state.items()})
        return positions


@dataclass
class Decision:
    """What the strategy decided at the close of the last bar, per asset."""

    asof: pd.Timestamp
    assets: dict[str, dict]
    warnings: list[str] = field(default_factory=list)


def _day(value: object) -> str:
    return pd.Timestamp(value).date().isoformat()


def decide_last_bar(model: MetaModel, frames: Frames, config: StudyConfig) -> Decision:
    """The decision ``metabt backtest`` takes on the last bar of ``frames``.

    Parameters
    ----------
    model : MetaModel
        The meta-learned policy (a loaded checkpoint).
    frames : dict of DataFrame
        Validated canonical bars per asset, all ending on the same date.
    config : StudyConfig
        The study config whose ``[strategy]``, ``[detector]`` and ``[costs]``
        the backtest would use (the checkpoint's, with any request overrides).

    Returns
    -------
    Decision
        Per asset: ``weight`` (target weight for the next open), ``position``
        (what the policy returned before sizing), ``change_detected``,
        ``last_change``, ``last_adaptation``, ``trigger``, ``window``,
        ``loss_before``, ``loss_after`` of the adaptation in force.
    """
    specs = build_specs(config)
    params = meta_adaptive_params(config, model, specs)
    asof = max(f.index[-1] for f in frames.values())
    positions: dict[str, float] = {}
    in_force: dict[str, dict | None] = {}
    with _ENGINE_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_backtest(
            frames,
            _LastPositions,
            {**params, "positions_out": positions, "in_force_out": in_force},
            specs.costs,
            trade_start=asof,
            feed_factory=lambda s, f: make_feature_feed(s, f, specs.features),
        )
    last = result.weights.loc[result.weights["date"] == asof]
    weights = dict(zip(last["asset"], last["weight"].astype(float)))
    today = _day(asof)
    assets: dict[str, dict] = {}
    for symbol in frames:
        # "alarm" events move the start of the regime; the strategy knows which
        # adaptation (if any) its fallback rule left in force.
        changes = [
            e for e in result.events if e.get("asset") == symbol and e.get("trigger") == "alarm"
        ]
        latest = in_force.get(symbol)
        assets[symbol] = {
            "weight": weights.get(symbol, 0.0),
            "position": positions.get(symbol),
            "change_detected": any(_day(e["date"]) == today for e in changes),
            "last_change": _day(changes[-1]["date"]) if changes else None,
            "last_adaptation": None if latest is None else _day(latest["date"]),
            "trigger": None if latest is None else str(latest.get("trigger")),
            "window": 0 if latest is None else int(latest.get("window", 0)),
            "loss_before": None if latest is None else float(latest["loss_before"]),
            "loss_after": None if latest is None else float(latest["loss_after"]),
        }
    return Decision(asof, assets, sorted({str(w.message) for w in caught}))

"""The training objective is the traded P&L: what the objective scores, the engine books.

For one asset and a fixed sequence of positions over a year of bars, the
objective's summed pnl minus costs (in return units, with vol-targeted weights
``p * target_vol / vol``) must match the Backtrader engine's open-to-open P&L
after commission and slippage, up to share rounding and the overnight gap
between the close an order is sized at and the open it fills at.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from metabt.feeds.features import FeatureSpec, compute_labels, trailing_vol
from metabt.metamodels import numpy_policy
from metabt.metamodels.objective import ObjectiveSpec, trading_loss
from metabt.strategies.base import TargetWeightStrategy
from metabt.strategies.engine import CostSpec, run_backtest

TARGET_VOL = 0.004  # small enough that the weight never needs leverage


class FixedPositions(TargetWeightStrategy):
    """Hold a given position per date (vol targeting by the base class)."""

    params = (("positions", None),)

    def target_weights(self) -> dict:
        return {
            d: float(self.p.positions.get(pd.Timestamp(self.datetime.date(0)), 0.0))
            for d in self.datas
        }


@pytest.mark.parametrize("seed", [0, 1])
def test_objective_pnl_after_costs_equals_the_engines(spy, seed):
    frame = spy.iloc[:400]
    start = frame.index[100]
    traded = frame.index[(frame.index >= start)][:252]
    rng = np.random.default_rng(seed)
    # A position path with both slow drift and jumps, so costs matter.
    steps = rng.choice([0.0, 0.0, 0.0, 0.3, -0.3], size=len(traded))
    pos = pd.Series(np.clip(np.cumsum(steps) * 0.5, -1.0, 1.0), index=traded)
    costs = CostSpec(5.0, 5.0)
    result = run_backtest(
        {"SPY": frame},
        FixedPositions,
        {
            "positions": pos.to_dict(),
            "vol_target": TARGET_VOL,
            "asset_weight": 1.0,
            "rebalance_threshold": 0.0,
            "cash_buffer": 0.0,
        },
        costs,
        trade_start=start,
        end=traded[-1] + pd.Timedelta(days=1) + pd.offsets.BDay(2),
    )

    spec = FeatureSpec()
    vol = trailing_vol(frame, spec).reindex(traded).to_numpy()
    y = compute_labels(frame, spec).reindex(traded).to_numpy()  # (open t+2 / open t+1 - 1) / vol
    p = pos.to_numpy()
    objective = ObjectiveSpec(risk=0.0, cost=(costs.commission_bps + costs.slippage_bps) / 1e4)
    n = len(p)

    def loss(spec: ObjectiveSpec) -> float:
        value = float(trading_loss(torch.tensor(p), torch.tensor(y), spec, torch.tensor(1.0 / vol)))
        assert value == pytest.approx(
            float(numpy_policy.trading_loss(p, y, spec, 1.0 / vol)), rel=1e-9, abs=1e-12
        )
        return value

    # trading_loss = -mean(p y) + cost * mean(|d(p / vol)|), in units of target_vol:
    # undo the means (n bars, n - 1 position changes) to get sums in return units.
    gross = -loss(ObjectiveSpec(risk=0.0, cost=0.0)) * n * TARGET_VOL
    cost_sum = (loss(objective) - loss(ObjectiveSpec(risk=0.0, cost=0.0))) * (n - 1) * TARGET_VOL
    # the entry from flat before the first bar is a trade the window does not see
    entry = objective.cost * abs(p[0] / vol[0]) * TARGET_VOL
    net_objective = gross - cost_sum - entry
    # The engine: portfolio P&L over the same open-to-open spans, in return units.
    engine = float(np.log1p(result.returns).sum())
    gross_abs = float(np.sum(np.abs(p * y))) * TARGET_VOL
    print(f"engine {engine:.6f} objective {net_objective:.6f} gross |pnl| {gross_abs:.6f}")
    assert abs(engine - net_objective) <= 0.01 * gross_abs, (engine, net_objective, gross_abs)
    # And the costs really are in there: without them the two would differ by far more.
    assert abs(engine - gross) > 0.01 * gross_abs

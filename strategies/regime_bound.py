"""``regime_bound``: the ceiling of the synthetic lab, a rule that is told the true regime.

No adaptive strategy can know the regime better than the generator that drew
it. This rule is given the true regime of every bar (only synthetic markets
have one) and trades, per regime, the best simple position rule for it: the
sign of the expected next return from a regression of the label (the next
open-to-open return in vol units) on the last vol-scaled return, fitted on the
training period's bars of that regime, pooled over assets, and flat when the
expected return is below ``threshold`` (trading every wiggle loses most of the
edge to costs). It is sized and charged exactly like every other strategy, so
each strategy's Sharpe can be read as a share of it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from metabt.feeds.features import FeatureSpec, compute_labels, log_returns, trailing_vol
from metabt.strategies.base import TargetWeightStrategy


def fit_regime_rules(
    frames: dict[str, pd.DataFrame],
    regimes: dict[str, pd.Series],
    end: pd.Timestamp,
    spec: FeatureSpec | None = None,
) -> dict[int, tuple[float, float]]:
    """Per regime id, ``(intercept, slope)`` of label on vol-scaled last return, bars < ``end``.

    Labels need the next two opens, so only bars whose label's opens lie before
    ``end`` are used: nothing of the test period enters the fit.
    """
    spec = spec or FeatureSpec()
    rows = []
    for symbol, frame in frames.items():
        train = frame.loc[frame.index < end]
        z = (log_returns(train) / trailing_vol(train, spec)).to_numpy()
        y = compute_labels(train, spec).to_numpy()
        k = regimes[symbol].reindex(train.index).to_numpy()
        ok = np.isfinite(z) & np.isfinite(y) & pd.notna(k)
        rows.append(pd.DataFrame({"k": k[ok].astype(int), "z": z[ok], "y": y[ok]}))
    data = pd.concat(rows)
    rules = {}
    for k, part in data.groupby("k"):
        slope, intercept = np.polyfit(part["z"], part["y"], 1)
        rules[int(k)] = (float(intercept), float(slope))
    return rules


class RegimeBound(TargetWeightStrategy):
    """Trade each bar's true regime's rule (synthetic studies only).

    Params:
        rules (dict): regime id -> (intercept, slope) from :func:`fit_regime_rules`.
        regimes (dict): asset name -> Series of the true regime id per date.
        threshold (float): stay flat while |expected next return| is below this [vol units].
        vol_target (float): daily vol a full position is sized to [return units], 0.01.
        rebalance_threshold (float): weight change that triggers an order, 0.02.
    """

    params = (
        ("rules", None),
        ("regimes", None),
        ("threshold", 0.1),
        ("vol_target", 0.01),
        ("rebalance_threshold", 0.02),
    )

    def __init__(self) -> None:
        super().__init__()
        if not self.p.rules or not self.p.regimes:
            raise ValueError("RegimeBound needs rules= and regimes= (synthetic studies only)")
        self._regime = {
            d: {ts.date(): int(k) for ts, k in self.p.regimes[d._name].items()} for d in self.datas
        }

    def target_weights(self) -> dict:
        out = {}
        for d in self.datas:
            k = self._regime[d].get(self.datetime.date(0))
            vol = self.asset_vol(d)
            if k is None or k not in self.p.rules or len(d) < 2 or not math.isfinite(vol):
                out[d] = 0.0
                continue
            a, b = self.p.rules[k]
            expected = a + b * math.log(d.close[0] / d.close[-1]) / vol
            out[d] = math.copysign(1.0, expected) if abs(expected) > self.p.threshold else 0.0
        return out

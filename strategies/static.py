"""Static-parameter comparators: the baselines the meta-adaptive policy must beat.

Each is a :class:`strategies.base.TargetWeightStrategy` whose rule is fixed for
the whole test period. Their parameters are chosen by grid search on the
training period (:mod:`strategies.tuning`) over :data:`DEFAULT_GRIDS`, then
frozen. All read only the current and past bars of each asset.
"""

from __future__ import annotations

import math
from collections import deque

import backtrader as bt
import numpy as np

from metabt.strategies.base import TargetWeightStrategy


class BuyAndHold(TargetWeightStrategy):
    """Long every asset at ``asset_weight`` from ``trade_start`` on; never rebalances.

    Params:
        (only those of TargetWeightStrategy)
    """

    def target_weights(self) -> dict:
        return {d: 1.0 for d in self.datas}


class SmaCross(TargetWeightStrategy):
    """Long while the fast SMA of the close is above the slow one.

    Params:
        fast (int): fast moving-average length, bars.
        slow (int): slow moving-average length, bars; must exceed ``fast``.
        allow_short (bool): short instead of flat while fast <= slow.
    """

    params = (("fast", 20), ("slow", 100), ("allow_short", False))

    def __init__(self) -> None:
        super().__init__()
        if not 0 < self.p.fast < self.p.slow:
            raise ValueError(
                f"SmaCross needs 0 < fast < slow, got fast={self.p.fast}, slow={self.p.slow}"
            )
        self.fast_sma = [bt.ind.SMA(d.close, period=self.p.fast) for d in self.datas]
        self.slow_sma = [bt.ind.SMA(d.close, period=self.p.slow) for d in self.datas]

    def target_weights(self) -> dict:
        off = -1.0 if self.p.allow_short else 0.0
        return {
            d: 1.0 if f[0] > s[0] else off
            for d, f, s in zip(self.datas, self.fast_sma, self.slow_sma)
        }


class Momentum(TargetWeightStrategy):
    """Time-series momentum: hold the sign of the trailing ``lookback``-bar return.

    Params:
        lookback (int): return horizon, bars (close[t] / close[t - lookback] - 1).
        allow_short (bool): short on a negative trailing return instead of flat.
    """

    params = (("lookback", 126), ("allow_short", False))

    def __init__(self) -> None:
        super().__init__()
        if self.p.lookback < 1:
            raise ValueError(f"Momentum needs lookback >= 1, got {self.p.lookback}")
        self.roc = [bt.ind.ROC(d.close, period=self.p.lookback) for d in self.datas]

    def target_weights(self) -> dict:
        out = {}
        for d, r in zip(self.datas, self.roc):
            if r[0] > 0:
                out[d] = 1.0
            elif r[0] < 0 and self.p.allow_short:
                out[d] = -1.0
            else:
                out[d] = 0.0
        return out


class RsiReversion(TargetWeightStrategy):
    """RSI mean reversion: buy when oversold, get out (or short) when overbought.

    Goes long when RSI < ``lower`` and holds until RSI > ``upper``, where it
    goes flat (or short with ``allow_short``, held until RSI < ``lower``).
    Between the bands the previous position is kept.

    Params:
        period (int): Wilder RSI length, bars.
        lower (float): oversold level, RSI points.
        upper (float): overbought level, RSI points; must exceed ``lower``.
        allow_short (bool): short when overbought instead of flat.
    """

    params = (("period", 14), ("lower", 30.0), ("upper", 70.0), ("allow_short", False))

    def __init__(self) -> None:
        super().__init__()
        if not 0 <= self.p.lower < self.p.upper <= 100:
            raise ValueError(
                f"RsiReversion needs 0 <= lower < upper <= 100, got "
                f"lower={self.p.lower}, upper={self.p.upper}"
            )
        # safediv: a flat stretch of prices has no losses; avoid dividing by zero.
        self.rsi = [bt.ind.RSI(d.close, period=self.p.period, safediv=True) for d in self.datas]
        self._state = {d: 0.0 for d in self.datas}

    def target_weights(self) -> dict:
        for d, r in zip(self.datas, self.rsi):
            if r[0] < self.p.lower:
                self._state[d] = 1.0
            elif r[0] > self.p.upper:
                self._state[d] = -1.0 if self.p.allow_short else 0.0
        return dict(self._state)


class BuyAndHoldVT(TargetWeightStrategy):
    """Long every asset, sized by volatility targeting (rebalanced as vol moves).

    Params:
        vol_target (float): daily vol a full position is sized to [return units], 0.01.
        rebalance_threshold (float): weight change that triggers an order, 0.02.
    """

    params = (("vol_target", 0.01), ("rebalance_threshold", 0.02))

    def target_weights(self) -> dict:
        return {d: 1.0 for d in self.datas}


class TsmomVT(TargetWeightStrategy):
    """Volatility-targeted time-series momentum (Moskowitz, Ooi, Pedersen 2012): hold the
    sign of the trailing ``lookback``-bar return, sized to ``vol_target``.

    Params:
        lookback (int): return horizon, bars.
        allow_short (bool): short on a negative trailing return instead of flat.
        vol_target (float): daily vol a full position is sized to [return units], 0.01.
        rebalance_threshold (float): weight change that triggers an order, 0.02.
    """

    params = (
        ("lookback", 252),
        ("allow_short", True),
        ("vol_target", 0.01),
        ("rebalance_threshold", 0.02),
    )

    def __init__(self) -> None:
        super().__init__()
        if self.p.lookback < 1:
            raise ValueError(f"TsmomVT needs lookback >= 1, got {self.p.lookback}")
        self.roc = [bt.ind.ROC(d.close, period=self.p.lookback) for d in self.datas]

    def target_weights(self) -> dict:
        off = -1.0 if self.p.allow_short else 0.0
        return {d: 1.0 if r[0] > 0 else off for d, r in zip(self.datas, self.roc)}


class AutocorrRule(TargetWeightStrategy):
    """Trade the last return's sign times the sign of the rolling lag-1 autocorrelation:
    follow the last move in a trending regime, fade it in a mean-reverting one.

    Params:
        window (int): bars of the rolling autocorrelation of close-to-close log returns.
        min_abs (float): stay flat while |autocorrelation| is below this.
        vol_target (float): daily vol a full position is sized to [return units], 0.01.
        rebalance_threshold (float): weight change that triggers an order, 0.02.
    """

    params = (("window", 60), ("min_abs", 0.0), ("vol_target", 0.01), ("rebalance_threshold", 0.02))

    def __init__(self) -> None:
        super().__init__()
        if self.p.window < 3:
            raise ValueError(f"AutocorrRule needs window >= 3, got {self.p.window}")
        self._returns: dict[bt.DataBase, deque[float]] = {
            d: deque(maxlen=self.p.window + 1) for d in self.datas
        }
        self._seen = {d: 0 for d in self.datas}

    def target_weights(self) -> dict:
        out = {}
        for d in self.datas:
            rets = self._returns[d]
            if len(d) != self._seen[d] and len(d) > 1:
                self._seen[d] = len(d)
                rets.append(math.log(d.close[0] / d.close[-1]))
            if len(rets) <= self.p.window:
                out[d] = 0.0
                continue
            r = np.fromiter(rets, float)
            a, b = r[1:], r[:-1]
            sd = a.std() * b.std()
            rho = float(((a - a.mean()) * (b - b.mean())).mean() / sd) if sd > 0 else 0.0
            out[d] = float(np.sign(rho) * np.sign(r[-1])) if abs(rho) >= self.p.min_abs else 0.0
        return out


#: Strategy name (as used in configs and reports) -> class.
STATIC_STRATEGIES: dict[str, type[TargetWeightStrategy]] = {
    "buy_and_hold": BuyAndHold,
    "sma_cross": SmaCross,
    "momentum": Momentum,
    "rsi_reversion": RsiReversion,
    "buy_and_hold_vt": BuyAndHoldVT,
    "tsmom_vt": TsmomVT,
    "autocorr": AutocorrRule,
}

#: In-sample search space per strategy: param -> candidate values (full product).
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "buy_and_hold": {},
    "sma_cross": {"fast": [10, 20, 50], "slow": [100, 200], "allow_short": [False, True]},
    "momentum": {"lookback": [21, 63, 126, 252], "allow_short": [False, True]},
    "rsi_reversion": {
        "period": [7, 14],
        "lower": [25.0, 30.0],
        "upper": [70.0, 75.0],
        "allow_short": [False, True],
    },
    "buy_and_hold_vt": {},
    "tsmom_vt": {"lookback": [21, 63, 126, 252], "allow_short": [False, True]},
    "autocorr": {"window": [20, 60, 120], "min_abs": [0.0, 0.1]},
}

"""The meta-adaptive strategy: re-adapt a meta-learned policy on the window since the regime began.

Per asset, every bar: the bar's return (or the policy's own loss) goes to an
online change-point detector, which decides **where the current regime's window
starts**. Every ``readapt_every`` bars the meta-learned initial weights are
adapted by a few SGD steps on the labelled bars since that start, clamped to
``[min_window, max_window]``. Right after a change, until ``min_window`` labels
of the new regime exist, the strategy trades the unadapted meta-learned weights
(the fallback rule): a window that still holds the old regime would fit the
wrong market. The adapted policy maps each bar's features to a position in
[-1, 1]; the base class sizes it by volatility targeting and trades it at the
next open.

The same class, with other ``trigger`` / ``policy`` values, gives the
ablations: no adaptation (``trigger="never"``), re-adaptation on a fixed
calendar on the last ``calendar_window`` bars (``trigger="calendar"``), the
true change dates (``trigger="oracle"``, synthetic data), adaptation from a
random initialisation (a random ``policy``) and the ERM network (an ERM
``policy``, ``"never"``). ``policy`` may be a tuple of policies (e.g. one per
meta-training seed): each adapts on the same window and their positions are
averaged.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd

from metabt.feeds.btfeed import VOL_LINE
from metabt.feeds.features import LABEL_DELAY, label_from_opens
from metabt.metamodels.fast_adapt import NumpyLR, fast_adapt, window_loss
from metabt.metamodels.model import length_scale
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import NumpyParams, PolicySpec, numpy_positions
from metabt.strategies.base import TargetWeightStrategy
from metabt.strategies.detectors import AnyDetector, make_detector

TRIGGERS = ("regime", "calendar", "never", "oracle")
# The policy's position moves a little on every bar; re-ordering each wiggle
# pays costs for nothing (and is most of a backtest's run time). A change of
# 0.02 in portfolio weight is 16% of a full position in an 8-asset basket.
DEFAULT_REBALANCE_THRESHOLD = 0.02


@dataclass(frozen=True)
class AdaptivePolicy:
    """Everything the strategy needs to adapt and run a policy, in numpy.

    Attributes
    ----------
    params : dict of ndarray
        The initial weights every adaptation starts from (float64).
    inner_lr : float or dict of ndarray
        Adaptation step size (per parameter for Meta-SGD).
    inner_steps : int
        SGD steps per adaptation (0 = never change the weights).
    feature_names : tuple of str
        Feed lines to read, in the order the network expects.
    lr_length_power : float
        The step is ``inner_lr * (n / 60) ** lr_length_power`` on an ``n``-bar window.
    """

    policy_spec: PolicySpec
    objective_spec: ObjectiveSpec
    params: NumpyParams
    inner_lr: NumpyLR
    inner_steps: int
    feature_names: tuple[str, ...]
    lr_length_power: float = 0.0

    def step_size(self, n: int) -> NumpyLR:
        """The inner step size(s) for a window of ``n`` bars."""
        scale = float(length_scale(n, self.lr_length_power))
        if isinstance(self.inner_lr, dict):
            return {k: v * scale for k, v in self.inner_lr.items()}
        return float(self.inner_lr) * scale

    def adapt(
        self, x: np.ndarray, y: np.ndarray, inv_vol: np.ndarray | None = None
    ) -> tuple[NumpyParams, float, float]:
        """Adapted weights and the support loss before and after."""
        spec, obj = self.policy_spec, self.objective_spec
        before = window_loss(self.params, x, y, spec, obj, inv_vol)
        adapted = fast_adapt(
            self.params, x, y, self.inner_steps, self.step_size(len(y)), spec, obj, inv_vol
        )
        return adapted, before, window_loss(adapted, x, y, spec, obj, inv_vol)


class _AssetState:
    """Per-asset memory: recent features and labels, detector, current weights."""

    def __init__(self, detector: AnyDetector, params: list[NumpyParams], keep: int) -> None:
        self.detector = detector
        self.params = params
        # The last LABEL_DELAY (feature row, 1/vol) pairs, whose labels are not known yet.
        self.pending: deque[tuple[np.ndarray, float]] = deque(maxlen=LABEL_DELAY)
        # Labelled rows available for adaptation: features, label, 1/vol, bar number.
        self.support_x: deque[np.ndarray] = deque(maxlen=keep)
        self.support_y: deque[float] = deque(maxlen=keep)
        self.support_a: deque[float] = deque(maxlen=keep)
        self.support_bar: deque[int] = deque(maxlen=keep)
        self.support_when: deque[float] = deque(maxlen=keep)  # backtrader date numbers
        self.seen = 0  # len(data) at the last processed bar
        self.bar = -1  # this asset's bar number (0 = its first bar in the run)
        self.regime_start = 0  # bar number where the current regime is estimated to start
        self.position: float | None = None
        self.bars_since_adapt = 0
        self.adapted = False  # False while the fallback (initial) weights trade
        self.loss_ref = (0.0, 1.0)  # mean, sd of the adapted policy's per-bar support loss


class MetaAdaptiveStrategy(TargetWeightStrategy):
    """Trade a meta-learned policy, re-adapted on the window since the last regime change.

    Params:
        policy (AdaptivePolicy | tuple): initial weights, inner steps / LR, feature
            names; a tuple of policies trades their average position.
        trigger (str): where windows start: ``"regime"`` (at the detector's estimate
            of the change), ``"calendar"`` (always the last ``calendar_window`` bars),
            ``"never"`` (no adaptation) or ``"oracle"`` (at the true change dates in
            ``known_changes``; synthetic studies only).
        known_changes (dict): asset name -> dates of true regime changes (oracle).
        detector (str): ``"bocpd_ar"``, ``"loss"``, ``"bocpd"`` or ``"cusum"``
            (see strategies.detectors).
        detector_settings (dict): settings of that detector.
        min_window (int): fewest new-regime labelled bars an adaptation uses [bars];
            before that many exist, the unadapted initial weights trade.
        max_window (int): most labelled bars an adaptation uses [bars].
        readapt_every (int): bars between re-adaptations [bars].
        calendar_window (int): window of the calendar ablation [bars].
        long_only (bool): clip positions at 0 whatever the policy says.
        vol_target (float): daily vol a full position is sized to [return units], 0.01.
        rebalance_threshold (float): as in TargetWeightStrategy, default 0.02 here.
        (plus the TargetWeightStrategy params: trade_start, gross_cap, asset_weight, ...)
    """

    params = (
        ("policy", None),
        ("trigger", "regime"),
        ("detector", "bocpd_ar"),
        ("detector_settings", None),
        ("min_window", 20),
        ("max_window", 120),
        ("readapt_every", 5),
        ("calendar_window", 60),
        ("long_only", False),
        ("known_changes", None),
        ("vol_target", 0.01),
        ("rebalance_threshold", DEFAULT_REBALANCE_THRESHOLD),
    )

    def __init__(self) -> None:
        super().__init__()
        pols = self.p.policy
        if pols is None:
            raise ValueError("MetaAdaptiveStrategy needs policy=AdaptivePolicy(...)")
        self._policies: tuple[AdaptivePolicy, ...] = (
            tuple(pols) if isinstance(pols, (tuple, list)) else (pols,)
        )
        names = self._policies[0].feature_names
        if any(p.feature_names != names for p in self._policies):
            raise ValueError("every policy of an ensemble must read the same features")
        if self.p.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.p.trigger!r}")
        if not 2 <= self.p.min_window <= self.p.max_window:
            raise ValueError(
                f"need 2 <= min_window <= max_window, got {self.p.min_window}, {self.p.max_window}"
            )
        if self.p.readapt_every < 1 or self.p.calendar_window < 2:
            raise ValueError(
                "need readapt_every >= 1 and calendar_window >= 2, got "
                f"{self.p.readapt_every}, {self.p.calendar_window}"
            )
        settings = dict(self.p.detector_settings or {})
        keep = max(self.p.max_window, self.p.calendar_window)
        self._lines = {d: [getattr(d.lines, n) for n in names] for d in self.datas}
        self._vol = {d: getattr(d.lines, VOL_LINE) for d in self.datas}
        self._state = {
            d: _AssetState(make_detector(self.p.detector, **settings), self._initial(), keep)
            for d in self.datas
        }
        self.n_adaptations = 0
        self._changes = {
            name: {pd.Timestamp(t).date() for t in dates}
            for name, dates in (self.p.known_changes or {}).items()
        }

    def _initial(self) -> list[NumpyParams]:
        return [p.params for p in self._policies]

    def asset_vol(self, d: bt.LineSeries) -> float:
        # The feed's vol line is the very vol the tasks and labels were scaled by.
        return float(self._vol[d].array[self._vol[d].idx])

    # -- per bar -------------------------------------------------------------
    def _observe(self, d: bt.LineSeries, st: _AssetState) -> np.ndarray | None:
        """Record this bar's features and the label that just became known.

        A feed with a missing date still advances one bar per own bar, so
        ``d.open[-1]`` is this asset's previous bar.
        """
        # line.array[line.idx] is line[0] without Backtrader's per-call overhead
        # (this runs for every feature of every asset on every bar).
        x = np.array([line.array[line.idx] for line in self._lines[d]])
        vol = self.asset_vol(d)
        if len(st.pending) == LABEL_DELAY:
            # The label of bar t-2 (open t-1 -> open t) is known now, at bar t.
            label = float(label_from_opens(d.open[-1], d.open[0], self._vol[d][-LABEL_DELAY]))
            old, inv_vol = st.pending[0]
            if math.isfinite(label) and np.all(np.isfinite(old)):
                st.support_x.append(old)
                st.support_y.append(label)
                st.support_a.append(inv_vol)
                st.support_bar.append(st.bar - LABEL_DELAY)
                st.support_when.append(d.datetime[-LABEL_DELAY])
                self._feed_loss_detector(d, st, old, label)
        st.pending.append((x, 1.0 / vol))
        return x if np.all(np.isfinite(x)) else None

    def _feed_loss_detector(
        self, d: bt.LineSeries, st: _AssetState, x: np.ndarray, label: float
    ) -> None:
        # The loss detector watches how the trading policy does on each newly labelled
        # bar against what it scored on its own support window. In an ensemble the first
        # member stands for all: they adapt on the same windows.
        if getattr(st.detector, "input_kind", "return") != "loss" or not st.adapted:
            return
        pol = self._policies[0]
        pnl = float(numpy_positions(st.params[0], x, pol.policy_spec)) * label
        loss = -pnl + pol.objective_spec.risk * pnl * pnl
        mean, sd = st.loss_ref
        if st.detector.update((loss - mean) / sd):
            start = st.regime_start
            st.regime_start = st.bar - LABEL_DELAY - int(st.detector.run_length) + 1
            self._moved(d, st, start)

    def _detect(self, d: bt.LineSeries, st: _AssetState) -> None:
        """Move the estimated start of the current regime when a change is seen.

        Every move is logged as an ``"alarm"`` event whose ``window`` is the bars
        since the estimated start.
        """
        start = st.regime_start
        if self.p.trigger == "oracle":
            if self.datetime.date(0) in self._changes.get(d._name, ()):
                st.regime_start = st.bar
        elif self.p.trigger == "regime" and len(d) > 1:
            kind = getattr(st.detector, "input_kind", "return")
            if kind != "loss":
                ret = math.log(d.close[0] / d.close[-1])
                if kind == "scaled_return":
                    ret /= self._vol[d][-1]
                if math.isfinite(ret) and st.detector.update(ret):
                    st.regime_start = st.bar - int(st.detector.run_length) + 1
        self._moved(d, st, start)

    def _moved(self, d: bt.LineSeries, st: _AssetState, start: int) -> None:
        """Log a new regime start and drop the weights fitted to the old regime."""
        if st.regime_start == start:
            return
        self.events.append(
            {
                "date": self.datetime.date(0),
                "asset": d._name,
                "trigger": "alarm",
                "window": st.bar - st.regime_start + 1,
                "loss_before": math.nan,
                "loss_after": math.nan,
            }
        )
        if st.adapted:
            # Fall back to the initial weights until the new regime has min_window labels.
            st.params, st.adapted = self._initial(), False

    def _adapt(self, d: bt.LineSeries, st: _AssetState, n: int) -> None:
        x = np.array(list(st.support_x)[-n:])
        y = np.array(list(st.support_y)[-n:])
        a = np.array(list(st.support_a)[-n:])
        results = [pol.adapt(x, y, a) for pol in self._policies]
        st.params = [r[0] for r in results]
        st.bars_since_adapt, st.adapted = 0, True
        self.n_adaptations += 1
        pol = self._policies[0]
        pnl = numpy_positions(st.params[0], x, pol.policy_spec) * y
        per_bar = -pnl + pol.objective_spec.risk * pnl * pnl
        st.loss_ref = (float(per_bar.mean()), max(float(per_bar.std()), 1e-6))
        self.events.append(
            {
                "date": self.datetime.date(0),
                "asset": d._name,
                "trigger": self.p.trigger,
                "window": n,
                "start": bt.num2date(st.support_when[-n]).date(),
                "loss_before": float(np.mean([r[1] for r in results])),
                "loss_after": float(np.mean([r[2] for r in results])),
            }
        )

    def window_length(self, st: _AssetState) -> int:
        """Labelled bars the next adaptation uses (0 = trade the fallback weights).

        ``regime`` / ``oracle``: the labelled bars at or after the regime's start, at
        most ``max_window``; 0 while fewer than ``min_window`` exist. ``calendar``: the
        last ``calendar_window`` labelled bars. ``never``: 0.
        """
        have = len(st.support_y)
        if self.p.trigger == "never" or have < self.p.min_window:
            return 0
        if self.p.trigger == "calendar":
            return min(self.p.calendar_window, have)
        # support_bar is increasing: the bars at or after the regime's start are its tail.
        new = len(st.support_bar) - bisect_left(st.support_bar, st.regime_start)
        return min(new, self.p.max_window) if new >= self.p.min_window else 0

    def _schedule(self, d: bt.LineSeries, st: _AssetState) -> None:
        st.bars_since_adapt += 1
        # Re-adapt on the cadence, and as soon as a fallback can end.
        if st.adapted and st.bars_since_adapt < self.p.readapt_every:
            return
        n = self.window_length(st)
        if n:
            self._adapt(d, st, n)

    def target_weights(self) -> dict:
        out = {}
        for d in self.datas:
            st = self._state[d]
            if len(d) != st.seen:  # a feed with no bar on this date did not move
                st.seen = len(d)
                st.bar += 1
                x = self._observe(d, st)
                self._detect(d, st)
                self._schedule(d, st)
                st.position = None
                if x is not None:
                    pos = float(
                        np.mean(
                            [
                                numpy_positions(p, x, pol.policy_spec)
                                for p, pol in zip(st.params, self._policies)
                            ]
                        )
                    )
                    st.position = max(pos, 0.0) if self.p.long_only else pos
            if st.position is not None:
                out[d] = st.position
        return out

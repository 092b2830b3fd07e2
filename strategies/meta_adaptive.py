"""The meta-adaptive strategy: re-adapt a meta-learned policy when the regime changes.

Per asset, every bar: the bar's return goes to an online change-point
detector; when it fires (or at the start, once ``min_window`` labelled bars
exist) the meta-learned initial weights are adapted by a few SGD steps on the
bars since the estimated change, clamped to ``[min_window, max_window]``; the
adapted policy then maps each bar's features to a target position, which the
base class trades at the next open.

The same class, with other ``trigger`` / ``policy`` values, gives the
ablations: no adaptation (``trigger="never"``), re-adaptation on a fixed
calendar (``trigger="calendar"``), adaptation from a random initialisation
(a random ``policy``) and the ERM network (an ERM ``policy``, ``"never"``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import backtrader as bt
import numpy as np
import pandas as pd

from feeds.btfeed import VOL_LINE
from feeds.features import LABEL_DELAY, label_from_opens
from metamodels.fast_adapt import NumpyLR, fast_adapt, window_loss
from metamodels.objective import ObjectiveSpec
from metamodels.policy import NumpyParams, PolicySpec, numpy_positions
from strategies.base import TargetWeightStrategy
from strategies.detectors import make_detector

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
    """

    policy_spec: PolicySpec
    objective_spec: ObjectiveSpec
    params: NumpyParams
    inner_lr: NumpyLR
    inner_steps: int
    feature_names: tuple[str, ...]

    def adapt(self, x: np.ndarray, y: np.ndarray) -> tuple[NumpyParams, float, float]:
        """Adapted weights and the support loss before and after."""
        before = window_loss(self.params, x, y, self.policy_spec, self.objective_spec)
        adapted = fast_adapt(self.params, x, y, self.inner_steps, self.inner_lr,
                             self.policy_spec, self.objective_spec)
        after = window_loss(adapted, x, y, self.policy_spec, self.objective_spec)
        return adapted, before, after


class _AssetState:
    """Per-asset memory: recent features and labels, detector, current weights."""

    def __init__(self, detector: object, params: NumpyParams, keep: int) -> None:
        self.detector = detector
        self.params = params
        # The last LABEL_DELAY feature rows, whose labels are not known yet.
        self.pending: deque[np.ndarray] = deque(maxlen=LABEL_DELAY)
        # Labelled rows (features, label) available for adaptation.
        self.support_x: deque[np.ndarray] = deque(maxlen=keep)
        self.support_y: deque[float] = deque(maxlen=keep)
        self.seen = 0  # len(data) at the last processed bar
        self.position: float | None = None
        self.bars_since_adapt = 0
        self.adapted_once = False
        self.follow_up: int | None = None  # labelled bars to wait for a full new-regime window


class MetaAdaptiveStrategy(TargetWeightStrategy):
    """Trade a meta-learned policy, re-adapted on regime changes.

    Params:
        policy (AdaptivePolicy): initial weights, inner steps / LR, feature names.
        trigger (str): ``"regime"`` (detector alarms), ``"calendar"`` (every
            ``calendar_every`` bars), ``"never"`` (no adaptation) or ``"oracle"``
            (the true change dates in ``known_changes``; synthetic studies only).
        known_changes (dict): asset name -> dates of true regime changes (oracle).
        detector (str): ``"cusum"`` or ``"bocpd"`` (see strategies.detectors).
        detector_settings (dict): settings of that detector.
        min_window (int): fewest labelled bars an adaptation uses.
        max_window (int): most labelled bars an adaptation uses.
        cooldown (int): bars after an adaptation during which alarms are ignored.
        calendar_every (int): bars between adaptations when trigger is ``"calendar"``.
        long_only (bool): clip positions at 0 whatever the policy says.
        rebalance_threshold (float): as in TargetWeightStrategy, default 0.02 here.
        (plus the TargetWeightStrategy params: trade_start, gross_cap, asset_weight, ...)
    """

    params = (
        ("policy", None),
        ("trigger", "regime"),
        ("detector", "cusum"),
        ("detector_settings", None),
        ("min_window", 20),
        ("max_window", 120),
        ("cooldown", 5),
        ("calendar_every", 20),
        ("long_only", False),
        ("known_changes", None),
        ("rebalance_threshold", DEFAULT_REBALANCE_THRESHOLD),
    )

    def __init__(self) -> None:
        super().__init__()
        pol: AdaptivePolicy = self.p.policy
        if pol is None:
            raise ValueError("MetaAdaptiveStrategy needs policy=AdaptivePolicy(...)")
        if self.p.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.p.trigger!r}")
        if not 2 <= self.p.min_window <= self.p.max_window:
            raise ValueError(f"need 2 <= min_window <= max_window, got "
                             f"{self.p.min_window}, {self.p.max_window}")
        settings = dict(self.p.detector_settings or {})
        self._lines = {d: [getattr(d.lines, n) for n in pol.feature_names] for d in self.datas}
        self._vol = {d: getattr(d.lines, VOL_LINE) for d in self.datas}
        self._state = {d: _AssetState(make_detector(self.p.detector, **settings), pol.params,
                                      self.p.max_window) for d in self.datas}
        self.n_adaptations = 0
        self._changes = {name: {pd.Timestamp(t).date() for t in dates}
                         for name, dates in (self.p.known_changes or {}).items()}

    # -- per bar -------------------------------------------------------------
    def _observe(self, d: bt.LineSeries, st: _AssetState) -> np.ndarray | None:
        """Record this bar's features and the label that just became known."""
        # line.array[line.idx] is line[0] without Backtrader's per-call overhead
        # (this runs for every feature of every asset on every bar).
        x = np.array([line.array[line.idx] for line in self._lines[d]])
        if len(st.pending) == LABEL_DELAY:
            # The label of bar t-2 (open t-1 -> open t) is known now, at bar t.
            label = float(label_from_opens(d.open[-1], d.open[0], self._vol[d][-LABEL_DELAY]))
            old = st.pending[0]
            if math.isfinite(label) and np.all(np.isfinite(old)):
                st.support_x.append(old)
                st.support_y.append(label)
        st.pending.append(x)
        return x if np.all(np.isfinite(x)) else None

    def _adapt(self, d: bt.LineSeries, st: _AssetState, trigger: str, since: int) -> None:
        n = int(min(max(since, self.p.min_window), self.p.max_window, len(st.support_y)))
        x = np.array(list(st.support_x)[-n:])
        y = np.array(list(st.support_y)[-n:])
        st.params, before, after = self.p.policy.adapt(x, y)
        st.bars_since_adapt = 0
        st.adapted_once = True
        self.n_adaptations += 1
        self.events.append({"date": self.datetime.date(0), "asset": d._name, "trigger": trigger,
                            "window": n, "loss_before": before, "loss_after": after})

    def _maybe_adapt(self, d: bt.LineSeries, st: _AssetState, ret: float) -> None:
        alarm = st.detector.update(ret) if math.isfinite(ret) else False
        if self.p.trigger == "oracle":
            alarm = self.datetime.date(0) in self._changes.get(d._name, ())
        st.bars_since_adapt += 1
        ready = len(st.support_y) >= self.p.min_window
        if self.p.trigger == "never" or not ready:
            return
        if not st.adapted_once:
            self._adapt(d, st, "start", len(st.support_y))
        elif self.p.trigger == "calendar":
            if st.bars_since_adapt >= self.p.calendar_every:
                self._adapt(d, st, "calendar", st.bars_since_adapt)
        elif alarm and st.bars_since_adapt > self.p.cooldown:
            since = 0 if self.p.trigger == "oracle" else int(st.detector.run_length)
            self._adapt(d, st, self.p.trigger, since)
            # After an early alarm the window holds old-regime bars; adapt once
            # more when a full min_window of the new regime has been labelled
            # (labels arrive LABEL_DELAY bars after their bar).
            wait = self.p.min_window + LABEL_DELAY - since
            st.follow_up = wait if wait > 0 else None
        elif st.follow_up is not None and st.bars_since_adapt >= st.follow_up:
            st.follow_up = None
            self._adapt(d, st, f"{self.p.trigger}_follow_up", self.p.min_window)

    def target_weights(self) -> dict:
        pol: AdaptivePolicy = self.p.policy
        out = {}
        for d in self.datas:
            st = self._state[d]
            if len(d) != st.seen:  # a feed with no bar on this date did not move
                st.seen = len(d)
                x = self._observe(d, st)
                ret = math.log(d.close[0] / d.close[-1]) if len(d) > 1 else math.nan
                self._maybe_adapt(d, st, ret)
                st.position = None
                if x is not None:
                    pos = float(numpy_positions(st.params, x, pol.policy_spec))
                    st.position = max(pos, 0.0) if self.p.long_only else pos
            if st.position is not None:
                out[d] = st.position
        return out

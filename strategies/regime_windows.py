"""Where each asset's current regime starts, and which labelled bars adapt to it.

The detector does not decide *whether* to adapt but *where the window starts*:
every alarm moves the asset's estimated regime start (the true change date for
the oracle) and logs an ``"alarm"`` event. Until the new regime has
``min_window`` labels, the strategy's ``fallback`` trades: the unadapted initial
weights (the weights fitted to the old regime are dropped), a flat position, or
those old weights kept. :meth:`RegimeWindows.window_length`
turns that start into the next adaptation's window.

:class:`RegimeWindows` is the part of
:class:`strategies.meta_adaptive.MetaAdaptiveStrategy` that does this; it uses
the strategy's params, per-asset state, detector bank and weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import backtrader as bt
import numpy as np

from metabt.feeds.features import LABEL_DELAY
from metabt.metamodels import numpy_policy
from metabt.metamodels.numpy_policy import NumpyParams
from metabt.strategies.asset_state import AssetState

# An asset with a new bar: its data feed, its memory and this bar's features (None if missing).
Moved = tuple[bt.LineSeries, AssetState, "np.ndarray | None"]


class RegimeWindows:
    """Regime starts and adaptation windows of MetaAdaptiveStrategy (a mixin of it)."""

    # Set by MetaAdaptiveStrategy (and Backtrader) before the first bar.
    p: Any
    datas: list
    datetime: Any
    events: list[dict]
    _policies: tuple
    _state: dict
    _detectors: Any
    _slot: dict
    _changes: dict
    asset_params: Callable[[bt.LineSeries], list[NumpyParams]]
    _set_params: Callable[[bt.LineSeries, list[NumpyParams]], None]
    _initial: Callable[[], list[NumpyParams]]

    def _observe(self, d: bt.LineSeries, st: AssetState) -> np.ndarray | None:
        """Record this bar's features and the label that just became known."""
        x, labelled = st.observe(d)
        if labelled is not None:
            self._feed_loss_detector(d, st, *labelled)
        return x

    def _feed_loss_detector(
        self, d: bt.LineSeries, st: AssetState, x: np.ndarray, label: float
    ) -> None:
        # The loss detector watches how the trading policy does on each newly labelled
        # bar against what it scored on its own support window. In an ensemble the first
        # member stands for all: they adapt on the same windows.
        if st.detector is None or not st.adapted:
            return
        pol = self._policies[0]
        pnl = float(numpy_policy.positions(self.asset_params(d)[0], x, pol.policy_spec)) * label
        loss = -pnl + pol.objective_spec.risk * pnl * pnl
        mean, sd = st.loss_ref
        if st.detector.update((loss - mean) / sd):
            start = st.regime_start
            st.regime_start = st.bar - LABEL_DELAY - int(st.detector.run_length) + 1
            self._moved(d, st, start)

    def _detect(self, moved: Sequence[Moved]) -> None:
        """Move the estimated start of each asset's current regime when a change is seen.

        Every move is logged as an ``"alarm"`` event whose ``window`` is the bars
        since the estimated start.
        """
        starts = [st.regime_start for _, st, _ in moved]
        if self.p.trigger == "oracle":
            today = self.datetime.date(0)
            for d, st, _ in moved:
                if today in self._changes.get(d._name, ()):
                    st.regime_start = st.bar
        elif self.p.trigger == "regime" and self._detectors is not None:
            self._detect_returns(moved)
        for (d, st, _), start in zip(moved, starts):
            self._moved(d, st, start)

    def _detect_returns(self, moved: Sequence[Moved]) -> None:
        bank = self._detectors
        assert bank is not None
        scaled = bank.input_kind == "scaled_return"
        x = np.zeros(len(self.datas))
        active = np.zeros(len(self.datas), dtype=bool)
        for d, st, _ in moved:
            if len(d) > 1:
                ret = math.log(d.close[0] / d.close[-1])
                if scaled:
                    ret /= st.vols[len(d) - 2]
                if math.isfinite(ret):
                    x[self._slot[d]], active[self._slot[d]] = ret, True
        fired = bank.update(x, active)
        if fired.any():
            run = bank.run_length
            for d, st, _ in moved:
                if fired[self._slot[d]]:
                    st.regime_start = st.bar - int(run[self._slot[d]]) + 1

    def _moved(self, d: bt.LineSeries, st: AssetState, start: int) -> None:
        """Log a new regime start and drop the weights fitted to the old regime
        (unless the fallback keeps them)."""
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
        if st.adapted and self.p.fallback != "previous":
            # Fall back to the initial weights (flat: see _positions) until the new
            # regime has min_window labels.
            self._set_params(d, self._initial())
            st.adapted, st.deferred, st.in_force = False, None, None

    def window_length(self, st: AssetState) -> int:
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
        new = st.labelled_since(st.regime_start)
        return min(new, self.p.max_window) if new >= self.p.min_window else 0

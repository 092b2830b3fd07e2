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

Per bar the work is done for all assets at once: one detector bank update, one
batched adaptation per window length (every asset and member due), one forward
pass per member; each gives what the asset-by-asset code gives
(``tests/test_batched_paths.py``, ``tests/test_meta_strategy_reference.py``).

Warm-up bars (before ``trade_start``) trade nothing, so there the strategy keeps
its schedule but defers the arithmetic: an adaptation that falls due is queued
with its window, and only the ones still in force when trading starts are
computed then, exactly as they would have been (the same batch, the same
inputs); positions are not computed at all. A backtest then skips about a
sixth of its adaptations, and ``metabt serve``, whose history is all warm-up
but its last bar, skips all but the last. With the loss detector, which reads
the adapted weights on every bar, nothing is deferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import backtrader as bt
import numpy as np
import pandas as pd

from metabt.metamodels import numpy_policy
from metabt.metamodels.numpy_policy import NumpyParams
from metabt.strategies.adaptive_policy import (
    AdaptivePolicy,
    BatchAdapter,
    InSampleError,
    load_policy,
    together,
)
from metabt.strategies.asset_state import AssetState
from metabt.strategies.base import TargetWeightStrategy
from metabt.strategies.conditioned_policy import ContextPolicy
from metabt.strategies.detectors import make_detector, make_detector_bank
from metabt.strategies.meta_params import FALLBACKS, META_ADAPTIVE_PARAMS, TRIGGERS
from metabt.strategies.regime_windows import Moved, RegimeWindows


@dataclass(eq=False)
class AdaptJob:
    """One batched adaptation: the assets due on ``when`` with ``n``-bar windows ``x, y, a``
    (stacked in ``group`` order), and each window's first day."""

    group: list[tuple[bt.LineSeries, AssetState]]
    n: int
    when: object
    starts: list[object]
    x: np.ndarray
    y: np.ndarray
    a: np.ndarray


class MetaAdaptiveStrategy(RegimeWindows, TargetWeightStrategy):
    """Trade a meta-learned policy, re-adapted on the window since the last regime change.

    Params:
        policy (AdaptivePolicy | tuple | str): initial weights, inner steps / LR, feature
            names and training period (``metabt.load_policy``); a tuple of policies
            trades their average position; a checkpoint folder path is loaded when the
            strategy starts (in each worker of ``cerebro.optstrategy``).
        allow_in_sample (bool): False (default) refuses to trade any bar on or before
            the last bar the policy's training saw (``InSampleError`` naming both
            dates); True trades them and marks the run in-sample (``self.in_sample``,
            ``AdaptationAnalyzer``).
        trigger (str): where windows start: ``"regime"`` (at the detector's estimate
            of the change), ``"calendar"`` (always the last ``calendar_window`` bars),
            ``"never"`` (no adaptation) or ``"oracle"`` (at the true change dates in
            ``known_changes``; synthetic studies only).
        known_changes (dict): asset name -> dates of true regime changes (oracle).
        detector (str): ``"bocpd_ar"``, ``"loss"``, ``"bocpd"`` or ``"cusum"``
            (see strategies.detectors).
        detector_settings (dict): settings of that detector.
        min_window (int): fewest new-regime labelled bars an adaptation uses [bars];
            before that many exist, the ``fallback`` trades.
        fallback (str): what trades until the new regime has ``min_window`` labels:
            ``"initial"`` (the unadapted meta-learned weights, default), ``"flat"``
            (position 0) or ``"previous"`` (the weights adapted to the old regime).
        max_window (int): most labelled bars an adaptation uses [bars].
        readapt_every (int): bars between re-adaptations [bars].
        calendar_window (int): window of the calendar ablation [bars].
        long_only (bool): clip positions at 0 whatever the policy says.
        vol_target (float): daily vol a full position is sized to [return units], 0.01.
        rebalance_threshold (float): as in TargetWeightStrategy, default 0.02 here.
        (plus the TargetWeightStrategy params: trade_start, gross_cap, asset_weight, ...)
    """

    params = META_ADAPTIVE_PARAMS

    def __init__(self) -> None:
        super().__init__()
        pols = self.p.policy
        if pols is None:
            raise ValueError("MetaAdaptiveStrategy needs policy=metabt.load_policy(CHECKPOINT)")
        self._policies: tuple[AdaptivePolicy | ContextPolicy, ...] = tuple(
            load_policy(p) if isinstance(p, (str, Path)) else p
            for p in (pols if isinstance(pols, (tuple, list)) else (pols,))
        )
        seen = [p.trained_until for p in self._policies if p.trained_until is not None]
        #: The last bar any of the policies' training saw (None: they saw no data).
        self.trained_until: pd.Timestamp | None = max(seen) if seen else None
        #: The first bar traded, and whether it lies in the training period (see allow_in_sample).
        self.first_traded: pd.Timestamp | None = None
        self.in_sample = False
        names = self._policies[0].feature_names
        if any(p.feature_names != names for p in self._policies):
            raise ValueError("every policy of an ensemble must read the same features")
        if self.p.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {TRIGGERS}, got {self.p.trigger!r}")
        if self.p.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {self.p.fallback!r}")
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
        first = make_detector(self.p.detector, **settings)  # checks name and settings
        watches_loss = getattr(first, "input_kind", "return") == "loss"
        self._state = {
            d: AssetState(
                d, names, make_detector(self.p.detector, **settings) if watches_loss else None, keep
            )
            for d in self.datas
        }
        #: Every asset's return detector, updated together once per bar (None: the
        #: detector watches the policy's losses, per asset, see _feed_loss_detector).
        self._detectors = (
            None
            if watches_loss
            else make_detector_bank(self.p.detector, len(self.datas), **settings)
        )
        gradient_adapted = cast(tuple[AdaptivePolicy, ...], self._policies)
        self._batch = BatchAdapter(gradient_adapted) if together(self._policies) else None
        # Every asset's current weights stacked, one stack per ensemble member, so one
        # forward pass per member gives all assets' positions (see _positions).
        self._stacked = [
            {k: np.stack([v] * len(self.datas)) for k, v in p.params.items()}
            for p in self._policies
        ]
        self._slot = {d: i for i, d in enumerate(self.datas)}
        # A flat fallback zeroes the positions of assets not adapted since their last
        # change; the never-adapted ablation keeps trading its initial weights.
        self._flat_fallback = self.p.fallback == "flat" and self.p.trigger != "never"
        self._order = {d._name: i for i, d in enumerate(self.datas)}
        self.n_adaptations = 0  # adaptations computed (deferred ones once they are)
        # Warm-up adaptations queued until trading starts (see the module docstring).
        self._defer = not watches_loss
        self._deferred: list[AdaptJob] = []
        self._changes = {
            name: {pd.Timestamp(t).date() for t in dates}
            for name, dates in (self.p.known_changes or {}).items()
        }

    def _initial(self) -> list[NumpyParams]:
        return [p.params for p in self._policies]

    def asset_vol(self, d: bt.LineSeries) -> float:
        # The feed's vol is the very vol the tasks and labels were scaled by.
        return float(d.vol_array[len(d) - 1])

    def asset_params(self, d: bt.LineSeries) -> list[NumpyParams]:
        """The weights each ensemble member trades ``d`` with now (views, do not modify)."""
        slot = self._slot[d]
        return [{k: v[slot] for k, v in stack.items()} for stack in self._stacked]

    def _set_params(self, d: bt.LineSeries, params: list[NumpyParams]) -> None:
        slot = self._slot[d]
        for stack, p in zip(self._stacked, params):
            for k, v in p.items():
                stack[k][slot] = v

    # -- per bar -------------------------------------------------------------
    def next(self) -> None:
        if self.first_traded is None and self.trading:
            self._check_out_of_sample(pd.Timestamp(self.datetime.date(0)))
        super().next()

    def _check_out_of_sample(self, first: pd.Timestamp) -> None:
        """Refuse (or, if allowed, mark) a first traded bar inside the training period.

        Bars are traded in date order, so the first one decides for the whole run.
        """
        self.first_traded = first
        until = self.trained_until
        if until is None or first > until:
            return
        if not self.p.allow_in_sample:
            raise InSampleError(
                f"the policy was trained on bars up to {until.date()} but the first traded "
                f"bar is {first.date()}: its results would be in-sample; trade from "
                f"{(until + pd.Timedelta(days=1)).date()} on (trade_start=...) or pass "
                "allow_in_sample=True to run it in-sample on purpose"
            )
        self.in_sample = True

    def _adapt(self, group: list[tuple[bt.LineSeries, AssetState]], n: int) -> None:
        """Adapt every member on the last ``n`` labelled bars of each asset in ``group``
        (or, on a warm-up bar, queue it: :meth:`settle`)."""
        x, y, a = (np.stack(v) for v in zip(*(st.window(n) for _, st in group)))
        starts = [bt.num2date(st.support_when[-n]).date() for _, st in group]
        job = AdaptJob(group, n, self.datetime.date(0), starts, x, y, a)
        for _, st in group:
            st.bars_since_adapt, st.adapted = 0, True
        if self._defer and not self.trading:
            for _, st in group:
                st.deferred = job
            # Keep only the jobs some asset still trades on: a long warm-up would
            # otherwise hold every window it ever queued (thousands, tens of MB).
            self._deferred = [j for j in self._deferred if self._live(j)] + [job]
        else:
            self._run(job)

    def settle(self) -> None:
        """Compute the queued warm-up adaptations that are still in force, in their order.

        Each is computed as the batch it was queued with, so the weights are the ones
        the adaptation would have given on its own bar.
        """
        jobs, self._deferred = self._deferred, []
        for job in jobs:
            if self._live(job):
                self._run(job, [st.deferred is job for _, st in job.group])
        for st in self._state.values():
            st.deferred = None

    @staticmethod
    def _live(job: AdaptJob) -> bool:
        """Whether some asset of ``job`` still trades on it (not replaced, not dropped)."""
        return any(st.deferred is job for _, st in job.group)

    def _run(self, job: AdaptJob, live: list[bool] | None = None) -> None:
        """Compute ``job`` and trade its weights for the assets marked ``live`` (default all)."""
        if self._batch is not None:
            results = self._batch(job.x, job.y, job.a)
        else:
            results = [
                [pol.adapt(job.x[j], job.y[j], job.a[j], when=job.when) for pol in self._policies]
                for j in range(len(job.group))
            ]
        for j, ((d, st), got) in enumerate(zip(job.group, results)):
            if live is None or live[j]:
                self._adapted(d, st, job, j, got)

    def _adapted(
        self, d: bt.LineSeries, st: AssetState, job: AdaptJob, j: int, results: list[tuple]
    ) -> None:
        """Trade the adapted weights of ``d`` (row ``j`` of ``job``) and log the adaptation."""
        self._set_params(d, [r[0] for r in results])
        self.n_adaptations += 1
        if st.detector is not None:  # the loss detector's reference: the support loss per bar
            pol = self._policies[0]
            pnl = numpy_policy.positions(results[0][0], job.x[j], pol.policy_spec) * job.y[j]
            per_bar = -pnl + pol.objective_spec.risk * pnl * pnl
            st.loss_ref = (float(per_bar.mean()), max(float(per_bar.std()), 1e-6))
        event = {
            "date": job.when,
            "asset": d._name,
            "trigger": self.p.trigger,
            "window": job.n,
            "start": job.starts[j],
            "loss_before": float(np.mean([r[1] for r in results])),
            "loss_after": float(np.mean([r[2] for r in results])),
            # the memory policy's fourth item: the past segments it attended to
            **({"attended": results[0][3]} if len(results[0]) > 3 else {}),
        }
        self.events.append(event)
        st.in_force = event

    def _schedule(self, moved: Sequence[Moved]) -> None:
        """Re-adapt on the cadence, and as soon as a fallback can end.

        Assets whose windows have the same length adapt together (one batched pass).
        """
        due: dict[int, list[tuple[bt.LineSeries, AssetState]]] = {}
        for d, st, _ in moved:
            st.bars_since_adapt += 1
            if st.adapted and st.bars_since_adapt < self.p.readapt_every:
                continue
            n = self.window_length(st)
            if n:
                due.setdefault(n, []).append((d, st))
        for n, group in due.items():
            self._adapt(group, n)

    def target_weights(self) -> dict:
        if self._deferred and self.trading:
            self.settle()
        logged = len(self.events)
        moved: list[Moved] = []
        for d in self.datas:
            st = self._state[d]
            if len(d) != st.seen:  # a feed with no bar on this date did not move
                st.seen = len(d)
                st.bar += 1
                st.position = None
                moved.append((d, st, self._observe(d, st)))
        if moved:
            self._detect(moved)
            self._schedule(moved)
            if len(self.events) > logged + 1:
                # One asset's events after another's, each in the order they happened.
                self.events[logged:] = sorted(
                    self.events[logged:], key=lambda e: self._order[e["asset"]]
                )
            if self.trading or not self._defer:  # a warm-up bar's positions go nowhere
                self._positions([(d, st, x) for d, st, x in moved if x is not None])
        return {d: st.position for d, st in self._state.items() if st.position is not None}

    def _positions(self, moved: list[tuple[bt.LineSeries, AssetState, np.ndarray]]) -> None:
        """Positions of every asset that has a new bar: one forward pass per ensemble member."""
        if not moved:
            return
        slots = [self._slot[d] for d, _, _ in moved]
        x = np.stack([x for _, _, x in moved])[:, None, :]  # (assets, 1 bar, features)
        every = len(moved) == len(self.datas)  # usually: then no copy of the weights
        per_member = [
            numpy_policy.positions(
                stack if every else {k: v[slots] for k, v in stack.items()}, x, pol.policy_spec
            )[:, 0]
            for stack, pol in zip(self._stacked, self._policies)
        ]
        mean = per_member[0] if len(per_member) == 1 else np.mean(per_member, axis=0)
        for (_, st, _), pos in zip(moved, mean.tolist()):
            if self._flat_fallback and not st.adapted:
                pos = 0.0
            st.position = max(pos, 0.0) if self.p.long_only else pos

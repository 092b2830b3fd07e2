"""What :class:`MetaAdaptiveStrategy` remembers about one asset between bars.

Per asset: the feed's feature rows (read by bar number, never through feed
lines), the bars whose labels are not known yet, the labelled window the next
adaptation fits, where the current regime is estimated to start, and the
adaptation cadence. Labels arrive ``LABEL_DELAY`` bars late (the label of bar
``t`` is the open-to-open return from ``t+1`` to ``t+2``), so a bar's features
wait in ``pending`` until its label is known, and only then join the window.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque

import backtrader as bt
import numpy as np

from metabt.feeds.features import LABEL_DELAY, label_from_opens
from metabt.strategies.detectors import AnyDetector

__all__ = ["AssetState"]


class AssetState:
    """Per-asset memory: the feed's feature rows, recent labels, detector, cadence.

    Parameters
    ----------
    d : backtrader data feed
        Built by :func:`metabt.feeds.btfeed.make_feature_feed` (it carries
        ``feature_array`` / ``vol_array``, one row per bar).
    names : tuple of str
        The features the policy reads, in its order.
    detector : detector or None
        The asset's own loss detector; detectors that watch returns run in the
        strategy's bank instead.
    keep : int
        Most labelled bars remembered [bars].
    """

    def __init__(
        self,
        d: bt.LineSeries,
        names: tuple[str, ...],
        detector: AnyDetector | None,
        keep: int,
    ) -> None:
        feats, vols = getattr(d, "feature_array", None), getattr(d, "vol_array", None)
        if feats is None or vols is None:
            raise ValueError(
                f"MetaAdaptiveStrategy: feed {d._name!r} carries no feature_array; build it "
                "with metabt.feeds.btfeed.make_feature_feed"
            )
        have = tuple(d.feature_names)
        if have != names:
            missing = [n for n in names if n not in have]
            if missing:
                raise ValueError(
                    f"MetaAdaptiveStrategy: feed {d._name!r} lacks the policy's features "
                    f"{missing}; build it with the FeatureSpec the policy was trained on"
                )
            feats = np.ascontiguousarray(feats[:, [have.index(n) for n in names]])
        self.feats, self.vols = feats, vols  # row i = the feed's i-th bar
        # Which rows have every feature, checked once for the whole feed, not twice a bar.
        self.complete = np.isfinite(feats).all(axis=1)
        self.detector = detector
        # Feature rows of the last LABEL_DELAY bars, whose labels are not known yet.
        self.pending: deque[int] = deque(maxlen=LABEL_DELAY)
        # Labelled rows available for adaptation: feature row, label, 1/vol, bar number.
        self.support_row: deque[int] = deque(maxlen=keep)
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
        # The logged adaptation whose weights trade now (None: the initial weights). Kept
        # for reporting (metabt serve); a paper snapshot does not carry it.
        self.in_force: dict | None = None
        self.deferred: object = None  # the queued warm-up adaptation in force, if any
        self.loss_ref = (0.0, 1.0)  # mean, sd of the adapted policy's per-bar support loss

    def observe(
        self, d: bt.LineSeries
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, float] | None]:
        """Record this bar's features and the label that just became known.

        Returns this bar's features (None if any is missing) and, when a bar was
        labelled now, its features and label. A feed with a missing date still
        advances one bar per own bar, so ``d.open[-1]`` is this asset's previous bar.
        """
        row = len(d) - 1
        x = self.feats[row]
        labelled = None
        if len(self.pending) == LABEL_DELAY:
            # The label of bar t-2 (open t-1 -> open t) is known now, at bar t.
            old = self.pending[0]
            label = float(label_from_opens(d.open[-1], d.open[0], self.vols[old]))
            old_x = self.feats[old]
            if math.isfinite(label) and self.complete[old]:
                self.support_row.append(old)
                self.support_y.append(label)
                self.support_a.append(1.0 / self.vols[old])
                self.support_bar.append(self.bar - LABEL_DELAY)
                self.support_when.append(d.datetime[-LABEL_DELAY])
                labelled = (old_x, label)
        self.pending.append(row)
        return (x if self.complete[row] else None), labelled

    def extend(self, rows: np.ndarray) -> int:
        """Append feature rows below the feed's own (a restored snapshot's labelled bars);
        returns the index of the first one. ``complete`` grows with them."""
        first = len(self.feats)
        if len(rows):
            self.feats = np.concatenate([self.feats, rows])
            self.complete = np.concatenate([self.complete, np.isfinite(rows).all(axis=1)])
        return first

    def window(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features ``(n, F)``, labels and 1/vol ``(n,)`` of the last ``n`` labelled bars."""
        rows = list(self.support_row)[-n:]
        return (
            self.feats[rows],
            np.array(list(self.support_y)[-n:]),
            np.array(list(self.support_a)[-n:]),
        )

    def labelled_since(self, bar: int) -> int:
        """How many labelled bars lie at or after bar number ``bar``."""
        # support_bar is increasing: the bars at or after ``bar`` are its tail.
        return len(self.support_bar) - bisect_left(self.support_bar, bar)

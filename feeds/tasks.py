"""Per-asset adaptation tasks: a support window and the query window after it.

A task is anchored at a bar ``t``, the moment the strategy would adapt. Its
support set is the last ``support`` bars whose labels are already known at
``t`` (bars ``t-S-1 .. t-2``, see ``LABEL_DELAY``); its query set is the next
``query`` decision bars ``t .. t+Q-1``. So no support label overlaps a query
label, and a sampler bounded by ``[start, end)`` only uses bars and labels
inside that period, which is how meta-training never sees the test period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from feeds.errors import DataError
from feeds.features import LABEL_DELAY, FeatureSpec, compute_features, compute_labels


@dataclass(frozen=True)
class TaskSpec:
    """Window lengths, in bars, of one adaptation task."""

    support: int = 60
    query: int = 20

    def __post_init__(self) -> None:
        if self.support < 2 or self.query < 1:
            raise ValueError(f"task windows must be support >= 2 and query >= 1, got {self}")


@dataclass(frozen=True)
class TaskBatch:
    """A batch of tasks as arrays, ready for a vmapped meta-learner."""

    support_x: np.ndarray  # (B, S, F) float32
    support_y: np.ndarray  # (B, S) float32
    query_x: np.ndarray  # (B, Q, F) float32
    query_y: np.ndarray  # (B, Q) float32
    assets: tuple[str, ...]
    anchors: np.ndarray  # (B,) datetime64[ns]

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    def subset(self, idx: np.ndarray) -> TaskBatch:
        idx = np.asarray(idx)
        return TaskBatch(self.support_x[idx], self.support_y[idx], self.query_x[idx],
                         self.query_y[idx], tuple(self.assets[i] for i in idx), self.anchors[idx])


class TaskSampler:
    """Tasks whose every bar and label lie in ``[start, end)`` of the given frames.

    Features are computed on each whole frame (they are causal, so bars before
    ``start`` only serve as look-back), then anchors are restricted so that
    the first support bar is at or after ``start`` and the last query label's
    open is before ``end``.
    """

    def __init__(self, frames: dict[str, pd.DataFrame], feature_spec: FeatureSpec,
                 task_spec: TaskSpec, start: object = None, end: object = None) -> None:
        self.feature_spec, self.task_spec = feature_spec, task_spec
        self.n_features = len(feature_spec.names)
        s, q = task_spec.support, task_spec.query
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._dates: list[np.ndarray] = []
        self._symbols: list[str] = []
        anchors: list[tuple[int, int]] = []
        for symbol, frame in frames.items():
            x = compute_features(frame, feature_spec).to_numpy(np.float32)
            y = compute_labels(frame, feature_spec).to_numpy(np.float32)
            dates = frame.index.to_numpy()
            lo = max(feature_spec.warmup, self._first_at_or_after(dates, start))
            hi = self._first_at_or_after(dates, end) if end is not None else len(dates)
            # anchor t needs support bars t-s-1 >= lo and its last label's open
            # (index t+q-1+LABEL_DELAY) < hi.
            first, last = lo + s + 1, hi - q - LABEL_DELAY
            asset = len(self._symbols)
            anchors.extend((asset, t) for t in range(first, last + 1))
            self._x.append(x)
            self._y.append(y)
            self._dates.append(dates)
            self._symbols.append(symbol)
        if not anchors:
            raise DataError(
                f"no {s}+{q}-bar task fits between {start} and {end} after the "
                f"{feature_spec.warmup}-bar feature warm-up; use a longer period or shorter windows"
            )
        self.anchors = np.array(anchors, dtype=np.int64)

    @staticmethod
    def _first_at_or_after(dates: np.ndarray, when: object) -> int:
        if when is None:
            return 0
        return int(np.searchsorted(dates, np.datetime64(pd.Timestamp(when)), side="left"))

    def __len__(self) -> int:
        return len(self.anchors)

    def _build(self, rows: np.ndarray) -> TaskBatch:
        s, q = self.task_spec.support, self.task_spec.query
        sx, sy, qx, qy, assets, when = [], [], [], [], [], []
        for asset, t in rows:
            x, y = self._x[asset], self._y[asset]
            sup = slice(t - s - 1, t - 1)
            qry = slice(t, t + q)
            sx.append(x[sup])
            sy.append(y[sup])
            qx.append(x[qry])
            qy.append(y[qry])
            assets.append(self._symbols[asset])
            when.append(self._dates[asset][t])
        return TaskBatch(np.stack(sx), np.stack(sy), np.stack(qx), np.stack(qy), tuple(assets),
                         np.array(when, dtype="datetime64[ns]"))

    def sample(self, n_tasks: int, rng: np.random.Generator) -> TaskBatch:
        """``n_tasks`` anchors drawn uniformly (with replacement) over assets and time."""
        return self._build(self.anchors[rng.integers(0, len(self.anchors), size=n_tasks)])

    def all_tasks(self, stride: int = 1) -> TaskBatch:
        """Every ``stride``-th anchor, deterministic (for validation and evaluation)."""
        return self._build(self.anchors[:: max(1, int(stride))])


def random_task_batch(n_tasks: int, support: int, query: int, n_features: int,
                      seed: int = 0) -> TaskBatch:
    """Gaussian tasks of the right shapes, for tests and the benchmark."""
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    return TaskBatch(arr(n_tasks, support, n_features), arr(n_tasks, support),
                     arr(n_tasks, query, n_features), arr(n_tasks, query),
                     tuple(f"A{i}" for i in range(n_tasks)),
                     np.full(n_tasks, np.datetime64("2000-01-03", "ns")))

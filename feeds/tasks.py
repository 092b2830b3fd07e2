"""Per-asset adaptation tasks: a support window and the query window after it.

A task is anchored at a bar ``t``, the moment the strategy would re-adapt. Its
support set is the last ``n`` bars whose labels are already known at ``t``
(bars ``t-n-1 .. t-2``, see ``LABEL_DELAY``); its query set is the next ``q``
decision bars ``t .. t+q-1``, traded with the weights adapted at ``t``. No
support label overlaps a query label, and a sampler bounded by ``[start, end)``
only uses bars and labels inside that period, which is how meta-training never
sees the test period.

Tasks are built like the trading schedule uses them: the support length is
drawn from the strategy's ``[min_window, max_window]``, the query length from
``[readapt_every, max_query]``, and a share ``change_share`` of supports start
at a regime change (the true changes on synthetic data, the detector's causal
estimates on real data), as the window since a detected change does. Windows of
different lengths are left-padded to a common width and carry a mask. Each bar
also carries ``1 / vol`` so the objective charges costs on the vol-targeted
weight the strategy actually trades.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metabt.feeds.errors import DataError
from metabt.feeds.features import (
    LABEL_DELAY,
    FeatureSpec,
    compute_features,
    compute_labels,
    trailing_vol,
)


@dataclass(frozen=True)
class TaskSpec:
    """Window lengths, in bars, of the adaptation tasks.

    Params:
        min_support: shortest support window (the strategy's ``min_window``).
        max_support: longest support window (the strategy's ``max_window``).
        min_query: shortest query window (the strategy's ``readapt_every``).
        max_query: longest query window.
        change_share: share of sampled tasks whose support starts at a regime change
            (when changes are known); the rest are anchored uniformly in time.
    """

    min_support: int = 20
    max_support: int = 120
    min_query: int = 5
    max_query: int = 20
    change_share: float = 0.7

    def __post_init__(self) -> None:
        if not 2 <= self.min_support <= self.max_support:
            raise ValueError(
                "task windows need 2 <= min_support <= max_support, got "
                f"{self.min_support}, {self.max_support}"
            )
        if not 1 <= self.min_query <= self.max_query:
            raise ValueError(
                "task windows need 1 <= min_query <= max_query, got "
                f"{self.min_query}, {self.max_query}"
            )
        if not 0.0 <= self.change_share <= 1.0:
            raise ValueError(f"task.change_share must be in [0, 1], got {self.change_share}")

    @property
    def min_bars(self) -> int:
        """Bars one task spans, from its first support bar to its last query label's open."""
        return self.max_support + 1 + self.max_query + LABEL_DELAY


@dataclass(frozen=True)
class TaskBatch:
    """A batch of tasks as padded arrays (padding first, ``*_mask`` = 1 on real bars)."""

    support_x: np.ndarray  # (B, S, F) float32
    support_y: np.ndarray  # (B, S) float32
    query_x: np.ndarray  # (B, Q, F) float32
    query_y: np.ndarray  # (B, Q) float32
    assets: tuple[str, ...]
    anchors: np.ndarray  # (B,) datetime64[ns]
    support_inv_vol: np.ndarray | None = None  # (B, S) 1 / trailing vol
    support_mask: np.ndarray | None = None  # (B, S) 1.0 real bar, 0.0 padding
    query_inv_vol: np.ndarray | None = None
    query_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    def subset(self, idx: np.ndarray) -> TaskBatch:
        idx = np.asarray(idx)

        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return TaskBatch(
            self.support_x[idx],
            self.support_y[idx],
            self.query_x[idx],
            self.query_y[idx],
            tuple(self.assets[i] for i in idx),
            self.anchors[idx],
            take(self.support_inv_vol),
            take(self.support_mask),
            take(self.query_inv_vol),
            take(self.query_mask),
        )

    def window(self, b: int) -> dict[str, np.ndarray]:
        """Task ``b`` without its padding: ``support_x, support_y, support_inv_vol, query_*``."""
        out = {}
        for side in ("support", "query"):
            mask = getattr(self, f"{side}_mask")
            keep = slice(None) if mask is None else mask[b] > 0
            for part in ("x", "y", "inv_vol"):
                arr = getattr(self, f"{side}_{part}")
                if arr is not None:
                    out[f"{side}_{part}"] = arr[b][keep]
        return out


def _task_rows(frame: pd.DataFrame, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and ``1 / vol`` of every bar, float32.

    A spec with its own ``task_rows`` (the volatility forecaster's
    ``feeds.vol_features.VolFeatureSpec``) supplies another model's inputs and
    targets; the windows are cut the same way.
    """
    if hasattr(spec, "task_rows"):
        return spec.task_rows(frame)
    x = compute_features(frame, spec).to_numpy(np.float32)
    y = compute_labels(frame, spec).to_numpy(np.float32)
    a = (1.0 / trailing_vol(frame, spec)).to_numpy(np.float32)
    return x, y, a


class TaskSampler:
    """Tasks whose every bar and label lie in ``[start, end)`` of the given frames.

    Features are computed on each whole frame (they are causal, so bars before
    ``start`` only serve as look-back), then anchors are restricted so that
    the first support bar is at or after ``start`` and the last query label's
    open is before ``end``.

    Parameters
    ----------
    changes : mapping of symbol -> dates, optional
        Regime-change dates per asset (true or causally detected); a share
        ``task_spec.change_share`` of sampled supports start at one of them.
    """

    def __init__(
        self,
        frames: dict[str, pd.DataFrame],
        feature_spec: FeatureSpec,
        task_spec: TaskSpec,
        start: object = None,
        end: object = None,
        changes: Mapping[str, Sequence[object]] | None = None,
    ) -> None:
        self.feature_spec, self.task_spec = feature_spec, task_spec
        self.n_features = len(feature_spec.names)
        s, q = task_spec.max_support, task_spec.max_query
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._a: list[np.ndarray] = []
        self._dates: list[np.ndarray] = []
        self._symbols: list[str] = []
        self._bounds: list[tuple[int, int]] = []
        anchors: list[tuple[int, int]] = []
        change_rows: list[tuple[int, int]] = []
        for symbol, frame in frames.items():
            x, y, a = _task_rows(frame, feature_spec)
            dates = frame.index.to_numpy()
            lo = max(feature_spec.warmup, self._first_at_or_after(dates, start))
            hi = self._first_at_or_after(dates, end) if end is not None else len(dates)
            # anchor t needs support bars t-n-1 >= lo and its last label's open
            # (index t+q-1+LABEL_DELAY) < hi, for every n <= s and q <= max_query.
            first, last = lo + s + 1, hi - q - LABEL_DELAY
            asset = len(self._symbols)
            anchors.extend((asset, t) for t in range(first, last + 1))
            for when in (changes or {}).get(symbol, ()):
                c = self._first_at_or_after(dates, when)
                # a support starting at c ends at anchor c + n + 1 <= last for the shortest n
                if lo <= c and c + task_spec.min_support + 1 <= last:
                    change_rows.append((asset, c))
            self._x.append(x)
            self._y.append(y)
            self._a.append(a)
            self._dates.append(dates)
            self._symbols.append(symbol)
            self._bounds.append((lo, last))
        if not anchors:
            raise DataError(
                f"no {s}+{q}-bar task fits between {start} and {end} after the "
                f"{feature_spec.warmup}-bar feature warm-up; use a longer period or shorter windows"
            )
        self.anchors = np.array(anchors, dtype=np.int64)
        self.changes = np.array(change_rows, dtype=np.int64).reshape(-1, 2)

    @staticmethod
    def _first_at_or_after(dates: np.ndarray, when: object) -> int:
        if when is None:
            return 0
        return int(np.searchsorted(dates, np.datetime64(pd.Timestamp(when)), side="left"))

    def __len__(self) -> int:
        return len(self.anchors)

    def _build(self, rows: np.ndarray, n_support: np.ndarray, n_query: np.ndarray) -> TaskBatch:
        s, q = self.task_spec.max_support, self.task_spec.max_query
        b = len(rows)
        f = self.n_features
        sx, sy, sa, sm = (
            np.zeros((b, s, f), np.float32),
            np.zeros((b, s), np.float32),
            np.ones((b, s), np.float32),
            np.zeros((b, s), np.float32),
        )
        qx, qy, qa, qm = (
            np.zeros((b, q, f), np.float32),
            np.zeros((b, q), np.float32),
            np.ones((b, q), np.float32),
            np.zeros((b, q), np.float32),
        )
        assets, when = [], []
        for i, ((asset, t), n, m) in enumerate(zip(rows, n_support, n_query)):
            sup, qry = slice(t - n - 1, t - 1), slice(t, t + m)
            for out, src, span, width in ((sx, self._x, sup, n), (qx, self._x, qry, m)):
                out[i, out.shape[1] - width :] = src[asset][span]
            for (y_out, a_out, m_out), span, width in (
                ((sy, sa, sm), sup, n),
                ((qy, qa, qm), qry, m),
            ):
                pad = y_out.shape[1] - width
                y_out[i, pad:] = self._y[asset][span]
                a_out[i, pad:] = self._a[asset][span]
                m_out[i, pad:] = 1.0
            assets.append(self._symbols[asset])
            when.append(self._dates[asset][t])
        return TaskBatch(
            sx, sy, qx, qy, tuple(assets), np.array(when, dtype="datetime64[ns]"), sa, sm, qa, qm
        )

    def sample(self, n_tasks: int, rng: np.random.Generator) -> TaskBatch:
        """``n_tasks`` tasks with random lengths; a share anchored at regime changes."""
        spec = self.task_spec
        n_support = rng.integers(spec.min_support, spec.max_support + 1, size=n_tasks)
        n_query = rng.integers(spec.min_query, spec.max_query + 1, size=n_tasks)
        rows = self.anchors[rng.integers(0, len(self.anchors), size=n_tasks)].copy()
        if len(self.changes) and spec.change_share > 0:
            at_change = rng.random(n_tasks) < spec.change_share
            picks = self.changes[rng.integers(0, len(self.changes), size=n_tasks)]
            for i in np.flatnonzero(at_change):
                asset, c = picks[i]
                # the longest support that still fits before the anchor range ends
                n = min(int(n_support[i]), self._bounds[asset][1] - c - 1)
                n_support[i] = n
                rows[i] = (asset, c + n + 1)
        return self._build(rows, n_support, n_query)

    def all_tasks(self, stride: int = 1) -> TaskBatch:
        """Every ``stride``-th anchor with full-length windows, deterministic (for tests)."""
        rows = self.anchors[:: max(1, int(stride))]
        spec = self.task_spec
        return self._build(
            rows, np.full(len(rows), spec.max_support), np.full(len(rows), spec.max_query)
        )


def random_task_batch(
    n_tasks: int, support: int, query: int, n_features: int, seed: int = 0, variable: bool = False
) -> TaskBatch:
    """Gaussian tasks of the right shapes, for tests and the benchmark.

    ``variable=True`` gives each task its own support and query length (left
    padding with masks) and a random ``1 / vol`` per bar, as sampled tasks have.
    """
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    extra: dict[str, np.ndarray] = {}
    if variable:
        for side, width in (("support", support), ("query", query)):
            lengths = rng.integers(max(2, width // 2), width + 1, size=n_tasks)
            mask = (np.arange(width)[None, :] >= (width - lengths)[:, None]).astype(np.float32)
            extra[f"{side}_mask"] = mask
            extra[f"{side}_inv_vol"] = rng.uniform(40, 160, (n_tasks, width)).astype(np.float32)
    return TaskBatch(
        arr(n_tasks, support, n_features),
        arr(n_tasks, support),
        arr(n_tasks, query, n_features),
        arr(n_tasks, query),
        tuple(f"A{i}" for i in range(n_tasks)),
        np.full(n_tasks, np.datetime64("2000-01-03", "ns")),
        **extra,
    )

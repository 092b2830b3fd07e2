"""The regime-memory policy: attend over past regime segments of every asset.

Metric-based meta-learning (Matching / Prototypical networks; the context
sets of X-Trend). The training history of every asset is cut into regime
segments at the changes the project's detector found causally; each segment
becomes one row of a memory bank with its asset, first and last bar and the
date it became *known*: not before the detector's alarm for the change that
ended it, nor before the label of its last bar exists. At a decision on day
``t`` the current window (the bars since the regime change) is embedded with
the context encoder of :mod:`metamodels.context_policy`, compared with the
keys of the segments known strictly before ``t`` (of any asset), and the
softmax-weighted sum of their values is the context that modulates the
policy (the same FiLM). A "null" slot with score 0 and value 0 is always
there, so an empty bank (or an uninformative match) gives the plain policy.

Two ways to score a segment (``MemorySpec.attention``): ``"dot"``, the scaled
dot product of query and key; or ``"cosine"``, as in Matching Networks, the
cosine of query and key times a learned scale (``mem.log_scale``, kept out of
weight decay). With bounded encoder states and small projections the dot
product's scores stay within about one unit of each other, so over a bank of
thousands of segments the weights are nearly uniform: the memory averages its
segments rather than retrieving the ones like today. The cosine scale starts at
:data:`COSINE_SCALE0` and lets training set how sharp retrieval is. A
checkpoint holding ``mem.log_scale`` is a cosine one; without it, dot.

The keys and values of the bank are computed once from the trained weights
and stored with the model, so trading time is one encoder pass plus one
``(N, d)`` matrix-vector product.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from metabt.feeds.features import LABEL_DELAY, FeatureSpec, compute_features, compute_labels
from metabt.metamodels.context_policy import (
    ContextSpec,
    context_shapes,
    context_spec_of,
    numpy_window_context,
    policy_part,
    window_context,
)
from metabt.metamodels.policy import NumpyParams, Params, PolicySpec
from metabt.metamodels.train_config import ATTENTIONS

PREFIX = "mem."
BANK = "bank."
# Bank tensors stored with a trained model: keys (N, d), values (N, H), and per segment
# the day numbers (days since 1970-01-01) of its first bar, last bar and when it was known.
BANK_KEYS = tuple(
    f"{BANK}{k}" for k in ("keys", "values", "known_day", "start_day", "end_day", "asset")
)

Alarms = Mapping[str, Sequence[tuple[object, object]]]

SCALE = f"{PREFIX}log_scale"
# Cosines lie in [-1, 1]; times 10, one segment can outweigh a thousand indifferent ones
# (e^10 ~ 22,000) while the starting weights still spread over the best few dozen.
COSINE_SCALE0 = 10.0
# Queries and keys of (near) zero length score 0 instead of dividing by zero.
_TINY = 1e-12


@dataclass(frozen=True)
class MemorySpec:
    """Sizes of the memory.

    Parameters
    ----------
    key_width : int
        Width of the attention keys and queries.
    min_bars : int
        Shorter segments are left out of the bank [bars].
    max_bars : int
        A segment is embedded from its last ``max_bars`` labelled bars [bars].
    attention : {"dot", "cosine"}
        How a segment is scored against the current window (module docstring).
    """

    key_width: int = 8
    min_bars: int = 10
    max_bars: int = 120
    attention: str = "dot"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"memory attention must be one of {ATTENTIONS}, got {self.attention!r}"
            )
        if self.key_width < 1 or not 2 <= self.min_bars <= self.max_bars:
            raise ValueError(
                "memory needs key_width >= 1 and 2 <= min_bars <= max_bars, got "
                f"{self.key_width}, {self.min_bars}, {self.max_bars}"
            )


@dataclass(frozen=True)
class SegmentBank:
    """Past regime segments as padded windows (padding first), with where and when they lie."""

    x: np.ndarray  # (N, L, F) float32
    y: np.ndarray  # (N, L) float32
    mask: np.ndarray  # (N, L) 1.0 on real bars
    asset: np.ndarray  # (N,) index into assets
    start_day: np.ndarray  # (N,) int64 day numbers
    end_day: np.ndarray
    known_day: np.ndarray
    assets: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.known_day)


def day_number(when: object) -> int:
    """Days since 1970-01-01 of a date-like value (the bank's time key)."""
    return int(np.datetime64(pd.Timestamp(when).date(), "D").astype(np.int64))


def build_bank(
    frames: Mapping[str, pd.DataFrame],
    feature_spec: FeatureSpec,
    alarms: Alarms,
    start: object,
    end: object,
    spec: MemorySpec,
) -> SegmentBank:
    """Cut every asset's bars in ``[start, end)`` into segments at its detected changes.

    ``alarms[symbol]`` holds ``(estimated start, alarm date)`` pairs from a causal
    detector run. A segment runs from one estimated start to the next; it is
    known at the later of the next change's alarm bar and the bar its last
    label becomes known, and only segments known before ``end`` are kept. The
    open segment at the end is not in the bank: its end is not known yet.
    """
    rows: list[tuple] = []
    assets = tuple(frames)
    n_features = len(feature_spec.names)
    for a, (symbol, frame) in enumerate(frames.items()):
        dates = frame.index
        x = compute_features(frame, feature_spec).to_numpy(np.float32)
        y = compute_labels(frame, feature_spec).to_numpy(np.float32)
        lo = max(int(feature_spec.warmup), int(dates.searchsorted(pd.Timestamp(start or dates[0]))))
        hi = len(dates) if end is None else int(dates.searchsorted(pd.Timestamp(end)))
        cuts, alarm_at, prev = [], [], lo
        for change, alarm in alarms.get(symbol, ()):
            c = int(dates.searchsorted(pd.Timestamp(change)))
            if c > prev:  # the detector's estimates may step back: keep them increasing
                cuts.append(c)
                alarm_at.append(int(dates.searchsorted(pd.Timestamp(alarm))))
                prev = c
        first = lo
        for c, alarm in zip(cuts, alarm_at):
            known = max(alarm, c - 1 + LABEL_DELAY)
            if known < hi and c - first >= spec.min_bars:
                take = slice(max(first, c - spec.max_bars), c)
                if np.isfinite(x[take]).all() and np.isfinite(y[take]).all():
                    rows.append((a, x[take], y[take], dates[first], dates[c - 1], dates[known]))
            first = max(first, c)
    n, width = len(rows), spec.max_bars
    bx = np.zeros((n, width, n_features), np.float32)
    by = np.zeros((n, width), np.float32)
    bm = np.zeros((n, width), np.float32)
    for i, (_, xs, ys, *_) in enumerate(rows):
        bx[i, width - len(ys) :], by[i, width - len(ys) :], bm[i, width - len(ys) :] = xs, ys, 1.0
    start_day, end_day, known_day = (
        np.array([day_number(r[k]) for r in rows], np.int64) for k in (3, 4, 5)
    )
    asset = np.array([r[0] for r in rows], np.int64)
    return SegmentBank(bx, by, bm, asset, start_day, end_day, known_day, assets)


def memory_shapes(ctx: ContextSpec, spec: MemorySpec) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the attention parameters."""
    h, d = ctx.width, spec.key_width
    shapes: dict[str, tuple[int, ...]] = {
        f"{PREFIX}wq": (h, d),
        f"{PREFIX}wk": (h, d),
        f"{PREFIX}wv": (h, h),
    }
    if spec.attention == "cosine":
        shapes[SCALE] = (1,)
    return shapes


def init_memory_params(ctx: ContextSpec, spec: MemorySpec, seed: int) -> Params:
    """Fresh float32 attention parameters (uniform +-1/sqrt(fan_in); the cosine scale
    at :data:`COSINE_SCALE0`)."""
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    out = {
        name: (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) / math.sqrt(shape[0])
        for name, shape in memory_shapes(ctx, spec).items()
        if name != SCALE
    }
    if spec.attention == "cosine":
        out[SCALE] = torch.full((1,), math.log(COSINE_SCALE0), dtype=torch.float32)
    return out


# -- torch --------------------------------------------------------------------
def bank_embeddings(params: Params, bank: SegmentBank, spec: PolicySpec) -> torch.Tensor:
    """Encoder state of every segment, ``(N, H)``."""
    dtype = params["w0"].dtype
    return window_context(
        params,
        torch.as_tensor(bank.x, dtype=dtype),
        torch.as_tensor(bank.y, dtype=dtype),
        spec,
        torch.as_tensor(bank.mask, dtype=dtype),
    )


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=_TINY)


def attention_keys(params: Params, memory: torch.Tensor) -> torch.Tensor:
    """The keys ``(N, d)`` of segments with encoder states ``memory``, as the bank stores
    them: unit length for cosine attention."""
    k = memory @ params[f"{PREFIX}wk"]
    return _unit(k) if SCALE in params else k


def attend(
    params: Params, query: torch.Tensor, memory: torch.Tensor, eligible: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context ``(B, H)`` and attention weights ``(B, N)`` over the eligible segments.

    ``query`` ``(B, H)`` and ``memory`` ``(N, H)`` are encoder states;
    ``eligible`` ``(B, N)`` is True where a segment was known before the decision.
    """
    q = query @ params[f"{PREFIX}wq"]
    k = attention_keys(params, memory)
    if SCALE in params:
        scores = (_unit(q) * params[SCALE].exp()) @ k.T
    else:
        scores = (q @ k.T) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~eligible, -math.inf)
    null = torch.zeros_like(scores[:, :1])
    weights = torch.softmax(torch.cat([null, scores], 1), 1)[:, 1:]
    return weights @ (memory @ params[f"{PREFIX}wv"]), weights


def bank_tensors(params: Params, bank: SegmentBank, spec: PolicySpec) -> Params:
    """What a trained model keeps of its bank: keys, values and the segments' dates."""
    with torch.no_grad():
        e = bank_embeddings(params, bank, spec)
        out = {f"{BANK}keys": attention_keys(params, e), f"{BANK}values": e @ params[f"{PREFIX}wv"]}
    for name in ("known_day", "start_day", "end_day", "asset"):
        # float32 holds whole numbers up to 2**24 exactly: day numbers and indices fit.
        out[f"{BANK}{name}"] = torch.as_tensor(getattr(bank, name), dtype=torch.float32)
    return {k: v.float() for k, v in out.items()}


# -- numpy (trading time) -----------------------------------------------------
def numpy_attend(
    params: NumpyParams, x: np.ndarray, y: np.ndarray, day: int, spec: PolicySpec
) -> tuple[np.ndarray, np.ndarray]:
    """Context ``(H,)`` for one window decided on ``day`` and the weight of every segment ``(N,)``.

    Only segments known strictly before ``day`` take part (the others weigh 0).
    """
    query = numpy_window_context(params, x, y, spec) @ params[f"{PREFIX}wq"]
    eligible = params[f"{BANK}known_day"] < day
    if SCALE in params:  # cosine: the stored keys have unit length
        query = query / max(float(np.linalg.norm(query)), _TINY) * math.exp(params[SCALE][0])
        raw = params[f"{BANK}keys"] @ query
    else:
        raw = params[f"{BANK}keys"] @ query / math.sqrt(len(query))
    # Masking (not indexing) keeps the bank in place: no copy of keys or values per call.
    scores = np.where(eligible, raw, -np.inf)
    top = max(0.0, float(scores.max())) if len(scores) else 0.0
    e = np.exp(scores - top)
    weights = e / (e.sum() + math.exp(-top))  # + the null slot: score 0, value 0
    return weights @ params[f"{BANK}values"], weights


def check_conditioner(params: dict, spec: PolicySpec, algorithm: str) -> None:
    """Raise ``ValueError`` unless ``params`` holds the encoder (and memory) of ``algorithm``."""
    ctx = context_spec_of(params)
    shapes = context_shapes(spec, ctx)
    if algorithm == "memory":
        key_width = int(params[f"{PREFIX}wq"].shape[-1])
        attention = "cosine" if SCALE in params else "dot"
        shapes.update(memory_shapes(ctx, MemorySpec(key_width=key_width, attention=attention)))
        n = int(params[f"{BANK}keys"].shape[0])
        shapes.update({f"{BANK}keys": (n, key_width), f"{BANK}values": (n, ctx.width)})
        shapes.update({k: (n,) for k in BANK_KEYS[2:]})
    extra = set(params) - set(shapes) - set(policy_part(params))
    if extra:
        raise ValueError(f"unexpected tensors {sorted(extra)} for a {algorithm} policy")
    for name, shape in shapes.items():
        if name not in params:
            raise ValueError(f"tensor {name!r} of the {algorithm} policy is missing")
        if tuple(params[name].shape) != shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(params[name].shape)}, expected {shape}"
            )

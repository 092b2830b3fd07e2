"""What the paper loop carries from one bar to the next, and how it is stored safely.

After each committed bar the state of :class:`MetaAdaptiveStrategy` (per asset:
detector, labelled window, pending labels, adapted weights, regime start,
fallback flag, last position; the base class's last targets, retries and vol
state), the broker's cash, positions and waiting orders, and the feature
EWMs are written in the bar's transaction. The next bar restores them instead
of replaying the whole history.

A stored snapshot is data from disk, never code: arrays in a safetensors
buffer (names, dtypes and shapes checked by the library), everything else in
JSON in its metadata, with a format version. Restoring checks every array
against the shape the running strategy expects (a detector against a fresh
one with the same settings) and refuses anything else with
:class:`SnapshotError`.
"""

from __future__ import annotations

import json
import math
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

import backtrader as bt
import numpy as np
import pandas as pd
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from metabt.backtests.paper.ledger import PaperError
from metabt.feeds.features import LABEL_DELAY

if TYPE_CHECKING:
    from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy

FORMAT = "metabt-paper-snapshot"
VERSION = 2

Arrays = dict[str, np.ndarray]


class SnapshotError(PaperError):
    """A stored snapshot cannot be used (unknown version, wrong shape, unreadable)."""


def _copy(values: object) -> np.ndarray:
    # A copy, never a view: the detectors update their arrays in place after the capture.
    return np.array(values, order="C", copy=True)


# -- plain objects (the detectors) -----------------------------------------------------------------


def object_state(obj: object, prefix: str, arrays: Arrays) -> dict:
    """The attributes of ``obj`` as JSON, its numpy arrays moved into ``arrays``.

    Detectors hold floats, ints, bools, tuples, lists, deques, numpy arrays
    and small helper objects; ``settings`` come from the config and are not state.
    """
    out: dict[str, Any] = {}
    for key, value in vars(obj).items():
        if key == "settings":
            continue
        out[key] = _encode(value, f"{prefix}.{key}", arrays)
    return out


def _encode(value: object, name: str, arrays: Arrays) -> object:
    if isinstance(value, np.ndarray):
        arrays[name] = _copy(value)
        return {"array": name}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, deque)):
        kind = type(value).__name__
        return {kind: [_encode(v, f"{name}.{i}", arrays) for i, v in enumerate(value)]}
    return {"object": object_state(value, name, arrays)}


def load_object_state(obj: object, raw: dict, prefix: str, arrays: Arrays) -> None:
    """Set ``obj``'s attributes from :func:`object_state`, refusing any other layout."""
    have = {k: v for k, v in vars(obj).items() if k != "settings"}
    if sorted(raw) != sorted(have):
        raise SnapshotError(f"{prefix} has fields {sorted(raw)}, expected {sorted(have)}")
    for key, template in have.items():
        setattr(obj, key, _decode(raw[key], template, f"{prefix}.{key}", arrays))


def _decode(raw: object, template: object, name: str, arrays: Arrays) -> object:
    if isinstance(template, np.ndarray):
        arr = arrays.get(raw["array"]) if isinstance(raw, dict) and "array" in raw else None
        if arr is None or arr.shape != template.shape or arr.dtype != template.dtype:
            got = None if arr is None else (arr.shape, str(arr.dtype))
            raise SnapshotError(
                f"{name} is {got}, expected {(template.shape, str(template.dtype))}"
            )
        return arr.copy()
    if isinstance(template, (list, tuple, deque)):
        kind = type(template).__name__
        items = raw.get(kind) if isinstance(raw, dict) else None
        if not isinstance(items, list) or (len(items) != len(template) and kind != "deque"):
            raise SnapshotError(f"{name} is not a {kind} of {len(template)} items")
        # Deques grow; their items are plain numbers.
        elems = [
            _decode(r, template[i] if i < len(template) else r, f"{name}.{i}", arrays)
            for i, r in enumerate(items)
        ]
        if kind == "deque":
            return deque(elems, maxlen=template.maxlen)  # type: ignore[union-attr]
        return type(template)(elems)
    if isinstance(raw, dict) and "object" in raw:
        load_object_state(template, raw["object"], name, arrays)
        return template
    if template is None or raw is None:
        return raw
    if isinstance(template, bool) or isinstance(raw, bool):
        if type(raw) is not type(template):
            raise SnapshotError(f"{name} is {raw!r}, expected a {type(template).__name__}")
        return raw
    if not isinstance(raw, (int, float)):
        raise SnapshotError(f"{name} is {raw!r}, expected a number")
    return type(template)(raw) if isinstance(template, (int, float)) else raw


# -- the strategy ----------------------------------------------------------------------------------


def strategy_state(strat: MetaAdaptiveStrategy, arrays: Arrays) -> dict:
    """Everything :class:`MetaAdaptiveStrategy` remembers after the current bar.

    Feed row numbers are run-relative, so rows become what they hold: the
    labelled window's feature vectors, and the pending labels as bars back.
    Queued warm-up adaptations are computed first: the snapshot holds weights.
    """
    strat.settle()
    assets = {}
    for d in strat.datas:
        st, name = strat._state[d], d._name
        rows = list(st.support_row)
        p = f"asset.{name}"
        arrays[f"{p}.support_x"] = _copy(st.feats[rows])
        for key in ("y", "a", "when"):
            arrays[f"{p}.support_{key}"] = np.asarray(getattr(st, f"support_{key}"), np.float64)
        arrays[f"{p}.support_bar"] = np.asarray(st.support_bar, np.int64)
        members = strat.asset_params(d)
        for i, params in enumerate(members):
            for k, v in params.items():
                arrays[f"{p}.params.{i}.{k}"] = _copy(v)
        # The feed's last rows: the next run's feed starts with them (the lags it reads).
        lo = max(0, len(d) - LABEL_DELAY)
        arrays[f"{p}.tail"] = _copy(d.feature_array[lo : len(d)])
        arrays[f"{p}.tail_vol"] = _copy(d.vol_array[lo : len(d)])
        vol = strat._vol_state.get(d)
        assets[name] = {
            "pending_back": [len(d) - 1 - r for r in st.pending],
            "bar": st.bar,
            "regime_start": st.regime_start,
            "position": st.position,
            "bars_since_adapt": st.bars_since_adapt,
            "adapted": st.adapted,
            "loss_ref": list(st.loss_ref),
            "members": len(members),
            "detector": None
            if st.detector is None
            else object_state(st.detector, f"{p}.detector", arrays),
            "last_target": strat._last_target[d],
            "retry": d in strat._retry,
            # (bars behind, close, EWM sum, EWM weight): the base class's own vol estimate
            "vol_state": None if vol is None else [len(d) - vol[0], *vol[1:]],
        }
    bank = strat._detectors
    return {
        "assets": assets,
        "order": [d._name for d in strat.datas],
        "detectors": None if bank is None else object_state(bank, "detectors", arrays),
        "first_traded": None if strat.first_traded is None else str(strat.first_traded.date()),
        "in_sample": strat.in_sample,
        "n_adaptations": strat.n_adaptations,
        "n_rejected": strat.n_rejected,
    }


def restore_strategy(strat: MetaAdaptiveStrategy, raw: dict, arrays: Arrays) -> None:
    """Put :func:`strategy_state` back into a strategy built on a short feed.

    Call it on the feed's last restored bar: each asset's pending labels point
    at its last feed rows, its labelled window is appended below its features.
    """
    names = [d._name for d in strat.datas]
    if raw["order"] != names:  # the detector bank holds one row per asset, in this order
        raise SnapshotError(f"assets {raw['order']}, expected {names}")
    if (raw["detectors"] is None) != (strat._detectors is None):
        raise SnapshotError("the snapshot's detectors do not match the strategy's detector")
    if strat._detectors is not None:
        load_object_state(strat._detectors, raw["detectors"], "detectors", arrays)
    for d in strat.datas:
        st, a, p = strat._state[d], raw["assets"][d._name], f"asset.{d._name}"
        x = _array(arrays, f"{p}.support_x", (None, st.feats.shape[1]), np.float64)
        n = len(x)
        cols = {
            key: _array(arrays, f"{p}.support_{key}", (n,), dt)
            for key, dt in (("y", np.float64), ("a", np.float64), ("when", np.float64))
        }
        bars = _array(arrays, f"{p}.support_bar", (n,), np.int64)
        keep = st.support_row.maxlen
        if keep is not None and n > keep:
            raise SnapshotError(f"{p}: {n} labelled bars, at most {keep} are kept")
        first = st.extend(x)
        st.support_row = deque(range(first, first + n), maxlen=keep)
        for key, values in cols.items():
            setattr(st, f"support_{key}", deque(values.tolist(), maxlen=keep))
        st.support_bar = deque(bars.tolist(), maxlen=keep)
        back = [int(b) for b in a["pending_back"]]
        if any(not 0 <= b < len(d) for b in back) or len(back) > (st.pending.maxlen or 0):
            raise SnapshotError(f"{p}: pending labels {back} do not fit {len(d)} restored bars")
        st.pending = deque((len(d) - 1 - b for b in back), maxlen=st.pending.maxlen)
        st.seen = len(d)
        st.bar, st.regime_start = int(a["bar"]), int(a["regime_start"])
        st.position = None if a["position"] is None else float(a["position"])
        st.bars_since_adapt, st.adapted = int(a["bars_since_adapt"]), bool(a["adapted"])
        st.loss_ref = (float(a["loss_ref"][0]), float(a["loss_ref"][1]))
        initial = strat._initial()
        if int(a["members"]) != len(initial):
            raise SnapshotError(f"{p}: {a['members']} ensemble members, expected {len(initial)}")
        params = [
            {k: _array(arrays, f"{p}.params.{i}.{k}", v.shape, v.dtype) for k, v in member.items()}
            for i, member in enumerate(initial)
        ]
        strat._set_params(d, params)
        if (a["detector"] is None) != (st.detector is None):
            raise SnapshotError(f"{p}: the snapshot's detector does not match the strategy's")
        if st.detector is not None:
            load_object_state(st.detector, a["detector"], f"{p}.detector", arrays)
        strat._last_target[d] = float(a["last_target"])
        if a["retry"]:
            strat._retry.add(d)
        if a["vol_state"] is not None:
            lag, *rest = a["vol_state"]
            strat._vol_state[d] = (len(d) - int(lag), *map(float, rest))
    first = raw["first_traded"]
    strat.first_traded = None if first is None else pd.Timestamp(first)
    strat.in_sample = bool(raw["in_sample"])
    strat.n_adaptations, strat.n_rejected = int(raw["n_adaptations"]), int(raw["n_rejected"])


def _array(arrays: Arrays, name: str, shape: tuple, dtype: object) -> np.ndarray:
    arr = arrays.get(name)
    ok = (
        arr is not None
        and arr.dtype == np.dtype(dtype)  # type: ignore[call-overload]
        and arr.ndim == len(shape)
        and all(want is None or got == want for got, want in zip(arr.shape, shape))
    )
    if not ok:
        got = None if arr is None else (arr.shape, str(arr.dtype))
        raise SnapshotError(f"{name} is {got}, expected shape {shape} of {np.dtype(dtype)}")  # type: ignore[call-overload]
    return arr.copy()  # type: ignore[union-attr]


# -- the broker ------------------------------------------------------------------------------------


def broker_state(broker: bt.brokers.BackBroker, order_ids: dict[int, str]) -> dict:
    """Cash, positions (in the broker's own order) and the orders waiting to fill."""
    return {
        "cash": broker.cash,
        "positions": [
            [d._name, float(p.size), float(p.price), p.adjbase] for d, p in broker.positions.items()
        ],
        "orders": [
            [order_ids[o.ref], o.data._name, float(o.created.size)]
            for o in broker.pending
            if o is not None
        ],
    }


def restore_broker(strat: bt.Strategy, raw: dict) -> dict[int, str]:
    """Set the broker's cash and positions and re-place its waiting orders (same sizes,
    same order); returns the new order refs' ids."""
    by_name = {d._name: d for d in strat.datas}
    broker = strat.broker
    try:
        cash = float(raw["cash"])
        positions = [(by_name[a], float(s), float(p), adj) for a, s, p, adj in raw["positions"]]
        orders = [(str(oid), by_name[a], float(s)) for oid, a, s in raw["orders"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"broker state unreadable ({type(exc).__name__}: {exc})") from None
    if not math.isfinite(cash):
        raise SnapshotError(f"broker cash {cash}")
    broker.cash = cash
    broker.positions.clear()
    for d, size, price, adjbase in positions:
        pos = bt.Position(size, price)
        pos.adjbase = None if adjbase is None else float(adjbase)
        pos.datetime = d.datetime.datetime(0)  # as the broker stamps it each bar (interest)
        broker.positions[d] = pos
    ids = {}
    for oid, d, size in orders:
        order = strat.buy(data=d, size=size) if size > 0 else strat.sell(data=d, size=-size)
        ids[order.ref] = oid
    return ids


# -- bytes -----------------------------------------------------------------------------------------


def encode(state: dict, arrays: Arrays) -> bytes:
    """``state`` (JSON-able) and ``arrays`` as one safetensors buffer."""
    meta = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(state)}
    return save_arrays(arrays, metadata=meta)


def decode(blob: bytes) -> tuple[dict, Arrays]:
    """The state and arrays of :func:`encode`; :class:`SnapshotError` for anything else."""
    try:
        (size,) = struct.unpack("<Q", blob[:8])
        meta = json.loads(blob[8 : 8 + size]).get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError):
        raise SnapshotError("the snapshot is not a metabt snapshot (unreadable header)") from None
    if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
        raise SnapshotError(
            f"snapshot format {meta.get('format')!r} version {meta.get('version')!r} "
            f"(this metabt reads {FORMAT!r} version {VERSION})"
        )
    try:
        arrays = load_arrays(blob)
        state = json.loads(meta["state"])
    except Exception as exc:  # safetensors raises its own error types on bad buffers
        raise SnapshotError(f"the snapshot's arrays are unreadable ({exc})") from None
    return state, arrays

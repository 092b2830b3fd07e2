"""Trading-time cost of the context and regime-memory policies (``metabt bench``).

Measured as the strategy pays it: one ``adapt`` call on a full support window
(encoder pass, or encoder pass plus attention over the bank, then the FiLM
fold and the support loss before and after) and one per-bar position with the
folded weights. Random weights of the study's sizes; a bank of
``bank_size`` segments all known before the decision, the worst case.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np

from metabt.metamodels.bench import _times_ms
from metabt.metamodels.context_policy import ContextSpec, init_context_params
from metabt.metamodels.memory_policy import (
    BANK,
    COSINE_SCALE0,
    SCALE,
    MemorySpec,
    init_memory_params,
)
from metabt.metamodels.numpy_policy import positions as numpy_positions
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy
from metabt.strategies.conditioned_policy import ContextPolicy, MemoryPolicy

TARGETS = {"adapt_p50_ms": 0.25, "infer_us": 20.0, "bank_size": 2000}


def bench_conditioned(
    repeats: int = 5,
    n_features: int = 14,
    hidden: int = 16,
    window: int = 120,
    bank_size: int = int(TARGETS["bank_size"]),
    seed: int = 0,
) -> dict[str, Any]:
    """``context_adapt_p50_ms``, ``memory_adapt_p50_ms``, ``context_infer_us``, ``memory_infer_us``.

    Also ``memory_cosine_*``: the memory policy with cosine attention (unit-length
    keys and the learned scale; ``synthetic.toml`` trades it), reported without a
    target of its own. ``window`` is the longest support (the strategy's
    ``max_window``); the figures are medians over ``400 * repeats`` adaptations
    and ``2000 * repeats`` bars.
    """
    spec, ctx, mem = PolicySpec(n_features, (hidden,)), ContextSpec(), MemorySpec()
    weights = to_numpy(
        {
            **init_params(spec, seed),
            **init_context_params(spec, ctx, seed),
            **init_memory_params(ctx, mem, seed),
        }
    )
    rng = np.random.default_rng(seed)
    day = 20_000
    weights.update(
        {
            f"{BANK}keys": rng.standard_normal((bank_size, mem.key_width)),
            f"{BANK}values": rng.standard_normal((bank_size, ctx.width)),
            f"{BANK}known_day": rng.integers(0, day, bank_size).astype(float),
            f"{BANK}start_day": np.zeros(bank_size),
            f"{BANK}end_day": np.zeros(bank_size),
            f"{BANK}asset": np.zeros(bank_size),
        }
    )
    keys = weights[f"{BANK}keys"]
    cosine = {
        **weights,
        SCALE: np.array([math.log(COSINE_SCALE0)]),
        f"{BANK}keys": keys / np.linalg.norm(keys, axis=1, keepdims=True),
    }
    names = tuple(f"f{i}" for i in range(n_features))
    policies = {
        "context": ContextPolicy(spec, ObjectiveSpec(), weights, names),
        "memory": MemoryPolicy(spec, ObjectiveSpec(), weights, names, bank_assets=("A",)),
        "memory_cosine": MemoryPolicy(spec, ObjectiveSpec(), cosine, names, bank_assets=("A",)),
    }
    x, y = rng.standard_normal((window, n_features)), rng.standard_normal(window)
    inv_vol = rng.uniform(40, 160, window)
    when = np.datetime64(day, "D")
    out: dict[str, Any] = {}
    bar = x[-1]
    for name, pol in policies.items():
        t = _times_ms(partial(pol.adapt, x, y, inv_vol, when=when), 400 * repeats)
        out[f"{name}_adapt_p50_ms"] = float(np.percentile(t, 50))
        adapted = pol.adapt(x, y, inv_vol, when=when)[0]
        per_bar = _times_ms(partial(numpy_positions, adapted, bar, spec), 2000 * repeats, 50)
        out[f"{name}_infer_us"] = 1e3 * float(np.median(per_bar))
    out["conditioned_targets"] = dict(TARGETS)
    return out

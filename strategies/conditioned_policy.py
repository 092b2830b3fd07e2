"""The context and regime-memory policies as the meta-adaptive strategy trades them (numpy).

Both have the interface of :class:`strategies.meta_adaptive.AdaptivePolicy`:
``params`` are the weights traded before any adaptation (the unconditioned
policy), and ``adapt(x, y, inv_vol, when)`` turns the labelled window since the
regime change into plain policy weights (the FiLM modulation folded into the
first layer), so per-bar inference is the same numpy MLP for every learner.
The memory policy also returns, as a fourth item, which past segments it
attended to; the strategy logs it with the adaptation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from metabt.feeds.features import FeatureSpec
from metabt.metamodels.context_policy import numpy_fold, numpy_window_context, policy_part
from metabt.metamodels.memory_policy import BANK, numpy_attend
from metabt.metamodels.model import MetaModel
from metabt.metamodels.numpy_policy import NumpyParams, support_loss
from metabt.metamodels.specs import ObjectiveSpec, PolicySpec

# Attended segments named in the adaptation log, heaviest first.
TOP_SEGMENTS = 3


@dataclass(frozen=True)
class ContextPolicy:
    """Adapt by reading the window with the context encoder.

    Attributes
    ----------
    weights : dict of ndarray
        Policy, encoder and FiLM weights (float64).
    feature_names : tuple of str
        Feed lines to read, in the order the network expects.
    feature_spec, training_period : as for :class:`strategies.adaptive_policy.AdaptivePolicy`.
    """

    policy_spec: PolicySpec
    objective_spec: ObjectiveSpec
    weights: NumpyParams
    feature_names: tuple[str, ...]
    feature_spec: FeatureSpec | None = None
    training_period: tuple[pd.Timestamp, pd.Timestamp] | None = None
    params: NumpyParams = field(init=False, repr=False)

    @property
    def trained_until(self) -> pd.Timestamp | None:
        """The last bar date its training saw: trading must start after it."""
        return None if self.training_period is None else self.training_period[1]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", policy_part(self.weights))

    def context(self, x: np.ndarray, y: np.ndarray, when: object) -> np.ndarray:
        """Context vector of the window ``x, y`` read at ``when``."""
        return numpy_window_context(self.weights, x, y, self.policy_spec)

    def adapt(
        self,
        x: np.ndarray,
        y: np.ndarray,
        inv_vol: np.ndarray | None = None,
        when: object = None,
    ) -> tuple:
        """Conditioned weights and the support loss before and after."""
        spec, obj = self.policy_spec, self.objective_spec
        adapted = numpy_fold(self.weights, self.context(x, y, when))
        before = support_loss(self.params, x, y, spec, obj, inv_vol)
        return adapted, before, support_loss(adapted, x, y, spec, obj, inv_vol)


@dataclass(frozen=True)
class MemoryPolicy(ContextPolicy):
    """Adapt by attending over the memory bank's segments known before ``when``.

    Attributes
    ----------
    bank_assets : tuple of str
        Names of the assets the bank's segments come from.
    """

    bank_assets: tuple[str, ...] = ()

    def attention(self, x: np.ndarray, y: np.ndarray, when: object) -> tuple:
        if when is None:
            raise ValueError("the memory policy needs the decision date (when=...)")
        # numpy's stubs leave out datetime64(datetime64 | Timestamp, unit), which works.
        day = int(np.datetime64(when, "D").astype(np.int64))  # type: ignore[call-overload]
        return numpy_attend(self.weights, x, y, day, self.policy_spec)

    def context(self, x: np.ndarray, y: np.ndarray, when: object) -> np.ndarray:
        return self.attention(x, y, when)[0]

    def describe(self, weights: np.ndarray) -> str:
        """``"SPY 2008-01-02..2008-03-14 0.41; ..."``: the most attended segments."""
        parts = []
        top = min(TOP_SEGMENTS, len(weights))
        heaviest = np.argpartition(-weights, top - 1)[:top] if top else weights[:0]
        for row in heaviest[np.argsort(-weights[heaviest])]:
            if weights[row] <= 0:
                break
            asset = self.bank_assets[int(self.weights[f"{BANK}asset"][row])]
            first, last = (
                np.datetime64(int(self.weights[f"{BANK}{k}"][row]), "D")
                for k in ("start_day", "end_day")
            )
            parts.append(f"{asset} {first}..{last} {weights[row]:.2f}")
        return "; ".join(parts)

    def adapt(
        self,
        x: np.ndarray,
        y: np.ndarray,
        inv_vol: np.ndarray | None = None,
        when: object = None,
    ) -> tuple:
        """Conditioned weights, support loss before and after, and the attended segments."""
        spec, obj = self.policy_spec, self.objective_spec
        context, weights = self.attention(x, y, when)
        adapted = numpy_fold(self.weights, context)
        before = support_loss(self.params, x, y, spec, obj, inv_vol)
        after = support_loss(adapted, x, y, spec, obj, inv_vol)
        return adapted, before, after, self.describe(weights)


def conditioned_policy(model: MetaModel, features: FeatureSpec) -> ContextPolicy:
    """The strategy's view of a trained context or memory model."""
    common = (model.policy_spec, model.objective_spec, model.numpy_params(), features.names)
    if model.algorithm == "memory":
        return MemoryPolicy(*common, features, model.seen_period(), model.bank_assets)
    return ContextPolicy(*common, features, model.seen_period())

"""The policy a :class:`MetaAdaptiveStrategy` trades: weights, inner loop, features, period.

A checkpoint folder becomes one ready object with :func:`load_policy`; a model
trained in memory with :func:`adaptive_policy`. The policy carries the feature
spec its feed must provide and the bars its training saw, so the strategy can
refuse to trade them (no look-ahead, also outside the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from metabt.feeds.errors import DataError
from metabt.feeds.features import FeatureSpec
from metabt.metamodels import numpy_policy
from metabt.metamodels.model import FORWARD_LEARNERS, MetaModel, length_scale
from metabt.metamodels.model_io import load_model
from metabt.metamodels.numpy_policy import NumpyLR, NumpyParams
from metabt.metamodels.specs import ObjectiveSpec, PolicySpec
from metabt.strategies.conditioned_policy import ContextPolicy, conditioned_policy


class InSampleError(DataError):
    """A policy was asked to trade bars its training saw (look-ahead)."""


@dataclass(frozen=True)
class AdaptivePolicy:
    """Everything the strategy needs to adapt and run a policy, in numpy.

    Plain numpy and frozen dataclasses: it pickles, so ``cerebro.optstrategy``
    can send it to worker processes.

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
    lr_length_power : float
        The step is ``inner_lr * (n / 60) ** lr_length_power`` on an ``n``-bar window.
    feature_spec : FeatureSpec or None
        How the feed computes those features (:func:`feeds.btfeed.feature_feed`).
    training_period : (Timestamp, Timestamp) or None
        First and last bar dates (inclusive) training and validation looked at;
        None for a policy that saw no data (a random initialisation).
    """

    policy_spec: PolicySpec
    objective_spec: ObjectiveSpec
    params: NumpyParams
    inner_lr: NumpyLR
    inner_steps: int
    feature_names: tuple[str, ...]
    lr_length_power: float = 0.0
    feature_spec: FeatureSpec | None = None
    training_period: tuple[pd.Timestamp, pd.Timestamp] | None = None

    @property
    def trained_until(self) -> pd.Timestamp | None:
        """The last bar date its training saw: trading must start after it."""
        return None if self.training_period is None else self.training_period[1]

    def step_size(self, n: int) -> NumpyLR:
        """The inner step size(s) for a window of ``n`` bars."""
        scale = float(length_scale(n, self.lr_length_power))
        if isinstance(self.inner_lr, dict):
            return {k: v * scale for k, v in self.inner_lr.items()}
        return float(self.inner_lr) * scale

    def adapt(
        self,
        x: np.ndarray,
        y: np.ndarray,
        inv_vol: np.ndarray | None = None,
        when: object = None,
    ) -> tuple[NumpyParams, float, float]:
        """Adapted weights and the support loss before and after.

        ``when`` (the decision date) is unused here; the memory policy of
        :mod:`strategies.conditioned_policy` needs it to pick past segments.
        """
        spec, obj = self.policy_spec, self.objective_spec
        adapted = numpy_policy.adapt(
            self.params, x, y, self.inner_steps, self.step_size(len(y)), spec, obj, inv_vol
        )
        before, after = (
            numpy_policy.support_loss(p, x, y, spec, obj, inv_vol) for p in (self.params, adapted)
        )
        return adapted, before, after


def together(policies: tuple[object, ...]) -> bool:
    """Whether :func:`adapt_batch` can adapt these policies in one pass.

    True for gradient-adapted policies of one network shape, objective and
    number of steps (e.g. an ensemble of meta-training seeds); their weights and
    step sizes may differ. A subclass that overrides ``adapt`` is always asked
    itself, one window at a time.
    """
    first = policies[0]
    return all(
        isinstance(p, AdaptivePolicy)
        and isinstance(first, AdaptivePolicy)
        and type(p).adapt is AdaptivePolicy.adapt
        and (p.policy_spec, p.objective_spec, p.inner_steps)
        == (first.policy_spec, first.objective_spec, first.inner_steps)
        for p in policies
    )


class BatchAdapter:
    """:func:`adapt_batch` for one fixed ensemble: the members' weights are stacked once.

    The strategy adapts the same policies on hundreds of bars; stacking their
    weights (and, per window length, their step sizes) on every call cost as much
    as a tenth of the adaptation itself.
    """

    def __init__(self, policies: tuple[AdaptivePolicy, ...]) -> None:
        self.policies = policies
        first = policies[0]
        self._start = {
            k: np.stack([p.params[k] for p in policies]).astype(np.float64) for k in first.params
        }
        self._rates: dict[int, dict[str, np.ndarray]] = {}

    def _rates_for(self, n: int) -> dict[str, np.ndarray]:
        """Each member's step size for ``n``-bar windows, broadcast to its parameters' shapes."""
        if n not in self._rates:
            steps = [p.step_size(n) for p in self.policies]
            self._rates[n] = {
                k: np.stack(
                    [
                        np.broadcast_to(r[k] if isinstance(r, dict) else r, v.shape[1:])
                        for r in steps
                    ]
                )
                for k, v in self._start.items()
            }
        return self._rates[n]

    def __call__(
        self, x: np.ndarray, y: np.ndarray, inv_vol: np.ndarray
    ) -> list[list[tuple[NumpyParams, float, float]]]:
        """What :func:`adapt_batch` returns for these policies."""
        first, members = self.policies[0], len(self.policies)
        spec, obj = first.policy_spec, first.objective_spec
        n_win, n = len(x), x.shape[1]
        start = {k: np.repeat(v, n_win, axis=0) for k, v in self._start.items()}
        rates = {k: np.repeat(v, n_win, axis=0) for k, v in self._rates_for(n).items()}
        xs, ys, inv = (np.concatenate([v] * members) for v in (x, y, inv_vol))
        adapted = numpy_policy.adapt(start, xs, ys, first.inner_steps, rates, spec, obj, inv)
        before, after = (
            numpy_policy.trading_loss(numpy_policy.positions(p, xs, spec), ys, obj, inv)
            for p in (start, adapted)
        )
        return [
            [
                (
                    {k: v[m * n_win + j] for k, v in adapted.items()},
                    float(before[m * n_win + j]),
                    float(after[m * n_win + j]),
                )
                for m in range(members)
            ]
            for j in range(n_win)
        ]


def adapt_batch(
    policies: tuple[AdaptivePolicy, ...], x: np.ndarray, y: np.ndarray, inv_vol: np.ndarray
) -> list[list[tuple[NumpyParams, float, float]]]:
    """Adapt every policy on every window at once; what :meth:`AdaptivePolicy.adapt` gives.

    ``x`` is ``(A, n, F)``, ``y`` and ``inv_vol`` ``(A, n)``: ``A`` windows of one
    length. The ``M`` policies' weights are stacked ``M * A`` deep and adapted in
    one batched pass (:func:`metamodels.numpy_policy.adapt`), which costs little
    more than adapting one of them. Returns, per window, per policy, the
    adapted weights and the support loss before and after. To adapt the same
    policies many times, build a :class:`BatchAdapter` once and call it.
    """
    return BatchAdapter(policies)(x, y, inv_vol)


def adaptive_policy(
    model: MetaModel, features: FeatureSpec | None = None
) -> AdaptivePolicy | ContextPolicy:
    """The numpy view of ``model`` that the strategy adapts and runs.

    ``features`` defaults to the model's own feature spec. Gradient learners
    (MAML, Reptile, ...) adapt by SGD; the context and memory learners by a
    forward pass (:mod:`strategies.conditioned_policy`).
    """
    spec = features if features is not None else model.feature_spec
    if spec is None:
        raise ValueError("the model carries no feature spec; pass features=FeatureSpec(...)")
    if model.algorithm in FORWARD_LEARNERS:
        return conditioned_policy(model, spec)
    return AdaptivePolicy(
        model.policy_spec,
        model.objective_spec,
        model.numpy_params(),
        model.numpy_inner_lr(),
        model.inner_steps,
        spec.names,
        model.lr_length_power,
        spec,
        model.seen_period(),
    )


@lru_cache(maxsize=8)
def _load(path: Path, stamp: tuple) -> AdaptivePolicy | ContextPolicy:
    model, _ = load_model(path)
    return adaptive_policy(model)


def _stamp(path: Path) -> tuple:
    # A checkpoint re-trained in place has new files: never serve the cached old one.
    if not path.is_dir():
        return ()
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(path.iterdir()))


def load_policy(path: str | Path) -> AdaptivePolicy | ContextPolicy:
    """Load a checkpoint folder (``metabt train --out``) as a policy ready to trade.

    Parameters
    ----------
    path : str or Path
        The checkpoint folder (``model.safetensors`` + ``model.json``).

    Returns
    -------
    AdaptivePolicy
        Weights, inner loop, ``feature_spec`` (pass it to the feed) and
        ``training_period`` (the strategy refuses to trade those bars).

    Raises
    ------
    metamodels.checkpoint.CheckpointError
        The folder is missing, damaged or does not describe a valid model.
    """
    path = Path(path).resolve()
    return _load(path, _stamp(path))

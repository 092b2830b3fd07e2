"""Save and load a :class:`MetaModel` as a checkpoint folder.

The checkpoint module knows tensors and a sidecar; this module knows what a
trained model is made of (specs, inner loop, training period) and rebuilds
exactly the same object, so a strategy run from a checkpoint trades what
was trained.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch

from metabt.feeds.features import FeatureSpec
from metabt.feeds.tasks import TaskSpec
from metabt.metamodels.checkpoint import load_checkpoint, save_checkpoint, split_inner_lrs
from metabt.metamodels.checkpoint_meta import INNER_LR_PREFIX, CheckpointError
from metabt.metamodels.context_policy import policy_part
from metabt.metamodels.memory_policy import check_conditioner
from metabt.metamodels.model import FORWARD_LEARNERS, MetaModel
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, check_params


def _spec(cls: type, fields: dict[str, Any], path: Path, key: str) -> Any:
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: sidecar key {key!r} does not hold valid {key} settings "
            f"({exc}); re-train or fix model.json"
        ) from None


def save_model(model: MetaModel, path: str | Path, config: dict[str, Any]) -> Path:
    """Write ``model`` (weights, inner LRs, specs, training period) to a checkpoint folder."""
    if model.train_period is None or model.feature_spec is None or model.task_spec is None:
        raise ValueError(
            "only a model trained on frames (with feature/task specs and a "
            "training period) can be saved"
        )
    tensors = {k: v.detach().float() for k, v in model.params.items()}
    per_parameter = isinstance(model.inner_lr, dict)
    if per_parameter:
        tensors.update({INNER_LR_PREFIX + k: v.detach().float() for k, v in model.inner_lr.items()})  # type: ignore[union-attr]
    # The sidecar's period is inclusive: the last bar seen, including validation.
    end = model.seen_period()[1].date().isoformat()  # type: ignore[index]
    spec = dataclasses.asdict(model.policy_spec)
    meta = {
        "algorithm": model.algorithm,
        "policy": {**spec, "hidden": list(model.policy_spec.hidden)},
        "features": dataclasses.asdict(model.feature_spec),
        "task": dataclasses.asdict(model.task_spec),
        "objective": dataclasses.asdict(model.objective_spec),
        "inner": {
            "steps": model.inner_steps,
            "lr": None if per_parameter else float(model.inner_lr),  # type: ignore[arg-type]
            "per_parameter_lr": per_parameter,
            "length_power": float(model.lr_length_power),
        },
        "training_period": {"start": model.train_period[0], "end": end},
        "config": config,
        "bank_assets": list(model.bank_assets),
    }
    return save_checkpoint(path, tensors, meta)


def load_model(path: str | Path) -> tuple[MetaModel, pd.Timestamp]:
    """Load a checkpoint folder as a MetaModel.

    Returns
    -------
    model, last_bar
        The model and the last bar date its training saw (inclusive), so a
        caller can refuse to test it on data it has already seen.
    """
    path = Path(path)
    tensors, meta = load_checkpoint(path)
    params, lrs = split_inner_lrs(tensors)
    policy_spec = _spec(
        PolicySpec, {**meta.policy, "hidden": tuple(meta.policy.get("hidden", ()))}, path, "policy"
    )
    try:
        check_params(policy_part(params), policy_spec)
        if meta.algorithm in FORWARD_LEARNERS:
            check_conditioner(params, policy_spec, meta.algorithm)
        elif set(params) != set(policy_part(params)):
            raise ValueError(f"unexpected tensors {sorted(set(params) - set(policy_part(params)))}")
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: {exc}; the weights do not match the sidecar's policy"
        ) from None
    feature_spec = _spec(FeatureSpec, meta.features, path, "features")
    if len(feature_spec.names) != policy_spec.n_features:
        raise CheckpointError(
            f"{path}: the feature spec gives {len(feature_spec.names)} features "
            f"but the policy takes {policy_spec.n_features}"
        )
    # The sidecar's schema guarantees inner.lr is a number when per_parameter_lr is false.
    inner_lr: float | dict[str, torch.Tensor] = (
        lrs if meta.inner.per_parameter_lr else float(cast(float, meta.inner.lr))
    )
    model = MetaModel(
        params=params,
        inner_lr=inner_lr,
        inner_steps=meta.inner.steps,
        algorithm=meta.algorithm,
        lr_length_power=meta.inner.length_power,
        policy_spec=policy_spec,
        objective_spec=_spec(ObjectiveSpec, meta.objective, path, "objective"),
        feature_spec=feature_spec,
        task_spec=_spec(TaskSpec, meta.task.model_dump(), path, "task"),
        # MetaModel periods are [start, end): the day after the sidecar's inclusive last bar.
        train_period=(
            meta.training_period.start.isoformat(),
            (meta.training_period.end + timedelta(days=1)).isoformat(),
        ),
        bank_assets=tuple(meta.bank_assets),
    )
    return model, pd.Timestamp(meta.training_period.end)

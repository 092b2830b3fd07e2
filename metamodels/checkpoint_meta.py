"""The checkpoint sidecar schema: what ``model.json`` must hold, checked field by field.

:class:`CheckpointMeta` and its nested models are strict pydantic models (unknown keys are an
error, values are frozen). :func:`validate_meta` turns a pydantic failure into one
:class:`CheckpointError` line naming the file, the key (with a "did you mean" hint for a typo)
and the fix. Reading and writing the files is :mod:`metamodels.checkpoint`; import the schema,
:class:`CheckpointError` and :data:`INNER_LR_PREFIX` from here.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from metabt.feeds.did_you_mean import did_you_mean, known_fields

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INNER_LR_PREFIX",
    "CheckpointError",
    "CheckpointMeta",
    "InnerMeta",
    "TaskMeta",
    "TensorInfo",
    "TrainingPeriod",
    "validate_meta",
]

FORMAT = "metabt-checkpoint"
FORMAT_VERSION = 2
INNER_LR_PREFIX = "inner_lr."


class CheckpointError(ValueError):
    """One clear line: the checkpoint file, what is wrong with it, what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorInfo(_Strict):
    """Shape and dtype of one stored tensor, as recorded in the sidecar."""

    shape: list[NonNegativeInt]
    dtype: Literal["float32"]


class TaskMeta(BaseModel):
    """Window lengths (bars) the policy was meta-trained on; other task-builder keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)
    min_support: PositiveInt
    max_support: PositiveInt
    min_query: PositiveInt
    max_query: PositiveInt


class InnerMeta(_Strict):
    """The inner (adaptation) loop: ``lr`` is null when the LRs are per-parameter tensors."""

    steps: NonNegativeInt
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None
    per_parameter_lr: bool
    # exponent k of the step's dependence on the window length n: lr * (n / 60) ** k
    length_power: Annotated[float, Field(ge=-5, le=5, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _lr_matches_mode(self) -> InnerMeta:
        if self.per_parameter_lr and self.lr is not None:
            raise ValueError("inner.lr must be null when inner.per_parameter_lr is true")
        if not self.per_parameter_lr and self.lr is None:
            raise ValueError("inner.lr must be a positive number when per_parameter_lr is false")
        return self


class TrainingPeriod(_Strict):
    """First and last date of the bars meta-training saw (inclusive)."""

    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> TrainingPeriod:
        if not self.start < self.end:
            raise ValueError(f"training_period.start {self.start} must be before end {self.end}")
        return self


class CheckpointMeta(_Strict):
    """The ``model.json`` sidecar. Unknown keys are an error, so a typo never passes silently."""

    # Keep NaN/inf as floats when dumping so json.dumps(allow_nan=False) refuses them, instead
    # of pydantic's default of quietly writing null into the saved config.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    format: Literal["metabt-checkpoint"]
    format_version: Literal[2]  # 2: variable-length tasks, length_power
    algorithm: Literal["maml", "fomaml", "reptile", "metasgd", "erm", "random", "context", "memory"]
    policy: dict[str, Any]
    features: dict[str, Any]
    task: TaskMeta
    objective: dict[str, Any]
    inner: InnerMeta
    training_period: TrainingPeriod
    config: dict[str, Any]
    created: datetime
    tensors: dict[str, TensorInfo]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # Memory policy: asset names its bank's "bank.asset" indices refer to.
    bank_assets: list[str] = []

    @model_validator(mode="after")
    def _inner_lrs_consistent(self) -> CheckpointMeta:
        # Which inner LR adapts the policy must be unambiguous: what was trained is what trades.
        lrs = [n for n in self.tensors if n.startswith(INNER_LR_PREFIX)]
        if self.inner.per_parameter_lr and not lrs:
            raise ValueError(f"inner.per_parameter_lr is true but no '{INNER_LR_PREFIX}*' tensors")
        if not self.inner.per_parameter_lr and lrs:
            raise ValueError(
                f"tensor '{lrs[0]}' is an inner LR but inner.per_parameter_lr is false"
            )
        for name in lrs:
            param = self.tensors.get(name[len(INNER_LR_PREFIX) :])
            if param is None:
                raise ValueError(f"tensor '{name}' has no matching parameter tensor")
            try:
                np.broadcast_shapes(tuple(self.tensors[name].shape), tuple(param.shape))
            except ValueError:
                raise ValueError(
                    f"tensor '{name}' shape {self.tensors[name].shape} does not fit its "
                    f"parameter's shape {param.shape}"
                ) from None
        return self


def validate_meta(fields: dict[str, Any], where: str, fix: str) -> CheckpointMeta:
    """``fields`` as a :class:`CheckpointMeta`, or one :class:`CheckpointError` line.

    The line names ``where`` (the file or call), the first bad key (an unknown key first, with a
    "did you mean" hint, since it is usually a typo of a missing one) and ends with ``fix``.
    """
    try:
        return CheckpointMeta.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors()
    # An unknown key usually is a typo of a missing one: report it first, with the hint.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    key = ".".join(str(part) for part in err["loc"])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        suggestion = did_you_mean(
            str(err["loc"][-1]), known_fields(CheckpointMeta, err["loc"][:-1])
        )
        hint = f" ({suggestion})" if suggestion else ""
        msg = f"unknown key '{key}'{hint}"
    elif err["type"] == "missing":
        msg = f"missing key '{key}'"
    else:
        text = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] == "value_error" else f" (got {err['input']!r})"
        msg = f"key '{key}': {text}{got}" if key else text
    raise CheckpointError(f"{where}: {msg}{more}; {fix}")

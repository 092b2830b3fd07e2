"""Request and response models of the model service, and the checks bars go through.

Pydantic checks the shape (types, missing and unknown fields); the bars of each
asset then go through :func:`feeds.validate.validate_bars`, the very rules a CSV
file passes (finite numbers, prices > 0, volume >= 0, sorted unique dates,
High/Low around Open/Close), so a history the CLI would refuse is refused here
too. Every refusal is a 422 whose detail names the asset, the row (counted from
0 in the request's list) and the field.

Per-request ``settings`` use the keys of the study config's ``[strategy]`` and
``[detector]`` sections and are validated by the same code as a TOML file.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from metabt.backtests.config import ConfigError, StudyConfig, parse_config
from metabt.backtests.serve.errors import ApiError
from metabt.feeds.errors import DataError
from metabt.feeds.loaders import Frames
from metabt.feeds.validate import require_bars, validate_bars, validate_symbol

# Only what changes how the stored model trades; features, windows of the task and
# the objective are fixed by training, and data/meta sections mean nothing here.
SETTINGS_SECTIONS = ("strategy", "detector")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Bar(_Strict):
    """One daily bar; prices already adjusted for splits and dividends."""

    date: str = Field(description="ISO date of the bar, e.g. 2017-01-03", examples=["2017-01-03"])
    open: float
    high: float
    low: float
    close: float
    volume: float


class Settings(_Strict):
    """Overrides of the model's stored strategy settings (keys as in the study TOML)."""

    strategy: dict[str, Any] = Field(
        default_factory=dict, examples=[{"min_window": 60, "long_only": True}]
    )
    detector: dict[str, Any] = Field(default_factory=dict, examples=[{"name": "cusum"}])


class SignalRequest(_Strict):
    """Bars per asset, oldest first, ending on the same date for every asset."""

    bars: dict[str, list[Bar]] = Field(min_length=1, description="symbol -> bars, oldest first")
    settings: Settings | None = None


class AssetDecision(BaseModel):
    weight: float = Field(description="target portfolio weight for the next open")
    position: float | None = Field(
        description="the policy's position in [-1, 1] before "
        "sizing; null if the features are undefined"
    )
    change_detected: bool = Field(
        description="the regime detector fired on the last bar and the policy was re-adapted"
    )
    last_change: str | None = Field(
        description="last bar on which a detected change re-adapted the policy"
    )
    last_adaptation: str | None
    trigger: str | None = Field(description="what caused the last adaptation")
    window: int = Field(description="bars of the last adaptation window (0 = never adapted)")
    loss_before: float | None
    loss_after: float | None


class SignalResponse(BaseModel):
    model: str
    asof: str = Field(description="date of the last bar: the decision is taken at its close")
    assets: dict[str, AssetDecision]
    warnings: list[str] = Field(default_factory=list)


def apply_settings(config: StudyConfig, settings: Settings | None) -> StudyConfig:
    """The model's config with the request's strategy/detector overrides, re-validated.

    Raises
    ------
    ApiError
        422 naming the bad key, with a "did you mean" hint for a typo.
    """
    if settings is None or not (settings.strategy or settings.detector):
        return config
    raw = config.model_dump(mode="json")
    for section in SETTINGS_SECTIONS:
        raw[section] = {**raw[section], **getattr(settings, section)}
    try:
        return parse_config(raw, "settings")
    except ConfigError as exc:
        raise ApiError(422, "invalid_settings", str(exc)) from None


def frames_from_request(bars: dict[str, list[Bar]], min_bars: int) -> Frames:
    """Validated canonical frames, one per asset, in the request's order.

    Raises
    ------
    ApiError
        422 for a bad symbol, a bar CSV input would refuse, too few bars, or
        assets whose last bars are on different dates.
    """
    frames: Frames = {}
    for symbol, rows in bars.items():
        where = f"bars.{symbol}"
        try:
            validate_symbol(symbol)
            if not rows:
                raise DataError(f"{where}: no bars; send at least {min_bars}, oldest first")
            raw = pd.DataFrame(
                {
                    "Date": [r.date for r in rows],
                    "Open": [r.open for r in rows],
                    "High": [r.high for r in rows],
                    "Low": [r.low for r in rows],
                    "Close": [r.close for r in rows],
                    "Volume": [r.volume for r in rows],
                },
                # object: an error quotes the value as sent (nan), not as numpy's repr
                dtype=object,
            )
            frame = validate_bars(raw, where)
            require_bars(frame, min_bars, where, "the strategy's warm-up (strategy.warmup_bars)")
        except DataError as exc:
            raise ApiError(422, "invalid_bars", str(exc)) from None
        frames[symbol] = frame
    ends = {s: f.index[-1] for s, f in frames.items()}
    first = next(iter(ends))
    for symbol, end in ends.items():
        if end != ends[first]:
            raise ApiError(
                422,
                "invalid_bars",
                f"bars.{symbol}: last bar {end.date()} differs from {first}'s "
                f"{ends[first].date()}; send every asset up to the same date",
            )
    return frames

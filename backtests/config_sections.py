"""The sections of a study config (``[data]``, ``[meta]``, ``[strategy]``, ...) as pydantic models.

Sections that stand for a library dataclass (``[features]``, ``[task]``, ``[policy]``,
``[meta]``, ``[costs]``) are built from it, so the dataclass stays the single source of
every key and default; the others are written here with their bounds and checks.
:mod:`backtests.config` assembles them into :class:`StudyConfig` and parses files.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    TypeAlias,
    get_origin,
    get_type_hints,
)

import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from metabt.feeds.features import FeatureSpec
from metabt.feeds.tasks import TaskSpec
from metabt.feeds.vol_features import VolFeatureSpec
from metabt.metamodels.specs import ObjectiveSpec, PolicySpec
from metabt.metamodels.train_config import TrainConfig
from metabt.strategies.base import TargetWeightStrategy
from metabt.strategies.engine import CostSpec
from metabt.strategies.meta_params import META_ADAPTIVE_PARAMS
from metabt.strategies.vol_estimators import ESTIMATORS, MetaVolSchedule, Schedule


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid (one line, names the key)."""


class _Section(BaseModel):
    # Strict: "20" for an int or "yes" for a bool is a mistake in the file, not a value to guess.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _iso_date(value: object) -> object:
    """TOML dates come as dates or as "YYYY-MM-DD" strings; nothing else is a date."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date; write YYYY-MM-DD") from None
    return value


def _list_to_tuple(value: object) -> object:
    # Nested too: features.macd is a list of [fast, slow] pairs.
    return tuple(_list_to_tuple(v) for v in value) if isinstance(value, list) else value


Day = Annotated[date, BeforeValidator(_iso_date)]

#: Upper limits of settings that would otherwise run for days or never stop early.
LIMITS: dict[str, dict[str, int]] = {
    "meta": {
        "meta_steps": 100_000,
        "forward_meta_steps": 100_000,
        "patience": 1_000,
        "tasks_per_step": 4_096,
        "inner_steps": 100,
        "val_tasks": 100_000,
        "eval_every": 100_000,
        "threads": 256,
    },
    "task": {"max_query": 2_520},
}


class DataConfig(_Section):
    source: Literal["sample", "csv", "synthetic", "yfinance"] = "sample"
    path: str | None = None
    symbols: list[str] | Literal["all"] = "all"
    start: Day | None = None
    split: Day
    end: Day | None = None
    cache_dir: str = ".cache/metabt"
    # Zero-shot: these symbols are traded but never trained on (nor tuned on); the other
    # symbols are trained on and not traded. Empty: every symbol is trained on and traded.
    held_out: list[str] = []
    # Opt-ins for bars that look wrong but can be genuine (--allow-jumps, --allow-gaps).
    allow_jumps: bool = False
    allow_gaps: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> DataConfig:
        if isinstance(self.symbols, list):
            if not self.symbols:
                raise ValueError('data.symbols is empty; list the symbols or write "all"')
            upper = [s.upper() for s in self.symbols]
            dup = next((s for s, u in zip(self.symbols, upper) if upper.count(u) > 1), None)
            if dup is not None:
                raise ValueError(f"data.symbols names {dup!r} twice; name each symbol once")
        if self.held_out and isinstance(self.symbols, list):
            unknown = [s for s in self.held_out if s not in self.symbols]
            if unknown:
                raise ValueError(f"data.held_out names {unknown[0]!r}, not in data.symbols")
            if len(self.held_out) >= len(self.symbols):
                raise ValueError("data.held_out leaves no symbol to train on; hold out fewer")
        if self.start is not None and self.start >= self.split:
            raise ValueError(f"data.start ({self.start}) must be before data.split ({self.split})")
        if self.end is not None and self.end <= self.split:
            raise ValueError(f"data.end ({self.end}) must be after data.split ({self.split})")
        if self.source == "csv" and not self.path:
            raise ValueError("data.source = 'csv' needs data.path (or pass --data DIR)")
        return self


class SyntheticConfig(_Section):
    n_assets: int = Field(8, ge=1, le=64)
    n_bars: int = Field(3000, ge=300)
    mean_duration: float = Field(120.0, gt=1)
    correlation: float = Field(0.3, ge=0, lt=1)
    seed: int = 0
    start: Day = date(2005, 1, 3)


def _field_type(hint: Any) -> Any:
    # TOML has arrays, not tuples: accept a list where the library wants a tuple.
    if get_origin(hint) is tuple:
        return Annotated[hint, BeforeValidator(_list_to_tuple)]
    return hint


def _section_of(cls: type, skip: tuple[str, ...] = (), section: str = "") -> type[_Section]:
    """A config section whose keys, types and defaults are those of a library dataclass.

    The dataclass stays the single source of every default (no inner LR or
    window length written twice); its ``__post_init__`` checks run when the
    study is built (see :func:`build_specs`). ``LIMITS[section]`` adds upper bounds.
    """
    hints = get_type_hints(cls)
    limits = LIMITS.get(section, {})
    fields: dict[str, Any] = {
        f.name: (
            _field_type(hints[f.name]),
            Field(
                f.default if f.default is not dataclasses.MISSING else f.default_factory(),  # type: ignore[operator]
                le=limits.get(f.name),
            ),
        )
        for f in dataclasses.fields(cls)
        if f.name not in skip
    }
    return create_model(f"{cls.__name__}Section", __base__=_Section, **fields)


if TYPE_CHECKING:
    # Built at run time from the library dataclasses, so a type checker cannot see their
    # fields: to it they are Any (the dataclasses themselves are fully typed).
    FeaturesConfig: TypeAlias = Any
    TaskConfig: TypeAlias = Any
    PolicyConfig: TypeAlias = Any
    MetaConfig: TypeAlias = Any
    CostsConfig: TypeAlias = Any
else:
    FeaturesConfig = _section_of(FeatureSpec)
    # The support and shortest query lengths of the tasks are the strategy's windows and
    # cadence ([strategy] min_window, max_window, readapt_every): train on what is traded.
    TaskConfig = _section_of(
        TaskSpec, skip=("min_support", "max_support", "min_query"), section="task"
    )
    PolicyConfig = _section_of(PolicySpec, skip=("n_features",))
    MetaConfig = _section_of(TrainConfig, skip=("seed",), section="meta")
    CostsConfig = _section_of(CostSpec)


class ObjectiveConfig(_Section):
    risk: float = Field(ObjectiveSpec.risk, ge=0)
    # None: the study's own costs, commission + slippage per unit of weight traded.
    cost: float | None = Field(None, ge=0)


def _strategy_default(name: str) -> Any:
    """MetaAdaptiveStrategy's own default (documented once, in its ``Params:`` block), or
    its base class's."""
    own = dict(META_ADAPTIVE_PARAMS)
    return own[name] if name in own else getattr(TargetWeightStrategy.params, name)


class DetectorConfig(_Section):
    name: Literal["bocpd_ar", "loss", "bocpd", "cusum"] = _strategy_default("detector")
    settings: dict[str, float | int] = {}


class StrategyConfig(_Section):
    min_window: int = Field(_strategy_default("min_window"), ge=2, le=2_520)
    max_window: int = Field(_strategy_default("max_window"), ge=2, le=2_520)
    fallback: Literal["initial", "flat", "previous"] = _strategy_default("fallback")
    readapt_every: int = Field(_strategy_default("readapt_every"), ge=1, le=2_520)
    calendar_window: int = Field(_strategy_default("calendar_window"), ge=2, le=2_520)
    vol_target: float = Field(_strategy_default("vol_target"), gt=0)
    gross_cap: float = Field(_strategy_default("gross_cap"), gt=0)
    asset_weight: float | None = Field(None, gt=0)
    long_only: bool = _strategy_default("long_only")
    rebalance_threshold: float = Field(_strategy_default("rebalance_threshold"), ge=0)
    # Bars fed before the split (and before tuning's first scored day) so the slowest
    # indicator (a 252-bar momentum lookback) is warm on the first traded day.
    warmup_bars: int = Field(300, ge=0, le=2_520)

    @model_validator(mode="after")
    def _windows(self) -> StrategyConfig:
        if self.min_window > self.max_window:
            raise ValueError(
                f"strategy.min_window ({self.min_window}) must be <= "
                f"strategy.max_window ({self.max_window})"
            )
        return self


class ComparatorsConfig(_Section):
    names: list[
        Literal[
            "buy_and_hold",
            "sma_cross",
            "momentum",
            "rsi_reversion",
            "buy_and_hold_vt",
            "tsmom_vt",
            "autocorr",
        ]
    ] = [
        "buy_and_hold",
        "sma_cross",
        "momentum",
        "rsi_reversion",
        "buy_and_hold_vt",
        "tsmom_vt",
        "autocorr",
    ]
    grids: dict[str, dict[str, list[float | int | bool]]] = {}


class EnsembleConfig(_Section):
    # Meta-training seeds (seed, seed + 1, ...): the headline strategy trades their
    # average position; each variant is also reported per seed (mean and spread).
    seeds: int = Field(5, ge=1, le=20)
    per_seed_runs: bool = True


def parse_period(text: str) -> pd.DateOffset:
    """``"1y"``, ``"6m"``, ``"2w"`` -> a calendar offset for the walk-forward.

    Raises
    ------
    ValueError
        Anything else (the config loader names the file and key that held it).
    """
    match = re.fullmatch(r"\s*(\d+)\s*([ymw])\s*", text or "")
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a period; use a number and a unit, e.g. 1y, 6m or 2w")
    n, unit = int(match.group(1)), match.group(2)
    return {"y": pd.DateOffset(years=n), "m": pd.DateOffset(months=n), "w": pd.DateOffset(weeks=n)}[
        unit
    ]


class WalkForwardConfig(_Section):
    refit_every: str | None = None

    @field_validator("refit_every")
    @classmethod
    def _a_period(cls, value: str | None) -> str | None:
        # Checked when the config loads, not when the walk-forward reaches its first refit.
        if value is not None:
            parse_period(value)
        return value


if TYPE_CHECKING:
    VolFeaturesConfig: TypeAlias = Any  # built at run time, like the sections above
else:
    VolFeaturesConfig = _section_of(VolFeatureSpec)
Estimator = Literal[ESTIMATORS]  # type: ignore[valid-type]


class VolatilityConfig(_Section):
    """The volatility study (``study = "volatility"``).

    ``[volatility.meta]`` trains the forecaster (the keys of ``[meta]``, which trains
    the trading policy when ``meta_adaptive`` is among the strategies).
    """

    # Estimators in the accuracy table, and those the vol-targeted strategies trade with.
    estimators: list[Estimator] = list(ESTIMATORS)
    trade_estimators: list[Estimator] = ["ewm", "garch", "meta"]
    strategies: list[Literal["buy_and_hold_vt", "tsmom_vt", "meta_adaptive"]] = [
        "buy_and_hold_vt",
        "tsmom_vt",
        "meta_adaptive",
    ]
    meta: MetaConfig = MetaConfig()
    # Symbols left out of meta-training (the forecaster never saw them before the test).
    heldout: list[str] = []
    # GARCH / GJR / HAR: bars between re-fits after the split (0 = fit once on training).
    refit_every: int = Field(Schedule.refit_every, ge=0, le=2_520)
    # Bars after each detected change that count as "after a change".
    after_change: int = Field(20, ge=1, le=252)
    detector: Literal["bocpd", "cusum", "bocpd_ar"] = MetaVolSchedule.detector  # type: ignore[assignment]
    detector_settings: dict[str, float | int] = {}
    min_window: int = Field(MetaVolSchedule.min_window, ge=2, le=2_520)
    max_window: int = Field(MetaVolSchedule.max_window, ge=2, le=2_520)
    readapt_every: int = Field(MetaVolSchedule.readapt_every, ge=1, le=2_520)
    features: VolFeaturesConfig = VolFeaturesConfig()

    @model_validator(mode="after")
    def _windows(self) -> VolatilityConfig:
        if self.min_window > self.max_window:
            raise ValueError(
                f"volatility.min_window ({self.min_window}) must be <= "
                f"volatility.max_window ({self.max_window})"
            )
        return self

"""Study configuration: one TOML file per study, validated by pydantic.

Unknown keys are an error with a "did you mean" hint (a typo in a config
must never silently fall back to a default), and every run writes the fully
resolved config beside its results so it can be re-run exactly.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import Field, ValidationError

from metabt.backtests.config_sections import (
    ComparatorsConfig,
    ConfigError,
    CostsConfig,
    DataConfig,
    DetectorConfig,
    EnsembleConfig,
    FeaturesConfig,
    MetaConfig,
    ObjectiveConfig,
    PolicyConfig,
    StrategyConfig,
    SyntheticConfig,
    TaskConfig,
    VolatilityConfig,
    WalkForwardConfig,
    _Section,
    parse_period,
)
from metabt.feeds.did_you_mean import did_you_mean, known_fields
from metabt.feeds.features import FeatureSpec
from metabt.feeds.tasks import TaskSpec
from metabt.feeds.vol_features import VolFeatureSpec
from metabt.metamodels.specs import ObjectiveSpec, PolicySpec
from metabt.metamodels.train_config import TrainConfig
from metabt.strategies.detectors import make_detector
from metabt.strategies.engine import CostSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# What other modules import from here; the sections live in backtests.config_sections.
__all__ = [
    "ConfigError",
    "DetectorConfig",
    "Specs",
    "StrategyConfig",
    "StudyConfig",
    "build_specs",
    "configs_dir",
    "dump_config",
    "load_config",
    "parse_config",
    "parse_period",
    "tomllib",
    "with_overrides",
]


class StudyConfig(_Section):
    title: str = "metabt study"
    study: Literal["synthetic", "single_asset", "basket", "prediction", "volatility"] = "basket"
    seed: int = 0
    # How many settings were validated (on validation splits inside the training period)
    # to arrive at this config's meta settings: each counts as a trial in the deflated Sharpe.
    validated_settings: int = Field(1, ge=1)
    data: DataConfig
    synthetic: SyntheticConfig = SyntheticConfig()
    features: FeaturesConfig = FeaturesConfig()
    task: TaskConfig = TaskConfig()
    policy: PolicyConfig = PolicyConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    meta: MetaConfig = MetaConfig()
    detector: DetectorConfig = DetectorConfig()
    strategy: StrategyConfig = StrategyConfig()
    costs: CostsConfig = CostsConfig()
    comparators: ComparatorsConfig = ComparatorsConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    volatility: VolatilityConfig = VolatilityConfig()


def _one_line(error: ValidationError, source: str) -> str:
    errors = error.errors()
    # A misspelled key also makes the correct key "missing": report the typo.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        known = known_fields(StudyConfig, loc[:-1])
        parent = "".join(f"{part}." for part in loc[:-1])
        suggestion = did_you_mean(str(loc[-1]), known, prefix=parent)
        hint = (
            f"; {suggestion}"
            if suggestion
            else (f"; known keys here: {', '.join(known)}" if known else "")
        )
        return f"{source}: unknown key {key!r}{hint}"
    if first["type"] == "missing":
        return f"{source}: missing key {key!r}; add it to the config"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"].endswith("_type") and "input" in first:
        given = first["input"]
        kind = "text" if isinstance(given, str) else type(given).__name__
        fix = (
            "; write true or false"
            if first["type"] == "bool_type"
            else "; write it without quotes"
            if isinstance(given, str)
            else ""
        )
        return (
            f"{source}: {key}: {msg.lower().removeprefix('input should be ')} is expected, "
            f"got {kind} {given!r}{fix}"
        )
    if first["type"] in ("less_than_equal", "greater_than_equal", "greater_than", "less_than"):
        bound = msg.lower().removeprefix("input should be ")
        return f"{source}: {key} must be {bound} (got {first.get('input')!r})"
    return f"{source}: {msg}" if msg.startswith(key) else f"{source}: {key}: {msg}"


# How the library's own messages name a section, and what the config file calls it.
_SECTION_NAMES = {
    "train.": "meta.",
    "PolicySpec.": "policy.",
    "CostSpec.": "costs.",
    "features.": "features.",
}


@dataclasses.dataclass(frozen=True)
class Specs:
    """The library objects a study config stands for."""

    features: FeatureSpec
    task: TaskSpec
    policy: PolicySpec
    objective: ObjectiveSpec
    train: TrainConfig
    costs: CostSpec


def build_specs(config: StudyConfig) -> Specs:
    """Turn the config sections into the library's dataclasses (their own checks run here)."""
    features = FeatureSpec(**config.features.model_dump())
    costs = CostSpec(**config.costs.model_dump())
    s = config.strategy
    cost = config.objective.cost
    if cost is None:  # what one unit of weight traded costs in the backtest
        cost = (costs.commission_bps + costs.slippage_bps) / 1e4
    return Specs(
        features=features,
        task=TaskSpec(
            min_support=s.min_window,
            max_support=s.max_window,
            min_query=min(s.readapt_every, config.task.max_query),
            **config.task.model_dump(),
        ),
        policy=PolicySpec(n_features=len(features.names), **config.policy.model_dump()),
        objective=ObjectiveSpec(risk=config.objective.risk, cost=cost),
        train=TrainConfig(seed=config.seed, **config.meta.model_dump()),
        costs=costs,
    )


def parse_config(raw: dict[str, Any], source: str = "config") -> StudyConfig:
    """Validate a config dict; raise ConfigError (one line) if anything is off."""
    try:
        config = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None
    try:
        build_specs(config)
        make_detector(config.detector.name, **config.detector.settings)
        vol = config.volatility
        VolFeatureSpec(**vol.features.model_dump())
        TrainConfig(seed=config.seed, **vol.meta.model_dump())
        make_detector(vol.detector, **vol.detector_settings)
    except ValueError as exc:
        message = str(exc)
        for library_name, key in _SECTION_NAMES.items():
            message = message.replace(library_name, key)
        raise ConfigError(f"{source}: {message}") from None
    return config


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; see backtests/configs/ for examples")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(raw, str(path))


def with_overrides(config: StudyConfig, **data_overrides: Any) -> StudyConfig:
    """A copy with ``data.*`` keys replaced (None values are ignored), re-validated."""
    raw = config.model_dump(mode="json")
    raw["data"].update({k: v for k, v in data_overrides.items() if v is not None})
    return parse_config(raw, "command-line options")


def dump_config(config: StudyConfig, path: Path) -> None:
    """Write the fully resolved config (every default spelled out) as TOML."""
    raw = config.model_dump(mode="json", exclude_none=True)
    path.write_text(tomli_w.dumps(raw))


def configs_dir() -> Path:
    """Folder of the studies shipped with metabt."""
    return Path(__file__).parent / "configs"

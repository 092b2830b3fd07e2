"""Choose a study's settings on a validation split inside its training period.

The test period must never choose anything. :func:`validation_config` moves the split back into
the training period (its last ``fraction``); :func:`validation_sharpes` runs the whole study
there once per candidate setting, so settings such as the policy mode are picked without looking
at a single test bar. ``metabt choose-defaults CONFIG --candidate ...`` prints the table::

    metabt choose-defaults backtests/configs/basket.toml \\
        --candidate policy.mode=long_short --candidate policy.mode=long_only
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from metabt.backtests.config import StudyConfig, parse_config
from metabt.backtests.overrides import with_settings
from metabt.backtests.study import run_study

#: The row label of the config run as it is (no candidate given).
AS_IS = "(config as is)"


def validation_config(config: StudyConfig, fraction: float) -> StudyConfig:
    """The same study with the split moved to the last ``fraction`` of the training period."""
    start = pd.Timestamp(config.data.start or "1990-01-01")
    split = pd.Timestamp(config.data.split)
    val_split = start + (split - start) * (1.0 - fraction)
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["data"].update(split=str(val_split.date()), end=str((split - pd.Timedelta(days=1)).date()))
    raw["walk_forward"] = {}
    return parse_config(raw, "validation split")


def validation_sharpes(
    base: StudyConfig, candidates: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Candidate (``section.key=value``) -> strategy -> Sharpe on ``base``'s test period.

    Every candidate is validated before the first run starts, so a typo in the last one does
    not cost the runs before it.
    """
    configs = {c: with_settings(base, [c], "--candidate") for c in candidates} or {AS_IS: base}
    rows = {}
    for candidate, config in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_study(
                config, Path(tmp) / "run", progress=False, console=Console(quiet=True)
            )
        rows[candidate] = {name: m["sharpe"] for name, m in metrics.items()}
    return rows

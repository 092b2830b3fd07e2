"""Choose a study's settings on a validation split inside its training period.

The test period must never choose anything. :func:`validation_config` moves the split back into
the training period (its last ``fraction``); :func:`validation_sharpes` runs the whole study
there once per candidate setting, so settings such as the policy mode are picked without looking
at a single test bar. ``metabt choose-defaults CONFIG --candidate ...`` prints the table::

    metabt choose-defaults backtests/configs/basket.toml \\
        --candidate policy.mode=long_short --candidate policy.mode=long_only

and picks one candidate by one rule for every variant (:func:`learned_mean`): a setting every
meta variant shares is not chosen by the score of the variant it is meant to show off. With
``--also-on`` the same candidates are validated on more markets or splits (say, other synthetic
generator seeds) and the rule averages over all of them.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

from metabt.backtests.config import StudyConfig, parse_config
from metabt.backtests.overrides import with_settings
from metabt.backtests.runner import META_STRATEGIES
from metabt.backtests.study import run_study

#: The row label of the config run as it is (no candidate given).
AS_IS = "(config as is)"

Sharpes = dict[str, float | None]


def validation_config(config: StudyConfig, fraction: float) -> StudyConfig:
    """The same study with the split moved to the last ``fraction`` of the training period."""
    start = pd.Timestamp(config.data.start or "1990-01-01")
    split = pd.Timestamp(config.data.split)
    val_split = start + (split - start) * (1.0 - fraction)
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["data"].update(split=str(val_split.date()), end=str((split - pd.Timedelta(days=1)).date()))
    raw["walk_forward"] = {}
    return parse_config(raw, "validation split")


def candidate_configs(base: StudyConfig, candidates: Sequence[str]) -> dict[str, StudyConfig]:
    """Candidate (``section.key=value``) -> ``base`` with it applied; no candidate: ``base``.

    Building them all first checks every candidate before the first run starts, so a typo in
    the last one does not cost the runs before it.
    """
    return {c: with_settings(base, [c], "--candidate") for c in candidates} or {AS_IS: base}


def validation_sharpes(configs: Mapping[str, StudyConfig]) -> dict[str, Sharpes]:
    """Candidate -> strategy -> Sharpe on each config's test period (the validation split)."""
    rows = {}
    for candidate, config in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_study(
                config, Path(tmp) / "run", progress=False, console=Console(quiet=True)
            )
        rows[candidate] = {name: m["sharpe"] for name, m in metrics.items()}
    return rows


def is_learned(name: str) -> bool:
    """Whether a row trades a learned network: the runner's meta variants and plain ERM
    (:data:`~backtests.runner.META_STRATEGIES`), the oracle and the context / memory rows
    (all ``meta_*``); per-seed rows (``name#i``) are not rows of their own."""
    return "#" not in name and (name in META_STRATEGIES or name.startswith("meta_"))


def learned_mean(sharpes: Sharpes) -> float | None:
    """The selection rule's score: the mean validation Sharpe of the rows that trade a learned
    network (None if none has a Sharpe)."""
    values = [
        v for name, v in sharpes.items() if is_learned(name) and v is not None and math.isfinite(v)
    ]
    return sum(values) / len(values) if values else None


def choose(scores: Mapping[str, Sequence[float | None]]) -> tuple[str, float] | None:
    """The candidate with the highest mean score over the splits it was validated on.

    A candidate with no score on some split cannot be compared there, so it is not chosen;
    ties go to the candidate listed first. None when no candidate has a score everywhere.
    """
    complete = {}
    for candidate, values in scores.items():
        known = [v for v in values if v is not None]
        if known and len(known) == len(values):
            complete[candidate] = sum(known) / len(known)
    if not complete:
        return None
    best = max(complete, key=lambda c: complete[c])
    return best, complete[best]

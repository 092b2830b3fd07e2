"""Choose a study's settings on a validation split inside its training period.

The test period must never choose anything. This script moves the split
back into the training period (its last ``--fraction``), runs the whole
study there for each candidate setting, and prints the validation Sharpe of
every strategy, so settings such as the policy mode are picked without
looking at a single test bar::

    python -m metabt.backtests.choose_defaults backtests/configs/basket.toml \\
        --set policy.mode=long_short --set policy.mode=long_only --set policy.mode=overlay
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from metabt.backtests.config import StudyConfig, load_config, parse_config
from metabt.backtests.study import run_study


def validation_config(config: StudyConfig, fraction: float) -> StudyConfig:
    """The same study with the split moved to the last ``fraction`` of the training period."""
    start = pd.Timestamp(config.data.start or "1990-01-01")
    split = pd.Timestamp(config.data.split)
    val_split = start + (split - start) * (1.0 - fraction)
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["data"].update(split=str(val_split.date()), end=str((split - pd.Timedelta(days=1)).date()))
    raw["walk_forward"] = {}
    return parse_config(raw, "validation split")


def with_setting(config: StudyConfig, assignment: str) -> StudyConfig:
    """``section.key=value`` applied to a copy (value parsed as JSON, else a string)."""
    key, _, text = assignment.partition("=")
    section, _, name = key.partition(".")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    raw = config.model_dump(mode="json", exclude_none=True)
    raw.setdefault(section, {})[name] = value
    return parse_config(raw, f"--set {assignment}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="candidates",
        help="a candidate setting, section.key=value (repeat)",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.3,
        help="share of the training period used for validation",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # per-run notes would drown the one table this prints
    console = Console(width=200)
    base = validation_config(load_config(args.config), args.fraction)
    console.print(
        f"validation: train {base.data.start} .. {base.data.split}, "
        f"validate {base.data.split} .. {base.data.end}"
    )
    table = Table(title="validation Sharpe (inside the training period)")
    table.add_column("candidate")
    rows = {}
    for candidate in args.candidates or ["(config as is)"]:
        config = base if candidate.startswith("(") else with_setting(base, candidate)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_study(
                config, Path(tmp) / "run", progress=False, console=Console(quiet=True)
            )
        rows[candidate] = {name: m["sharpe"] for name, m in metrics.items()}
    names = list(next(iter(rows.values())))
    for name in names:
        table.add_column(name, justify="right")
    for candidate, sharpe in rows.items():
        table.add_row(
            candidate, *(f"{sharpe[n]:.2f}" if sharpe[n] is not None else "-" for n in names)
        )
    console.print(table)


if __name__ == "__main__":
    main()

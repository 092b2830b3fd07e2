"""Run one of the shipped studies from Python, the same way ``metabt backtest`` does.

    python -m metabt.backtests.run_study synthetic  # single_asset, basket, prediction, volatility
    python -m metabt.backtests.run_study basket --out runs/basket

From a notebook::

    from metabt.backtests.config import configs_dir, load_config
    from metabt.backtests.study import run_study
    metrics = run_study(load_config(configs_dir() / "basket.toml"), Path("runs/basket"))
    metrics["meta_adaptive"]["sharpe"]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from metabt.backtests.config import configs_dir, load_config
from metabt.backtests.study import run_study

STUDIES = (
    "synthetic",
    "single_asset",
    "basket",
    "prediction",
    "volatility",
    "volatility_synthetic",
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a shipped metabt study.")
    parser.add_argument("study", choices=STUDIES)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default runs/STUDY)")
    args = parser.parse_args()
    config = load_config(configs_dir() / f"{args.study}.toml")
    out = args.out or Path("runs") / args.study
    metrics = run_study(config, out, console=Console())
    if args.study.startswith("volatility"):
        print(f"{out}: see {out / 'volatility.md'}")
        return
    meta = metrics.get("meta_adaptive", {})
    print(f"{out}: meta_adaptive Sharpe {meta.get('sharpe')}, see {out / 'comparison.md'}")


if __name__ == "__main__":
    main()

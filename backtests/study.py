"""Run a whole study end to end: data -> segments -> run folder -> reports.

This is what ``metabt backtest`` and ``metabt demo`` call, and what the
scripts in ``backtests/`` call from Python.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from backtests.config import StudyConfig
from backtests.data import StudyData, load_study_data
from backtests.outputs import true_changes, write_run
from backtests.runner import Segment, run_segment, segment_splits
from feeds.features import FeatureSpec, compute_labels
from reports.build import build_reports

log = logging.getLogger(__name__)

# An alarm up to this many bars after a true change counts as detecting it.
DETECTION_HORIZON = 60


def detection_stats(data: StudyData, adaptations: pd.DataFrame, split: pd.Timestamp) -> dict:
    """Delay and false alarms of the regime trigger against the true changes (synthetic only)."""
    changes = true_changes(data, split)
    alarms = adaptations.loc[(adaptations["strategy"] == "meta_adaptive")
                             & (adaptations["trigger"] == "regime")]
    delays, false_alarms, n_bars = [], 0, 0
    for symbol, frame in data.frames.items():
        dates = frame.index[frame.index >= split]
        n_bars += len(dates)
        pos = {d: i for i, d in enumerate(dates)}
        true_idx = sorted(pos[pd.Timestamp(c["date"])] for c in changes if c["asset"] == symbol)
        alarm_idx = sorted(pos[d] for d in pd.to_datetime(alarms.loc[alarms["asset"] == symbol,
                                                                     "date"]) if d in pos)
        hit = set()
        for t in true_idx:
            after = [a for a in alarm_idx if t <= a < t + DETECTION_HORIZON]
            if after:
                delays.append(after[0] - t)
                hit.add(after[0])
        false_alarms += sum(1 for a in alarm_idx if a not in hit and not any(
            t <= a < t + DETECTION_HORIZON for t in true_idx))
    return {"true_changes": len(changes), "detected": len(delays),
            "mean_delay_bars": float(np.mean(delays)) if delays else None,
            "false_alarms_per_1000_bars": 1000.0 * false_alarms / max(n_bars, 1),
            "horizon_bars": DETECTION_HORIZON}


def prediction_stats(data: StudyData, positions: pd.DataFrame, features: FeatureSpec) -> dict:
    """Direction accuracy and information coefficient of each strategy's position as a signal.

    The outcome of the position decided at bar t is the label of bar t (the
    open-to-open return it actually earns); bars with a zero position do not
    count towards accuracy.
    """
    labels = pd.concat({s: compute_labels(f, features) for s, f in data.frames.items()},
                       names=["asset", "date"]).rename("outcome").reset_index()
    merged = positions.merge(labels, on=["asset", "date"]).dropna(subset=["outcome"])
    out = {}
    for name, frame in merged.groupby("strategy"):
        active = frame.loc[frame["weight"] != 0]
        hit = float((np.sign(active["weight"]) == np.sign(active["outcome"])).mean()) \
            if len(active) else None
        ics = [g["weight"].corr(g["outcome"], method="spearman")
               for _, g in frame.groupby("date") if g["weight"].nunique() > 1]
        ts_ic = frame["weight"].corr(frame["outcome"], method="spearman")
        out[str(name)] = {"direction_accuracy": hit,
                          "ic_time_series": None if pd.isna(ts_ic) else float(ts_ic),
                          "ic_cross_section": float(np.nanmean(ics)) if ics else None,
                          "n_bars": len(frame)}
    return out


def _prediction_table(stats: dict) -> Table:
    table = Table(title="Prediction: position as a signal for the return it earns (test period)")
    for column in ("strategy", "direction accuracy", "IC (time series)", "IC (cross-section)"):
        table.add_column(column, justify="left" if column == "strategy" else "right")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, row in stats.items():
        table.add_row(name, fmt(row["direction_accuracy"]), fmt(row["ic_time_series"]),
                      fmt(row["ic_cross_section"]))
    return table


def run_study(config: StudyConfig, out: Path, model_path: Path | None = None, n_jobs: int = 2,
              progress: bool = True, console: Console | None = None) -> dict:
    """Run every segment of ``config``, write the run folder and its reports.

    Returns the metrics of every strategy (as in ``metrics.json``).
    """
    console = console or Console(stderr=True)
    data = load_study_data(config)
    last_bar = max(f.index[-1] for f in data.frames.values())
    splits = segment_splits(config, last_bar)
    segments: list[Segment] = []
    for i, split in enumerate(splits):
        end = splits[i + 1] if i + 1 < len(splits) else None
        segments.append(run_segment(data, config, split, end,
                                    model_path=model_path if i == 0 else None,
                                    n_jobs=n_jobs, progress=progress, console=console))
    write_run(out, config, data, segments)
    if data.regimes is not None:
        adaptations = pd.read_csv(out / "adaptations.csv", parse_dates=["date"])
        stats = detection_stats(data, adaptations, splits[0])
        (out / "detection.json").write_text(json.dumps(stats, indent=2) + "\n")
    if config.study == "prediction":
        positions = pd.read_csv(out / "positions.csv", parse_dates=["date"])
        stats = prediction_stats(data, positions, FeatureSpec(**config.features.model_dump()))
        (out / "prediction.json").write_text(json.dumps(stats, indent=2) + "\n")
        console.print(_prediction_table(stats))
    return build_reports(out, console=console)

"""Run a whole study end to end: data -> segments -> run folder -> reports.

This is what ``metabt backtest`` and ``metabt demo`` call, and what the
scripts in ``backtests/`` call from Python.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from metabt.backtests.config import ConfigError, StudyConfig
from metabt.backtests.data import StudyData, load_study_data
from metabt.backtests.outputs import write_run
from metabt.backtests.runner import Segment, run_segment, segment_splits
from metabt.feeds.features import FeatureSpec, compute_labels
from metabt.reports.build import build_reports
from metabt.strategies.regime_bound import fit_regime_rules

if TYPE_CHECKING:
    from joblib import Memory

log = logging.getLogger(__name__)

# An alarm up to this many bars after a true change counts as detecting it.
DETECTION_HORIZON = 30


def detection_stats(
    data: StudyData,
    adaptations: pd.DataFrame,
    split: pd.Timestamp,
    rules: dict[int, tuple[float, float]] | None = None,
) -> dict:
    """Delay and false alarms of the regime trigger against the true changes (synthetic only).

    A true change counts only if it alters the best position rule (the sign of its
    regime's fitted reaction to the last return, ``rules`` of ``regime_bound``; all
    changes count without rules); it is detected by the first alarm within
    ``DETECTION_HORIZON`` bars after it. False alarms are alarms with no true change
    of any kind in the ``DETECTION_HORIZON`` bars before them, per 1,000 such bars.
    """
    alarms = adaptations.loc[
        (adaptations["strategy"] == "meta_adaptive") & (adaptations["trigger"] == "alarm")
    ]
    delays, n_changes, false_alarms, quiet_bars = [], 0, 0, 0
    for symbol, frame in data.frames.items():
        dates = frame.index[frame.index >= split]
        regime = data.regimes[symbol].reindex(dates).to_numpy()
        moved = np.flatnonzero(regime[1:] != regime[:-1]) + 1
        alarm_idx = np.searchsorted(
            dates, pd.to_datetime(alarms.loc[alarms["asset"] == symbol, "date"]).to_numpy()
        )
        for t in moved:
            if rules is not None and np.sign(rules.get(int(regime[t]), (0, 0))[1]) == np.sign(
                rules.get(int(regime[t - 1]), (0, 0))[1]
            ):
                continue
            n_changes += 1
            after = alarm_idx[(alarm_idx >= t) & (alarm_idx < t + DETECTION_HORIZON)]
            if len(after):
                delays.append(int(after[0] - t))
        recent = np.zeros(len(dates), bool)
        for t in moved:
            recent[t : t + DETECTION_HORIZON] = True
        quiet_bars += int((~recent).sum())
        false_alarms += int(sum(1 for a in alarm_idx if a < len(dates) and not recent[a]))
    return {
        "true_changes": n_changes,
        "detected": len(delays),
        "mean_delay_bars": float(np.mean(delays)) if delays else None,
        "false_alarms_per_1000_bars": 1000.0 * false_alarms / max(quiet_bars, 1),
        "horizon_bars": DETECTION_HORIZON,
    }


def prediction_stats(data: StudyData, positions: pd.DataFrame, features: FeatureSpec) -> dict:
    """Direction accuracy and information coefficient of each strategy's position as a signal.

    The outcome of the position decided at bar t is the label of bar t (the
    open-to-open return it actually earns); bars with a zero position do not
    count towards accuracy.
    """
    labels = (
        pd.concat(
            {s: compute_labels(f, features) for s, f in data.frames.items()},
            names=["asset", "date"],
        )
        .rename("outcome")
        .reset_index()
    )
    merged = positions.merge(labels, on=["asset", "date"]).dropna(subset=["outcome"])
    out = {}
    for name, frame in merged.groupby("strategy"):
        active = frame.loc[frame["weight"] != 0]
        hit = (
            float((np.sign(active["weight"]) == np.sign(active["outcome"])).mean())
            if len(active)
            else None
        )
        ics = [
            g["weight"].corr(g["outcome"], method="spearman")
            for _, g in frame.groupby("date")
            if g["weight"].nunique() > 1
        ]
        ts_ic = frame["weight"].corr(frame["outcome"], method="spearman")
        out[str(name)] = {
            "direction_accuracy": hit,
            "ic_time_series": None if pd.isna(ts_ic) else float(ts_ic),
            "ic_cross_section": float(np.nanmean(ics)) if ics else None,
            "n_bars": len(frame),
        }
    return out


def _prediction_table(stats: dict) -> Table:
    table = Table(title="Prediction: position as a signal for the return it earns (test period)")
    for column in ("strategy", "direction accuracy", "IC (time series)", "IC (cross-section)"):
        table.add_column(column, justify="left" if column == "strategy" else "right")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, row in stats.items():
        table.add_row(
            name,
            fmt(row["direction_accuracy"]),
            fmt(row["ic_time_series"]),
            fmt(row["ic_cross_section"]),
        )
    return table


def run_study(
    config: StudyConfig,
    out: Path,
    model_path: Path | None = None,
    n_jobs: int = 2,
    progress: bool = True,
    console: Console | None = None,
    cache: Memory | None = None,
) -> dict:
    """Run every segment of ``config``, write the run folder and its reports.

    ``cache``: a sweep's cache of seed-independent work (``backtests.shared_work``).
    Returns the metrics of every strategy (as in ``metrics.json``).
    """
    console = console or Console(stderr=True)
    if config.study == "volatility":
        from metabt.backtests.volatility import run_volatility_study

        if model_path is not None or config.walk_forward.refit_every:
            raise ConfigError(
                "the volatility study meta-trains its own forecaster on [start, split) and "
                "re-fits its baselines every volatility.refit_every bars; drop --model and "
                "--refit-every (walk_forward.refit_every)"
            )
        return run_volatility_study(config, out, console)
    data = load_study_data(config)
    last_bar = max(f.index[-1] for f in data.frames.values())
    splits = segment_splits(config, last_bar)
    segments: list[Segment] = []
    for i, split in enumerate(splits):
        end = splits[i + 1] if i + 1 < len(splits) else None
        segments.append(
            run_segment(
                data,
                config,
                split,
                end,
                model_path=model_path if i == 0 else None,
                n_jobs=n_jobs,
                progress=progress,
                console=console,
                cache=cache,
            )
        )
    write_run(out, config, data, segments)
    if data.regimes is not None:
        adaptations = pd.read_csv(out / "adaptations.csv", parse_dates=["date"])
        rules = fit_regime_rules(
            data.frames, data.regimes, splits[0], FeatureSpec(**config.features.model_dump())
        )
        stats = detection_stats(data, adaptations, splits[0], rules)
        (out / "detection.json").write_text(json.dumps(stats, indent=2) + "\n")
    if config.study == "prediction":
        positions = pd.read_csv(out / "positions.csv", parse_dates=["date"])
        stats = prediction_stats(data, positions, FeatureSpec(**config.features.model_dump()))
        (out / "prediction.json").write_text(json.dumps(stats, indent=2) + "\n")
        console.print(_prediction_table(stats))
    return build_reports(out, console=console)

"""Write a run folder: the files every report and script can rely on.

``config.toml`` (resolved), ``returns.csv``, ``positions.csv``, ``trades.csv``,
``adaptations.csv``, ``study.json``, the model checkpoint and, where the true regimes are
known, ``regime_attribution.csv`` are written here;
the reports (``metrics.json``, ``tearsheet.html``, ``comparison.md``,
``equity.png``) are then built from these files alone, so ``metabt report``
rebuilds exactly what the run showed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from metabt.backtests.config import StudyConfig, dump_config
from metabt.backtests.data import StudyData
from metabt.backtests.outdir import clear_run_folder
from metabt.backtests.regime_attribution import asset_contributions, regime_attribution
from metabt.backtests.runner import Segment
from metabt.feeds.synthetic import DEFAULT_REGIMES
from metabt.metamodels.model_io import save_model
from metabt.strategies.engine import BacktestResult
from metabt.strategies.tuning import annualised_sharpe

PERIODS_PER_YEAR = 252


def _in_segment_index(seg: Segment, series: pd.Series) -> np.ndarray:
    mask = series.index >= seg.split
    if seg.end is not None:
        mask &= series.index < seg.end
    return mask


def _in_segment(frame: pd.DataFrame, seg: Segment) -> pd.DataFrame:
    mask = frame["date"] >= seg.split
    if seg.end is not None:
        mask &= frame["date"] < seg.end
    return frame.loc[mask]


# "alarm" rows mark a new regime start (window = bars since it); the others are
# adaptations (window = labelled bars used, start = the first one's date).
EVENT_COLUMNS = ["date", "asset", "trigger", "window", "start", "loss_before", "loss_after"]


def _events(result: BacktestResult) -> pd.DataFrame:
    frame = pd.DataFrame(result.events, columns=EVENT_COLUMNS)
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def _attention(result: BacktestResult) -> pd.DataFrame:
    """The memory policy's adaptations and the past segments each one attended to most."""
    rows = [e for e in result.events if "attended" in e]
    frame = pd.DataFrame(rows, columns=["date", "asset", "window", "attended"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def _long(segments: list[Segment], table: Callable[[BacktestResult], pd.DataFrame]) -> pd.DataFrame:
    """One table of every strategy's results (long format, test bars only)."""
    parts = []
    for seg in segments:
        for name, result in seg.results.items():
            frame = _in_segment(table(result), seg).copy()
            frame.insert(1, "strategy", name)
            parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def combined_returns(segments: list[Segment]) -> pd.DataFrame:
    """Daily returns, one column per strategy, segments joined end to end."""
    pieces = []
    for seg in segments:
        frame = pd.DataFrame({n: r.returns for n, r in seg.results.items()})
        frame = frame.loc[frame.index >= seg.split]
        if seg.end is not None:
            frame = frame.loc[frame.index < seg.end]
        pieces.append(frame)
    out = pd.concat(pieces).sort_index().fillna(0.0)
    out.index = pd.DatetimeIndex(out.index).tz_localize(None).rename("date")
    return out


def true_changes(data: StudyData, start: pd.Timestamp) -> list[dict]:
    """Known regime changes in the test period (synthetic data only)."""
    if data.regimes is None:
        return []
    rows: list[dict] = []
    for symbol, regime in data.regimes.items():
        moved = regime.index[1:][np.diff(regime.to_numpy()) != 0]
        rows.extend({"date": d.date().isoformat(), "asset": symbol} for d in moved if d >= start)
    return sorted(rows, key=lambda r: (r["date"], r["asset"]))


def seed_spread(segments: list[Segment]) -> dict:
    """Per variant, the test Sharpe of each meta-training seed traded alone: mean, sd, each."""
    out = {}
    for name in segments[0].seed_results:
        per_seed = []
        for i in range(len(segments[0].seed_results[name])):
            returns = pd.concat(
                [
                    seg.seed_results[name][i].returns.loc[
                        _in_segment_index(seg, seg.seed_results[name][i].returns)
                    ]
                    for seg in segments
                ]
            )
            per_seed.append(annualised_sharpe(returns))
        out[name] = {
            "mean": float(np.mean(per_seed)),
            "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
            "seeds": [float(x) for x in per_seed],
        }
    return out


def attribution(data: StudyData, segments: list[Segment], names: list[str] | None) -> pd.DataFrame:
    """``regime_attribution.csv``: each strategy's test-period return by true regime and age
    (``names[i]`` names regime id ``i``; None writes the ids)."""
    assert data.regimes is not None
    closes = {s: f["close"] for s, f in data.frames.items()}
    rows = [
        _in_segment(asset_contributions(result, closes), seg).assign(strategy=name)
        for seg in segments
        for name, result in seg.results.items()
    ]
    return regime_attribution(pd.concat(rows, ignore_index=True), data.regimes, names)


def write_run(out: Path, config: StudyConfig, data: StudyData, segments: list[Segment]) -> Path:
    """Write every contract file except the reports; return the folder.

    An earlier run in ``out`` is removed first, so the folder never mixes two
    runs; a folder with other files is refused (see :mod:`backtests.outdir`).
    """
    clear_run_folder(out)
    dump_config(config, out / "config.toml")
    returns = combined_returns(segments)
    returns.to_csv(out / "returns.csv", date_format="%Y-%m-%d")
    date_fmt = {"date_format": "%Y-%m-%d", "index": False}
    _long(segments, lambda r: r.weights).to_csv(out / "positions.csv", **date_fmt)
    _long(segments, lambda r: r.trades).to_csv(out / "trades.csv", **date_fmt)
    _long(segments, _events).to_csv(out / "adaptations.csv", **date_fmt)
    if data.regimes is not None:
        # The generator's regime ids index its regimes; a CSV folder's regimes.csv has ids only.
        names = [r.name for r in DEFAULT_REGIMES] if config.data.source == "synthetic" else None
        attribution(data, segments, names).to_csv(out / "regime_attribution.csv", index=False)
    attention = _long(segments, _attention)
    if len(attention):
        attention.to_csv(out / "memory_attention.csv", **date_fmt)
    first = segments[0]
    n_trials = {name: t.n_trials for name, t in first.tuning.items()}
    # Every meta variant trades the settings chosen for all of them on validation splits:
    # each setting validated counts as a trial for every variant (config.validated_settings).
    n_trials.update(
        {name: config.validated_settings for name in first.results if name not in n_trials}
    )
    study = {
        "title": config.title,
        "periods_per_year": PERIODS_PER_YEAR,
        "split": first.split.date().isoformat(),
        "seed": config.seed,
        "n_trials": n_trials,
        "train_best": {k: float(v) for k, v in first.train_sharpe.items()},
        "regime_changes": true_changes(data, first.split),
    }
    (out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
    if first.seed_results:
        (out / "seeds.json").write_text(json.dumps(seed_spread(segments), indent=2) + "\n")
    resolved = config.model_dump(mode="json", exclude_none=True)
    for i, seg in enumerate(segments):
        name = "model" if i == 0 else f"model-{seg.split.date().isoformat()}"
        if seg.meta.train_period is not None:
            save_model(seg.meta, out / name, resolved)
    return out

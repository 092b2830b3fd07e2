"""What a sweep says beyond one lucky run: ``robustness.md`` and ``robustness.png``.

Reads ``sweep.csv`` (one row per run and strategy) and, for the returns, the
run folders it names. Every run of the sweep counts as one trial: a researcher
who ran them all could have reported any one, so the deflated Sharpe of the
best run uses the true number of trials, and the probability of backtest
overfitting is computed over all runs of a universe by CSCV (:mod:`reports.pbo`).
Computing returns a :class:`Robustness`; rendering only reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metabt.reports.comparison import ABLATIONS, pick_best_static
from metabt.reports.metrics import METRIC_KEYS
from metabt.reports.pbo import pbo_cscv
from metabt.reports.runfolder import SUBJECT, ordered_strategies, read_returns, read_study
from metabt.reports.significance import deflated_sharpe_ratio

#: Strategies whose result moves with the seed and the grid: PBO is computed for these.
LEARNED = (SUBJECT, *ABLATIONS)
_ID = {"run", "universe", "seed", "strategy", "status", "error"}


@dataclass(frozen=True)
class Robustness:
    """Everything robustness.md and robustness.png show."""

    n_runs: int
    n_failed: int
    grid_keys: list[str]
    sharpe: dict[str, list[float]]
    summary: pd.DataFrame
    beats: pd.DataFrame
    pbo: pd.DataFrame
    failed: pd.DataFrame


def _grid_keys(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in _ID and c not in METRIC_KEYS]


def _beats(ok: pd.DataFrame, runs_dir: Path, keys: list[str]) -> pd.DataFrame:
    """Per universe and grid point: the share of seeds where meta_adaptive beats each rival."""
    rows = []
    group_keys = ["universe", *keys]
    for group, frame in ok.groupby(group_keys, sort=False, dropna=False):
        sharpe = frame.pivot_table(index="run", columns="strategy", values="sharpe")
        if SUBJECT not in sharpe:
            continue
        wins: dict[str, list[bool]] = {"best static": []}
        for run, row in sharpe.iterrows():
            study = read_study(runs_dir / str(run) / "study.json")
            best, _ = pick_best_static(list(row.dropna().index), study.train_best, row.to_dict())
            if best is not None and np.isfinite(row[SUBJECT]):
                wins["best static"].append(bool(row[SUBJECT] > row[best]))
        for name in ABLATIONS:
            if name in sharpe:
                pair = sharpe[[SUBJECT, name]].dropna()
                wins[name] = list(pair[SUBJECT] > pair[name])
        label = dict(zip(group_keys, group if isinstance(group, tuple) else (group,)))
        rows.append(
            {
                **label,
                "seeds": len(sharpe),
                **{f"beats {k}": (np.mean(v) if v else math.nan) for k, v in wins.items()},
            }
        )
    return pd.DataFrame(rows)


def _summary(ok: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Per strategy: Sharpe spread across runs and the deflated Sharpe of its best run."""
    rows = []
    for name in ordered_strategies(list(ok["strategy"].unique())):
        frame = ok.loc[(ok["strategy"] == name) & ok["sharpe"].notna()]
        if frame.empty:
            continue
        s = frame["sharpe"].astype(float)
        best = frame.loc[s.idxmax()]
        run = runs_dir / str(best["run"])
        study = read_study(run / "study.json")
        returns = read_returns(run / "returns.csv")[name].dropna()
        # Trials: every run of the sweep, times the configs the study itself tried for it.
        n_trials = len(frame) * study.n_trials.get(name, 1)
        per_period = s / math.sqrt(study.periods_per_year)
        spread = float(per_period.std(ddof=1)) if len(s) > 1 else None
        rows.append(
            {
                "strategy": name,
                "runs": len(s),
                "median": s.median(),
                "q25": s.quantile(0.25),
                "q75": s.quantile(0.75),
                "min": s.min(),
                "max": s.max(),
                "share > 0": float((s > 0).mean()),
                "best run": best["run"],
                "trials": n_trials,
                "DSR of best": deflated_sharpe_ratio(returns, n_trials, spread),
            }
        )
    return pd.DataFrame(rows)


def _pbo(ok: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """PBO over all runs of each universe, for each learned strategy."""
    rows = []
    for universe, frame in ok.groupby("universe", sort=False):
        runs = list(dict.fromkeys(frame["run"]))
        returns = {run: read_returns(runs_dir / str(run) / "returns.csv") for run in runs}
        for name in LEARNED:
            cols = {run: r[name] for run, r in returns.items() if name in r}
            if len(cols) < 2:
                continue
            matrix = pd.DataFrame(cols).dropna()
            result = pbo_cscv(matrix.to_numpy())
            rows.append(
                {
                    "universe": universe,
                    "strategy": name,
                    "trials": result.n_trials,
                    "bars": len(matrix),
                    "blocks": result.n_blocks,
                    "splits": result.n_splits,
                    "PBO": result.pbo,
                }
            )
    return pd.DataFrame(rows)


def robustness(table: pd.DataFrame, runs_dir: Path) -> Robustness:
    """Aggregate a sweep table (the contents of ``sweep.csv``) and its run folders."""
    ok = table.loc[table["status"] == "ok"]
    failed = table.loc[table["status"] != "ok", ["run", "universe", "seed", "error"]]
    keys = _grid_keys(table)
    sharpe = {
        name: ok.loc[ok["strategy"] == name, "sharpe"].dropna().astype(float).tolist()
        for name in ordered_strategies(list(ok["strategy"].unique()))
    }
    empty = ok.empty
    return Robustness(
        n_runs=table["run"].nunique(),
        n_failed=failed["run"].nunique(),
        grid_keys=keys,
        sharpe=sharpe,
        summary=pd.DataFrame() if empty else _summary(ok, runs_dir),
        beats=pd.DataFrame() if empty else _beats(ok, runs_dir, keys),
        pbo=pd.DataFrame() if empty else _pbo(ok, runs_dir),
        failed=failed,
    )


def _md(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)\n"

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def to_markdown(r: Robustness) -> str:
    """robustness.md from a :class:`Robustness`."""
    parts = [
        "# Sweep robustness\n",
        (
            f"{r.n_runs} runs, {r.n_failed} failed; grid keys: "
            f"{', '.join(r.grid_keys) or 'none (seeds and universes only)'}. "
            "Every run counts as one trial.\n"
        ),
        "## Test Sharpe across runs, and the deflated Sharpe of the best run\n",
        (
            "DSR: probability that the best run's Sharpe beats the best of `trials` configurations "
            "with no edge (all runs times the configs the study tuned); above 0.95 is evidence.\n"
        ),
        _md(r.summary),
        (
            f"## Share of seeds in which {SUBJECT} beats the best static comparator and its "
            "ablations\n"
        ),
        "The best static comparator of each run is the one chosen in-sample.\n",
        _md(r.beats),
        "## Probability of backtest overfitting (CSCV over all runs of a universe)\n",
        (
            "About 0.5: picking the best run is picking noise; near 0: the best run keeps its "
            "rank out of sample. n/a: fewer than 2 runs or too few bars.\n"
        ),
        _md(r.pbo),
    ]
    if not r.failed.empty:
        parts += ["## Failed runs\n", _md(r.failed)]
    return "\n".join(parts)


def plot_robustness(r: Robustness, path: Path) -> None:
    """Box plot of each strategy's test Sharpe across runs (Agg canvas: no backend change)."""
    names = [n for n, v in r.sharpe.items() if v]
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if names:
        ax.boxplot([r.sharpe[n] for n in names], tick_labels=names)
        ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylabel("test Sharpe (annualised)")
    ax.set_title(f"Test Sharpe across {r.n_runs - r.n_failed} runs")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_robustness(table: pd.DataFrame, runs_dir: Path, out: Path) -> Robustness:
    """Write robustness.md and robustness.png into ``out``; return what they show."""
    result = robustness(table, runs_dir)
    (out / "robustness.md").write_text(to_markdown(result), encoding="utf-8")
    plot_robustness(result, out / "robustness.png")
    return result

"""Read and validate the files of a run folder that the reports are built from.

The runner writes these files; the reports rebuild everything from them, so
``metabt report RUN_DIR`` gives the same result as the run itself. Anything that
does not match the contract raises :class:`ReportError` naming the file and the fix
instead of producing a silently wrong report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metabt.feeds.did_you_mean import did_you_mean
from metabt.reports.errors import ReportError

#: Fixed strategy names, in the order every table and plot lists them.
STRATEGY_ORDER: tuple[str, ...] = (
    "meta_adaptive",
    "meta_frozen",
    "meta_calendar",
    "meta_random_init",
    "erm_static",
    "meta_oracle",
    "buy_and_hold",
    "sma_cross",
    "momentum",
    "rsi_reversion",
    "buy_and_hold_vt",
    "tsmom_vt",
    "autocorr",
    "regime_bound",
)
#: Static-parameter comparators (tuned in-sample, frozen for the test period).
STATIC_COMPARATORS: tuple[str, ...] = (
    "buy_and_hold",
    "sma_cross",
    "momentum",
    "rsi_reversion",
    "buy_and_hold_vt",
    "tsmom_vt",
    "autocorr",
)
#: The synthetic lab's ceiling: told the true regime of every bar.
CEILING = "regime_bound"
#: The strategy the study is about.
SUBJECT = "meta_adaptive"

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "positions.csv": ("date", "strategy", "asset", "weight"),
    "trades.csv": ("date", "strategy", "asset", "size", "price", "value", "commission"),
    "adaptations.csv": (
        "date",
        "strategy",
        "asset",
        "trigger",
        "window",
        "loss_before",
        "loss_after",
    ),
}
STUDY_KEYS = (
    "periods_per_year",
    "n_trials",
    "train_best",
    "regime_changes",
    "title",
    "split",
    "seed",
)

_FIX = "rerun `metabt backtest` to rewrite the run folder"


@dataclass(frozen=True)
class Study:
    """Facts about the study that the returns alone do not carry (``study.json``).

    Attributes
    ----------
    periods_per_year : int
        Bars per year used to annualise every metric (252 for daily equities).
    n_trials : Mapping[str, int]
        Configurations tried per strategy before the test period; deflates its Sharpe.
    train_best : Mapping[str, float] or None
        In-sample Sharpe per strategy; picks the best static comparator without
        looking at the test period. ``None`` when the runner did not record it.
    regime_changes : tuple of (Timestamp, str)
        True regime changes ``(date, asset)``, known only in synthetic studies.
    title : str
        Heading of the reports.
    split : Timestamp or None
        First bar of the test period.
    seed : int
        Seed of the bootstrap intervals (default 0), so a rebuild gives the same numbers.
    """

    periods_per_year: int
    n_trials: Mapping[str, int] = field(default_factory=dict)
    train_best: Mapping[str, float] | None = None
    regime_changes: tuple[tuple[pd.Timestamp, str], ...] = ()
    title: str = "metabt run"
    split: pd.Timestamp | None = None
    seed: int = 0


@dataclass(frozen=True)
class RunFolder:
    """Everything the reports need, read from one run folder."""

    path: Path
    returns: pd.DataFrame
    positions: pd.DataFrame
    trades: pd.DataFrame
    adaptations: pd.DataFrame
    study: Study


def ordered_strategies(names: list[str] | pd.Index) -> list[str]:
    """Known strategies in :data:`STRATEGY_ORDER`, then any others as given."""
    names = list(names)
    known = [n for n in STRATEGY_ORDER if n in names]
    return known + [n for n in names if n not in STRATEGY_ORDER]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise ReportError(
            f"{path}: file not found; a run folder needs it, {_FIX} or point RUN_DIR at one"
        )
    return path


def _naive_dates(values: pd.Series | pd.Index, path: Path) -> pd.DatetimeIndex:
    try:
        dates = pd.DatetimeIndex(pd.to_datetime(values, format="mixed"))
    except (ValueError, TypeError) as exc:
        raise ReportError(f"{path}: column 'date' has an unreadable date ({exc}); {_FIX}") from None
    # Daily bars: dropping the zone keeps the wall-clock date, and QuantStats
    # raises TypeError when a tz-aware series meets a tz-naive benchmark.
    return dates.tz_localize(None) if dates.tz is not None else dates


def read_returns(path: Path) -> pd.DataFrame:
    """Read ``returns.csv``: tz-naive, sorted, unique date index; one finite column per strategy."""
    _require(path)
    try:
        raw = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ReportError(f"{path}: not a readable CSV ({exc}); {_FIX}") from None
    if "date" not in raw.columns:
        raise ReportError(f"{path}: no 'date' column (found {list(raw.columns)}); {_FIX}")
    if raw.shape[1] < 2 or raw.empty:
        raise ReportError(f"{path}: holds no strategy returns; {_FIX}")
    frame = raw.drop(columns="date")
    frame.index = _naive_dates(raw["date"], path).rename("date")
    if frame.index.has_duplicates:
        dup = frame.index[frame.index.duplicated()][0].date()
        raise ReportError(f"{path}: date {dup} appears twice; {_FIX}")
    if not frame.index.is_monotonic_increasing:
        raise ReportError(f"{path}: dates are not sorted; sort the rows by date or {_FIX}")
    for name in frame.columns:
        col = pd.to_numeric(frame[name], errors="coerce")
        bad = ~np.isfinite(col.to_numpy(dtype=float))
        if bad.any():
            when = frame.index[bad.argmax()].date()
            raise ReportError(
                f"{path}: column '{name}' has a missing or non-numeric return on {when}; "
                f"write 0.0 for flat days or {_FIX}"
            )
        below = col.to_numpy(dtype=float) < -1.0
        if below.any():
            when = frame.index[below.argmax()].date()
            raise ReportError(
                f"{path}: column '{name}' loses {-col.iloc[below.argmax()]:.0%} on {when}, more "
                f"than everything (a daily return is >= -100%); the file is corrupt: {_FIX}"
            )
        frame[name] = col.astype(float)
    return frame


def read_events(path: Path) -> pd.DataFrame:
    """Read one of the long event files (positions, trades, adaptations); empty is fine."""
    _require(path)
    needed = REQUIRED_COLUMNS[path.name]
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ReportError(
            f"{path}: empty file, expected header {','.join(needed)}; {_FIX}"
        ) from None
    except pd.errors.ParserError as exc:
        raise ReportError(f"{path}: not a readable CSV ({exc}); {_FIX}") from None
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}; {_FIX}")
    frame["date"] = _naive_dates(frame["date"], path)
    frame["strategy"] = frame["strategy"].astype(str)
    frame["asset"] = frame["asset"].astype(str)
    if path.name == "positions.csv":
        weight = pd.to_numeric(frame["weight"], errors="coerce")
        bad = ~np.isfinite(weight.to_numpy(dtype=float))
        if bad.any():
            raise ReportError(
                f"{path}: row {int(bad.argmax()) + 2} has a missing or non-numeric weight; {_FIX}"
            )
        frame["weight"] = weight.astype(float)
    return frame


def _key_error(path: Path, key: str, what: str) -> ReportError:
    return ReportError(f"{path}: key '{key}' {what}; {_FIX}")


def read_study(path: Path) -> Study:
    """Read ``study.json``; unknown keys are an error with a "did you mean" hint."""
    _require(path)
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); {_FIX}") from None
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: expected a JSON object at the top level; {_FIX}")
    for key in raw:
        if key not in STUDY_KEYS:
            hint = did_you_mean(key, STUDY_KEYS) or f"known keys: {', '.join(STUDY_KEYS)}"
            raise ReportError(f"{path}: unknown key '{key}'; {hint}")
    ppy = raw.get("periods_per_year")
    if isinstance(ppy, bool) or not isinstance(ppy, int) or ppy <= 0:
        raise _key_error(
            path, "periods_per_year", "must be a positive integer (252 for daily bars)"
        )
    n_trials = raw.get("n_trials", {})
    if not isinstance(n_trials, dict) or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in n_trials.values()
    ):
        raise _key_error(path, "n_trials", "must map strategy names to integers >= 1")
    train_best = raw.get("train_best")
    if train_best is not None and (
        not isinstance(train_best, dict)
        or any(v is not None and not isinstance(v, (int, float)) for v in train_best.values())
    ):
        raise _key_error(path, "train_best", "must map strategy names to in-sample Sharpe ratios")
    if train_best is not None:
        train_best = {
            k: float(v) for k, v in train_best.items() if v is not None and np.isfinite(v)
        }
    changes = []
    for i, item in enumerate(raw.get("regime_changes") or []):
        if not isinstance(item, dict) or "date" not in item:
            raise _key_error(
                path, f"regime_changes[{i}]", "must be an object with 'date' and 'asset'"
            )
        try:
            when = pd.Timestamp(item["date"])
        except (ValueError, TypeError):
            raise _key_error(path, f"regime_changes[{i}].date", "is not a date") from None
        changes.append((when.tz_localize(None) if when.tz else when, str(item.get("asset", ""))))
    split = raw.get("split")
    try:
        split_ts = pd.Timestamp(split) if split else None
    except (ValueError, TypeError):
        raise _key_error(path, "split", "is not a date (YYYY-MM-DD)") from None
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _key_error(path, "seed", "must be an integer")
    return Study(
        periods_per_year=ppy,
        n_trials=dict(n_trials),
        train_best=train_best,
        regime_changes=tuple(changes),
        title=str(raw.get("title") or path.parent.name or "metabt run"),
        split=split_ts,
        seed=seed,
    )


def load_run(run_dir: Path) -> RunFolder:
    """Read every file the reports need from ``run_dir``.

    Raises
    ------
    ReportError
        If the folder or a required file is missing or does not match the contract.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a folder; pass the run folder `metabt backtest` wrote")
    return RunFolder(
        path=run_dir,
        returns=read_returns(run_dir / "returns.csv"),
        positions=read_events(run_dir / "positions.csv"),
        trades=read_events(run_dir / "trades.csv"),
        adaptations=read_events(run_dir / "adaptations.csv"),
        study=read_study(run_dir / "study.json"),
    )

"""Where a study's bars come from: the bundled sample, a CSV folder, the synthetic lab, yfinance.

Whatever the source, the result is validated canonical frames cut to the
study's period, plus the true regimes when the source knows them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metabt.backtests.config import StudyConfig
from metabt.feeds.errors import DataError
from metabt.feeds.features import LABEL_DELAY, FeatureSpec
from metabt.feeds.loaders import Frames, load_folder, load_sample, slice_period
from metabt.feeds.synthetic import (
    REGIMES_FILE,
    SyntheticMarketSpec,
    make_regime_market,
    read_regimes_csv,
)
from metabt.feeds.validate import require_bars, validate_bars

log = logging.getLogger(__name__)

# A start on a weekend or holiday just before the first bar is inside the data, not before it.
_SLACK = pd.Timedelta(days=5)


@dataclass(frozen=True)
class StudyData:
    """Bars of every symbol over ``[start, end]`` and, if known, each bar's true regime."""

    frames: Frames
    regimes: dict[str, pd.Series] | None
    source: str


def _symbols(config: StudyConfig) -> list[str] | None:
    return None if config.data.symbols == "all" else list(config.data.symbols)


def _from_source(config: StudyConfig) -> tuple[Frames, dict[str, pd.Series] | None, str]:
    data = config.data
    checks = {"allow_jumps": data.allow_jumps, "allow_gaps": data.allow_gaps}
    if data.source == "sample":
        return load_sample(_symbols(config), **checks), None, "bundled sample"
    if data.source == "csv":
        folder = Path(str(data.path))
        frames = load_folder(folder, _symbols(config), **checks)
        regimes = (
            read_regimes_csv(folder, list(frames)) if (folder / REGIMES_FILE).is_file() else None
        )
        return frames, regimes, str(folder)
    if data.source == "synthetic":
        syn = config.synthetic
        market = make_regime_market(
            SyntheticMarketSpec(
                n_assets=syn.n_assets,
                n_bars=syn.n_bars,
                start=str(syn.start),
                mean_duration=syn.mean_duration,
                correlation=syn.correlation,
                seed=syn.seed,
            )
        )
        frames = {s: validate_bars(f, f"synthetic:{s}") for s, f in market.frames.items()}
        wanted = _symbols(config)
        if wanted is not None:
            missing = [s for s in wanted if s not in frames]
            if missing:
                raise DataError(
                    f"synthetic market has no symbol {missing[0]!r}; it has {', '.join(frames)}"
                )
            frames = {s: frames[s] for s in wanted}
        regimes = {s: market.regimes[s].rename_axis("date") for s in frames}
        return frames, regimes, f"synthetic (seed {syn.seed})"
    from metabt.feeds.yahoo import download_bars  # optional extra, imported only when asked for

    symbols = _symbols(config)
    if symbols is None:
        raise DataError(
            "data.source = 'yfinance' needs an explicit symbol list (data.symbols or --symbols A,B)"
        )
    raw = download_bars(symbols, data.start or "1990-01-01", data.end, cache_dir=data.cache_dir)
    frames = {s: validate_bars(f, f"yfinance:{s}", **checks) for s, f in raw.items()}
    return frames, None, "yfinance"


def check_period(frames: Frames, start: object, end: object, source: str) -> None:
    """Refuse a ``start`` before, or an ``end`` after, a symbol's bars (never clip silently)."""
    for symbol, frame in frames.items():
        if frame.empty:
            continue
        first, last = frame.index[0], frame.index[-1]
        span = f"its bars run {first.date()} .. {last.date()}"
        if start is not None and pd.Timestamp(start) < first.normalize() - _SLACK:
            raise DataError(
                f"{source}:{symbol}: start {start} is before the first bar; {span}. "
                "Pass a --start inside that range (or fix data.start)"
            )
        if end is not None and pd.Timestamp(end) > last.normalize() + _SLACK:
            raise DataError(
                f"{source}:{symbol}: end {end} is after the last bar; {span}. "
                "Pass an --end inside that range (or fix data.end)"
            )


def load_study_data(config: StudyConfig) -> StudyData:
    """Load, validate and cut the bars of ``config``; check there are enough of them."""
    frames, regimes, source = _from_source(config)
    data = config.data
    check_period(frames, data.start, data.end, source)
    end = None if data.end is None else pd.Timestamp(data.end) + pd.Timedelta(days=1)
    frames = slice_period(frames, data.start, end)
    split = pd.Timestamp(data.split)
    # One task: the feature warm-up, a support window, the label delay, a query window.
    warmup = FeatureSpec(**config.features.model_dump()).warmup
    need_train = warmup + config.strategy.max_window + 1 + config.task.max_query + LABEL_DELAY
    for symbol, frame in frames.items():
        name = f"{source}:{symbol}"
        require_bars(
            frame.loc[frame.index < split],
            need_train,
            name,
            f"training before the split {data.split}",
        )
        require_bars(
            frame.loc[frame.index >= split], 20, name, f"a test period after the split {data.split}"
        )
    if regimes is not None:
        regimes = {
            s: r.loc[frames[s].index.min() : frames[s].index.max()] for s, r in regimes.items()
        }
    log.info("loaded %d symbols from %s", len(frames), source)
    return StudyData(frames, regimes, source)


def bar_dates(frames: Frames, start: object, end: object) -> str:
    """``first .. last`` date of the bars of any symbol in ``[start, end)``, for messages.

    Periods are kept half-open inside metabt (the end is the first bar *not* used);
    people read the first and last bar actually used.
    """
    dates = pd.DatetimeIndex(sorted(set().union(*(f.index for f in frames.values()))))
    inside = dates[(dates >= pd.Timestamp(start)) & (dates < pd.Timestamp(end))]
    if inside.empty:
        return "no bars"
    return f"{inside[0].date()} .. {inside[-1].date()}"

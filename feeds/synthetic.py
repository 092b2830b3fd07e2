"""A seeded synthetic market whose assets switch between known trading regimes.

This is the lab where regime-adaptive trading must be shown to work before it is
trusted on real data: every bar comes with the regime that generated it, so a
detector's delay and a policy's fit to each regime can be measured exactly.

Each asset's daily close-to-close log return follows an AR(1) process whose
parameters belong to the asset's current regime::

    r_t = mu_k + phi_k * (r_{t-1} - mu_k) + vol_k * sqrt(1 - phi_k**2) * eps_t

so that within a regime the returns have mean ``mu_k``, standard deviation
``vol_k`` and lag-1 autocorrelation ``phi_k``. The standardised shocks ``eps``
share one common factor (pairwise correlation ``correlation``) across assets,
as real equities do. Regimes follow a per-asset hidden Markov chain (or a fixed
schedule). The open is the previous close times a small independent gap, so the
autocorrelation survives into open-to-open returns, which is what a strategy
filling at the next open earns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from metabt.feeds.errors import DataError

YAHOO_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close", "Adj Close", "Volume")
REGIMES_FILE = "regimes.csv"


@dataclass(frozen=True)
class RegimeSpec:
    """One market regime of the synthetic generator.

    Parameters
    ----------
    name : str
        Label written to ``regimes.csv`` and used in schedules.
    ar : float
        Lag-1 autocorrelation of daily log returns, in (-1, 1). Positive values
        reward trend following, negative values reward fading the last move.
    vol : float
        Daily standard deviation of log returns (0.01 = 1 % a day).
    drift : float
        Mean daily log return (0.0004 is about 10 % a year).
    """

    name: str
    ar: float
    vol: float
    drift: float = 0.0


# Daily autocorrelations of +-0.15..0.25 are stronger than in most real markets
# but still hidden under noise bar by bar (R^2 of 2-6 %), and calm / volatile
# levels overlap with a trailing-vol estimate for a few bars after each switch.
DEFAULT_REGIMES: tuple[RegimeSpec, ...] = (
    RegimeSpec("trend_calm", ar=0.15, vol=0.008, drift=0.0003),
    RegimeSpec("trend_volatile", ar=0.20, vol=0.020, drift=0.0),
    RegimeSpec("revert_calm", ar=-0.15, vol=0.006, drift=0.0002),
    RegimeSpec("revert_volatile", ar=-0.20, vol=0.025, drift=-0.0002),
)


@dataclass(frozen=True)
class SyntheticMarketSpec:
    """Everything that fixes a synthetic market; the same spec gives the same bars.

    Parameters
    ----------
    n_assets : int
        Number of symbols, named ``SYN0``, ``SYN1``, ...
    n_bars : int
        Business days per asset.
    start : str
        First date (a business day on or after it).
    mean_duration : float
        Expected regime length in bars for the Markov chain: each bar the chain
        leaves its regime with probability ``1 / mean_duration`` for a different
        regime drawn uniformly.
    regimes : tuple of RegimeSpec
        The regimes; the regime id of a bar is its index in this tuple.
    correlation : float
        Pairwise correlation of the return shocks across assets (one common
        factor), in [0, 1).
    seed : int
        Seed of every random draw.
    schedule : sequence of (bar, regime name) or None
        Fixed switches applied to every asset instead of the Markov chain, e.g.
        ``((0, "trend_calm"), (500, "revert_volatile"))``; the first entry must
        start at bar 0.
    gap_vol : float
        Standard deviation of the overnight gap, as a fraction of the regime vol.
    start_price : float
        Price level of the first close (each asset scaled by a seeded factor).
    """

    n_assets: int = 8
    n_bars: int = 2500
    start: str = "2005-01-03"
    mean_duration: float = 120.0
    regimes: tuple[RegimeSpec, ...] = DEFAULT_REGIMES
    correlation: float = 0.3
    seed: int = 0
    schedule: tuple[tuple[int, str], ...] | None = None
    gap_vol: float = 0.1
    start_price: float = 100.0

    def __post_init__(self) -> None:
        _check_spec(self)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(f"SYN{i}" for i in range(self.n_assets))


@dataclass(frozen=True)
class SyntheticMarket:
    """Bars in Yahoo layout plus the true regime id of every bar.

    Attributes
    ----------
    spec : SyntheticMarketSpec
    frames : dict of str to DataFrame
        ``Date``-indexed ``Open, High, Low, Close, Adj Close, Volume`` per symbol.
    regimes : dict of str to Series
        Integer regime id per bar, same index as the frame.
    regime_names : tuple of str
        ``regime_names[id]`` is the name of regime ``id``.
    """

    spec: SyntheticMarketSpec
    frames: dict[str, pd.DataFrame] = field(repr=False)
    regimes: dict[str, pd.Series] = field(repr=False)
    regime_names: tuple[str, ...]

    def change_points(self, symbol: str) -> list[pd.Timestamp]:
        """Dates of the first bar of every regime after the first one."""
        if symbol not in self.regimes:
            raise DataError(
                f"synthetic market: unknown symbol {symbol!r}; choose one of {sorted(self.regimes)}"
            )
        ids = self.regimes[symbol].to_numpy()
        starts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        return list(self.regimes[symbol].index[starts])


def _check_spec(spec: SyntheticMarketSpec) -> None:
    """Raise one clear DataError naming the bad field of a spec."""

    def bad(key: str, what: str) -> DataError:
        return DataError(f"SyntheticMarketSpec.{key}: {what}")

    if spec.n_assets < 1:
        raise bad("n_assets", f"got {spec.n_assets}, need at least 1")
    if spec.n_bars < 2:
        raise bad("n_bars", f"got {spec.n_bars}, need at least 2")
    if not spec.mean_duration >= 1.0:
        raise bad("mean_duration", f"got {spec.mean_duration}, need >= 1 bar")
    if not 0.0 <= spec.correlation < 1.0:
        raise bad("correlation", f"got {spec.correlation}, need 0 <= correlation < 1")
    if not spec.gap_vol >= 0.0 or not spec.start_price > 0.0:
        raise bad("gap_vol/start_price", "need gap_vol >= 0 and start_price > 0")
    if not spec.regimes:
        raise bad("regimes", "need at least one regime")
    names = [r.name for r in spec.regimes]
    if len(set(names)) != len(names):
        raise bad("regimes", f"regime names must be unique, got {names}")
    for r in spec.regimes:
        if not -1.0 < r.ar < 1.0:
            raise bad("regimes", f"regime {r.name!r}: ar={r.ar} must lie in (-1, 1)")
        if not r.vol > 0.0:
            raise bad("regimes", f"regime {r.name!r}: vol={r.vol} must be > 0")
    if spec.schedule is None:
        if len(spec.regimes) < 2:
            raise bad("regimes", "Markov switching needs two regimes; give a schedule instead")
        return
    bars = [b for b, _ in spec.schedule]
    if not bars or bars[0] != 0:
        raise bad("schedule", "the first entry must start at bar 0")
    if any(b2 <= b1 for b1, b2 in pairwise(bars)) or bars[-1] >= spec.n_bars:
        raise bad("schedule", f"bars must increase strictly and stay below n_bars={spec.n_bars}")
    for _, name in spec.schedule:
        if name not in names:
            raise bad("schedule", f"unknown regime {name!r}; choose one of {names}")


def _markov_path(
    n_bars: int, n_regimes: int, mean_duration: float, rng: np.random.Generator
) -> np.ndarray:
    """Regime ids of one asset: stay with prob 1 - 1/mean_duration, else jump elsewhere."""
    leave = rng.random(n_bars) < 1.0 / mean_duration
    # A jump adds 1..n-1 modulo n, so it always lands on a different regime and
    # the expected run length is exactly mean_duration.
    steps = rng.integers(1, n_regimes, size=n_bars)
    ids = np.empty(n_bars, dtype=np.int64)
    ids[0] = rng.integers(0, n_regimes)
    for t in range(1, n_bars):
        ids[t] = (ids[t - 1] + steps[t]) % n_regimes if leave[t] else ids[t - 1]
    return ids


def _scheduled_path(spec: SyntheticMarketSpec) -> np.ndarray:
    names = [r.name for r in spec.regimes]
    ids = np.empty(spec.n_bars, dtype=np.int64)
    entries = list(spec.schedule or ())
    for (bar, name), nxt in zip(entries, [b for b, _ in entries[1:]] + [spec.n_bars]):
        ids[bar:nxt] = names.index(name)
    return ids


def _simulate_asset(
    ids: np.ndarray,
    shocks: np.ndarray,
    spec: SyntheticMarketSpec,
    rng: np.random.Generator,
    index: pd.DatetimeIndex,
) -> pd.DataFrame:
    """Bars of one asset given its regime path and standardised return shocks."""
    regimes = spec.regimes
    mu = np.array([r.drift for r in regimes])[ids]
    phi = np.array([r.ar for r in regimes])[ids]
    vol = np.array([r.vol for r in regimes])[ids]
    scale = vol * np.sqrt(1.0 - phi**2)
    n = len(ids)
    ret = np.empty(n)
    # Start from the stationary distribution of the first regime, no burn-in needed.
    ret[0] = mu[0] + vol[0] * shocks[0]
    for t in range(1, n):
        ret[t] = mu[t] + phi[t] * (ret[t - 1] - mu[t]) + scale[t] * shocks[t]

    level = spec.start_price * float(np.exp(rng.normal(0.0, 0.5)))
    close = level * np.exp(np.cumsum(ret))
    prev_close = np.concatenate(([level], close[:-1]))
    # The gap is noise around the previous close, independent of the day's
    # return: open-to-open returns then inherit the AR(1) structure of closes.
    open_ = prev_close * np.exp(spec.gap_vol * vol * rng.standard_normal(n))
    # Intraday excursions beyond the open/close body, scaled by the regime vol
    # (about the size of a real daily range: high-low ~ 1.5-2 daily vols).
    high = np.maximum(open_, close) * np.exp(0.5 * vol * np.abs(rng.standard_normal(n)))
    low = np.minimum(open_, close) * np.exp(-0.5 * vol * np.abs(rng.standard_normal(n)))
    # Volume rises with volatility and with the size of the day's move, as it does
    # in real markets, so it carries some (not perfect) regime information.
    volume = (
        1e6 * (vol / 0.01) ** 0.8 * np.exp(0.3 * rng.standard_normal(n) + 10.0 * np.abs(ret - mu))
    )

    # Rounding is monotone, so it keeps High >= max(Open, Close) >= ... >= Low;
    # four decimals also make the CSV text round-trip exactly.
    prices = {
        name: np.round(col, 4)
        for name, col in (("Open", open_), ("High", high), ("Low", low), ("Close", close))
    }
    if min(p.min() for p in prices.values()) <= 0.0:
        raise DataError(
            "synthetic market: a price rounded to 0; raise start_price "
            "or lower the regimes' drift/vol"
        )
    frame = pd.DataFrame(prices, index=index)
    frame["Adj Close"] = frame["Close"]
    frame["Volume"] = np.round(volume).astype(np.int64)
    return frame[list(YAHOO_COLUMNS)]


def make_regime_market(spec: SyntheticMarketSpec | None = None) -> SyntheticMarket:
    """Generate a synthetic regime-switching market.

    Parameters
    ----------
    spec : SyntheticMarketSpec, optional
        Defaults to ``SyntheticMarketSpec()`` (8 assets x 2500 business days).

    Returns
    -------
    SyntheticMarket
        Frames in Yahoo layout and the true regime id of every bar.

    Notes
    -----
    Each asset draws from its own child of ``SeedSequence(spec.seed)``, so adding
    assets leaves the existing assets' regime paths and idiosyncratic draws unchanged.
    """
    spec = spec or SyntheticMarketSpec()
    index = pd.bdate_range(start=spec.start, periods=spec.n_bars, name="Date")
    factor_seq, *asset_seqs = np.random.SeedSequence(spec.seed).spawn(spec.n_assets + 1)
    factor = np.random.default_rng(factor_seq).standard_normal(spec.n_bars)
    load = np.sqrt(spec.correlation)

    frames: dict[str, pd.DataFrame] = {}
    regimes: dict[str, pd.Series] = {}
    for symbol, seq in zip(spec.symbols, asset_seqs):
        rng = np.random.default_rng(seq)
        if spec.schedule is None:
            ids = _markov_path(spec.n_bars, len(spec.regimes), spec.mean_duration, rng)
        else:
            ids = _scheduled_path(spec)
        shocks = load * factor + np.sqrt(1.0 - spec.correlation) * rng.standard_normal(spec.n_bars)
        frames[symbol] = _simulate_asset(ids, shocks, spec, rng, index)
        regimes[symbol] = pd.Series(ids, index=index, name="regime")
    return SyntheticMarket(
        spec=spec, frames=frames, regimes=regimes, regime_names=tuple(r.name for r in spec.regimes)
    )


def write_csv_folder(market: SyntheticMarket, folder: str | Path) -> Path:
    """Write ``SYMBOL.csv`` files in Yahoo layout and ``regimes.csv`` into ``folder``.

    ``regimes.csv`` has the columns ``date, symbol, regime, regime_name``
    (``regime`` is the integer id). Existing files of the same names are replaced.

    Returns
    -------
    Path
        The folder, ready for ``--data``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for symbol, frame in market.frames.items():
        frame.to_csv(folder / f"{symbol}.csv", index_label="Date", date_format="%Y-%m-%d")
        ids = market.regimes[symbol]
        rows.append(
            pd.DataFrame(
                {
                    "date": ids.index.strftime("%Y-%m-%d"),
                    "symbol": symbol,
                    "regime": ids.to_numpy(),
                    "regime_name": np.asarray(market.regime_names, dtype=object)[ids.to_numpy()],
                }
            )
        )
    pd.concat(rows, ignore_index=True).to_csv(folder / REGIMES_FILE, index=False)
    return folder


def read_regimes_csv(
    folder: str | Path, symbols: Sequence[str] | None = None
) -> dict[str, pd.Series]:
    """Read the true regime ids written by :func:`write_csv_folder`.

    Returns a ``date``-indexed integer Series per symbol (all symbols by default).
    """
    path = Path(folder) / REGIMES_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: not found, so the true regimes of these bars are unknown; only a folder "
            "of synthetic bars saved together with its regimes has this file (in Python: "
            "write_csv_folder from metabt.feeds.synthetic)"
        )
    table = pd.read_csv(path, parse_dates=["date"])
    missing = {"date", "symbol", "regime"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}")
    wanted = list(symbols) if symbols is not None else list(dict.fromkeys(table["symbol"]))
    out: dict[str, pd.Series] = {}
    for symbol in wanted:
        part = table[table["symbol"] == symbol]
        if part.empty:
            raise DataError(f"{path}: no rows for symbol {symbol!r}")
        out[symbol] = pd.Series(
            part["regime"].to_numpy(dtype=np.int64),
            index=pd.DatetimeIndex(part["date"], name="date"),
            name="regime",
        )
    return out

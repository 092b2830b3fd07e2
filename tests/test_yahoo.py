"""The yfinance loader passes explicit arguments, caches, and fails clearly; never online."""

from __future__ import annotations

import sys
import types
from datetime import date

import numpy as np
import pandas as pd
import pytest

from metabt.feeds.errors import DataError
from metabt.feeds.validate import validate_bars
from metabt.feeds.yahoo import cache_path, download_bars

TODAY = date(2024, 3, 6)  # a Wednesday; bars dated on or after it are not closed yet


def _bars(start: str, end: str, adjusted: bool = False) -> pd.DataFrame:
    """What yfinance returns for one ticker with multi_level_index=False."""
    index = pd.bdate_range(start, end, inclusive="left", name="Date")
    close = 100.0 + np.arange(len(index), dtype=float)
    frame = pd.DataFrame(
        {
            "Open": close - 0.5,
            "High": close + 1.0,
            "Low": close - 1.0,
            "Close": close,
            "Volume": np.full(len(index), 1000, dtype=np.int64),
        },
        index=index,
    )
    if not adjusted:
        frame.insert(4, "Adj Close", close * 0.9)
    return frame


class FakeYF:
    """Stands in for the yfinance module; records every call."""

    def __init__(self, answer=None, error: Exception | None = None) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.answer, self.error = answer, error

    def download(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        if self.error is not None:
            raise self.error
        if self.answer is not None:
            return self.answer(*args, **kwargs)
        # Yahoo's end is exclusive and it happily returns today's unfinished bar.
        end = (pd.Timestamp(kwargs["end"]) + pd.Timedelta(days=3)).strftime("%Y-%m-%d")
        return _bars(kwargs["start"], end, adjusted=kwargs["auto_adjust"])


@pytest.fixture
def fake_yf(monkeypatch):
    fake = FakeYF()
    monkeypatch.setitem(sys.modules, "yfinance", types.SimpleNamespace(download=fake.download))
    return fake


def test_every_argument_is_explicit_one_symbol_per_call(fake_yf, tmp_path):
    download_bars(["SPY", "TLT"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    assert [args for args, _ in fake_yf.calls] == [("SPY",), ("TLT",)]
    for _, kwargs in fake_yf.calls:
        assert kwargs["start"] == "2024-01-02" and kwargs["end"] == "2024-02-01"
        assert kwargs["interval"] == "1d"
        assert kwargs["auto_adjust"] is False
        assert kwargs["actions"] is False and kwargs["progress"] is False
        assert kwargs["threads"] is False and kwargs["multi_level_index"] is False


def test_returns_yahoo_layout_that_validates(fake_yf, tmp_path):
    frames = download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    frame = frames["SPY"]
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
    assert frame.index.name == "Date" and frame.index.tz is None
    assert frame.index[0] == pd.Timestamp("2024-01-02")
    assert frame.index[-1] == pd.Timestamp("2024-01-31")  # end is exclusive
    canonical = validate_bars(frame, "yfinance:SPY")
    np.testing.assert_allclose(canonical["close"], frame["Adj Close"])


def test_cache_is_written_and_reused_without_network(fake_yf, tmp_path):
    first = download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    assert cache_path(tmp_path, "SPY", "1d", False).is_file()
    assert len(fake_yf.calls) == 1
    fake_yf.error = AssertionError("a cache hit must not call yfinance")
    # A narrower range inside the cached one is served from the cache, sliced.
    again = download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    inner = download_bars(["SPY"], "2024-01-10", "2024-01-20", cache_dir=tmp_path, today=TODAY)
    assert len(fake_yf.calls) == 1
    pd.testing.assert_frame_equal(again["SPY"], first["SPY"], check_freq=False)
    assert inner["SPY"].index.min() >= pd.Timestamp("2024-01-10")
    assert inner["SPY"].index.max() < pd.Timestamp("2024-01-20")


def test_cache_keeps_adjustment_apart_and_refresh_downloads(fake_yf, tmp_path):
    kw = {"cache_dir": tmp_path, "today": TODAY}
    download_bars(["SPY"], "2024-01-02", "2024-02-01", **kw)
    adjusted = download_bars(["SPY"], "2024-01-02", "2024-02-01", auto_adjust=True, **kw)
    assert len(fake_yf.calls) == 2 and fake_yf.calls[1][1]["auto_adjust"] is True
    assert (adjusted["SPY"]["Adj Close"] == adjusted["SPY"]["Close"]).all()
    download_bars(["SPY"], "2024-01-02", "2024-02-01", refresh=True, **kw)
    assert len(fake_yf.calls) == 3


def test_range_beyond_cache_downloads_the_union(fake_yf, tmp_path):
    kw = {"cache_dir": tmp_path, "today": TODAY}
    download_bars(["SPY"], "2024-01-02", "2024-02-01", **kw)
    later = download_bars(["SPY"], "2024-01-15", "2024-03-01", **kw)
    assert fake_yf.calls[-1][1]["start"] == "2024-01-02"
    assert fake_yf.calls[-1][1]["end"] == "2024-03-01"
    assert later["SPY"].index[-1] == pd.Timestamp("2024-02-29")
    fake_yf.error = AssertionError("covered by the grown cache")
    download_bars(["SPY"], "2024-01-02", "2024-03-01", **kw)


def test_bars_dated_today_or_later_are_dropped(fake_yf, tmp_path):
    # The fake answers three days past `end`, including today's unfinished bar.
    frame = download_bars(["SPY"], "2024-02-20", None, cache_dir=tmp_path, today=TODAY)["SPY"]
    assert fake_yf.calls[0][1]["end"] == "2024-03-06"
    assert frame.index.max() == pd.Timestamp("2024-03-05")
    assert (frame.index < pd.Timestamp(TODAY)).all()
    cached = pd.read_parquet(cache_path(tmp_path, "SPY", "1d", False))
    assert (cached.index < pd.Timestamp(TODAY)).all()


@pytest.mark.parametrize("answer", [pd.DataFrame(), None])
def test_empty_answer_is_a_clear_error(monkeypatch, tmp_path, answer):
    fake = FakeYF(answer=lambda *a, **k: answer)
    monkeypatch.setitem(sys.modules, "yfinance", types.SimpleNamespace(download=fake.download))
    with pytest.raises(DataError, match=r"yfinance:SPY: empty answer.*--data DIR"):
        download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    assert not cache_path(tmp_path, "SPY", "1d", False).exists()


def test_network_failure_is_a_clear_error(monkeypatch, tmp_path):
    fake = FakeYF(error=ConnectionError("Failed to resolve query1.finance.yahoo.com"))
    monkeypatch.setitem(sys.modules, "yfinance", types.SimpleNamespace(download=fake.download))
    with pytest.raises(DataError, match=r"download failed \(Failed to resolve.*--data DIR.*cache"):
        download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)


def test_multiindex_answer_is_flattened(monkeypatch, tmp_path):
    def answer(symbol, **kwargs):
        frame = _bars(kwargs["start"], kwargs["end"])
        frame.columns = pd.MultiIndex.from_product([frame.columns, [symbol]])
        return frame

    fake = FakeYF(answer=answer)
    monkeypatch.setitem(sys.modules, "yfinance", types.SimpleNamespace(download=fake.download))
    frame = download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)[
        "SPY"
    ]
    assert list(frame.columns) == ["Open", "High", "Low", "Close", "Adj Close", "Volume"]


@pytest.mark.parametrize("symbol", ["../x", "/etc/passwd", "a/b", "a\\b", "", "..", "SPY\n"])
def test_symbol_that_could_escape_the_cache_is_refused(fake_yf, tmp_path, symbol):
    with pytest.raises(DataError, match="symbol"):
        download_bars([symbol], "2024-01-02", "2024-02-01", cache_dir=tmp_path / "c", today=TODAY)
    assert fake_yf.calls == []
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("symbol", ["^GSPC", "BRK-B", "EURUSD=X", "0700.HK", "BTC-USD"])
def test_real_ticker_shapes_are_accepted(fake_yf, tmp_path, symbol):
    frames = download_bars([symbol], "2024-01-02", "2024-01-10", cache_dir=tmp_path, today=TODAY)
    assert cache_path(tmp_path, symbol, "1d", False).parent.parent == tmp_path
    assert not frames[symbol].empty


def test_missing_yfinance_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "yfinance", None)  # makes `import yfinance` fail
    with pytest.raises(DataError, match=r'pip install "metabt\[yfinance\]"'):
        download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)


def test_intraday_interval_is_refused(fake_yf, tmp_path):
    with pytest.raises(DataError, match="interval '1h'"):
        download_bars(
            ["SPY"], "2024-01-02", "2024-02-01", interval="1h", cache_dir=tmp_path, today=TODAY
        )
    assert fake_yf.calls == []


def test_cache_hit_needs_neither_network_nor_yfinance(fake_yf, monkeypatch, tmp_path):
    first = download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    monkeypatch.setitem(sys.modules, "yfinance", None)
    again = download_bars(["SPY"], "2024-01-02", "2024-02-01", cache_dir=tmp_path, today=TODAY)
    pd.testing.assert_frame_equal(again["SPY"], first["SPY"], check_freq=False)

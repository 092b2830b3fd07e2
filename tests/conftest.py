"""Shared fixtures: small real data from the bundled sample and a CLI runner."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg", force=True)

from metabt.backtests.cli import main
from metabt.feeds.loaders import load_sample


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``metabt ARGS`` in-process through the real entry point (error handling included)."""

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["metabt", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def spy() -> pd.DataFrame:
    """Real SPY daily bars, 2004-2009 (includes the 2008 crash)."""
    frame = load_sample(["SPY"])["SPY"]
    return frame.loc["2004":"2009"]

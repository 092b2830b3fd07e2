"""``metabt bench``: milliseconds per paper bar, 8 assets, with ten years of stored history.

A paper state on the bundled sample's eight ETFs starts on 2015-03-02 with a
warm-up back to their first common bar (2005-02-25, 2,429 bars), trades with a
briefly meta-trained model from the replay source, and is timed bar by bar,
each bar's whole transaction included (trade, ledger rows, snapshot, commit,
manifest). The first bar feeds the warm-up through Backtrader once; every later
bar starts from the snapshot. ``paper_ms_per_bar_after_2500`` is the median of
the bars traded once more than 2,500 bars are stored (after about 70 paper
bars). Run on whatever else the machine is doing: read the figures as this
machine's, at that moment.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

START = "2015-03-02"
HISTORY = 2500  # stored bars (each asset) before a bar counts as "after 2500"
CONFIG = """
title = "paper bench"
study = "basket"
seed = 1

[data]
source = "sample"
symbols = ["SPY", "TLT", "XLE", "EEM", "IWM", "QQQ", "XLF", "XLU"]
start = "2005-02-25"
split = "2015-03-02"
end = "2017-11-10"

[meta]
meta_steps = 2
tasks_per_step = 8
eval_every = 2
val_tasks = 8

[strategy]
warmup_bars = 2520  # the most a config allows: 2,429 bars stored before the first
"""


def bench_paper(n_bars: int = 10) -> dict:
    """ms of the first bar, and the median ms of ``n_bars`` bars once 2,500 bars are stored."""
    from metabt.backtests.paper.loop import PaperLoop
    from metabt.backtests.paper.session import PaperOptions, open_session

    with tempfile.TemporaryDirectory(prefix="metabt-paper-bench-") as tmp:
        config = Path(tmp) / "paper.toml"
        config.write_text(CONFIG)
        options = PaperOptions(
            config_path=config, state_dir=Path(tmp) / "state", start=date.fromisoformat(START)
        )
        session = open_session(options, progress=False)
        try:
            loop = PaperLoop(session)
            bars = session.source.new_bars(session.last_bar, session.start)
            ms: list[float] = []
            stored: list[float] = []
            fed: list[int] = []
            while len(stored) < n_bars:
                bar = next(bars)
                t0 = time.perf_counter()
                outcome = loop.process_bar(bar)
                ms.append((time.perf_counter() - t0) * 1e3)
                history = min(len(f) for f in session.frames.values())
                if history > HISTORY:
                    stored.append(ms[-1])
                    fed.append(outcome.bars_fed)
        finally:
            session.close()
    return {
        "paper_ms_per_bar_first": ms[0],
        "paper_ms_per_bar_after_2500": statistics.median(stored),
        "paper_bench_bars_fed_per_bar": max(fed),
    }

"""Golden output: ``comparison.md`` of a fixed run folder, byte for byte.

The run folder is written by :func:`write_fixed_run` from Python's own seeded
``random.Random`` (whose sequence Python keeps stable across versions) with
every number formatted to fixed decimals, so the files are the same bytes on
every machine. Any change to what the comparison computes or how it is written
shows up as a diff against ``tests/data/golden/comparison.md``.

After an intended change of wording, rewrite the golden file with
``METABT_UPDATE_GOLDEN=1 python -m pytest tests/test_comparison_golden.py`` and
commit it on its own, so the diff shows exactly what readers will see change.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pandas as pd

from metabt.reports.build import build_reports

GOLDEN = Path(__file__).parent / "data" / "golden" / "comparison.md"
N_BARS = 260
ASSETS = ("AAA", "BBB")

# (daily drift, weight on the market factor, own noise): chosen so that the
# comparison meets every case the verdict words: a static comparator chosen
# in-sample that is not the best on the test period, ablations close to the
# meta strategy (narrow, some significant intervals), very different CAGR and
# volatility for similar Sharpe ratios, and the synthetic ceiling.
SHAPES: dict[str, tuple[float, float, float]] = {
    "meta_adaptive": (0.0001, 0.35, 0.004),
    "meta_frozen": (0.0003, 0.35, 0.004),
    "meta_calendar": (0.0005, 0.35, 0.0045),
    "meta_random_init": (0.0000, 0.35, 0.004),
    "erm_static": (0.0002, 0.30, 0.006),
    "buy_and_hold": (0.0006, 1.00, 0.000),
    "sma_cross": (0.0002, 0.60, 0.006),
    "momentum": (0.0012, 0.80, 0.006),
    "buy_and_hold_vt": (0.0005, 0.70, 0.001),
    "regime_bound": (0.0012, 0.40, 0.004),
}
ABLATIONS = ("meta_frozen", "meta_calendar", "meta_random_init")


def write_fixed_run(root: Path) -> Path:
    """Write a complete, deterministic run folder into ``root``."""
    rng = random.Random(20240601)
    dates = [d.date().isoformat() for d in pd.bdate_range("2021-01-04", periods=N_BARS)]
    market = [rng.gauss(0.0, 0.01) for _ in dates]
    # The ablations share the meta strategy's own noise with a small twist, as
    # the same network traded differently would.
    meta_noise = [rng.gauss(0.0, 1.0) for _ in dates]
    columns = {}
    for name, (drift, beta, noise) in SHAPES.items():
        if name == "meta_adaptive":
            own = meta_noise
        elif name in ABLATIONS:
            own = [0.7 * m + 0.3 * rng.gauss(0.0, 1.0) for m in meta_noise]
        else:
            own = [rng.gauss(0.0, 1.0) for _ in dates]
        columns[name] = [drift + beta * f + noise * e for f, e in zip(market, own)]

    root.mkdir(parents=True, exist_ok=True)
    lines = ["date," + ",".join(SHAPES)]
    lines += [
        d + "," + ",".join(f"{columns[n][i]:.6f}" for n in SHAPES) for i, d in enumerate(dates)
    ]
    (root / "returns.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    positions = ["date,strategy,asset,weight"]
    trades = ["date,strategy,asset,size,price,value,commission"]
    for name in SHAPES:
        for asset in ASSETS:
            for d in dates[::20]:
                weight = rng.uniform(-0.5, 0.5)
                positions.append(f"{d},{name},{asset},{weight:.4f}")
                trades.append(f"{d},{name},{asset},10,100.0,1000.0,0.5")
    (root / "positions.csv").write_text("\n".join(positions) + "\n", encoding="utf-8")
    (root / "trades.csv").write_text("\n".join(trades) + "\n", encoding="utf-8")

    adaptations = ["date,strategy,asset,trigger,window,start,loss_before,loss_after"]
    for i in range(0, N_BARS, 13):
        trigger = "alarm" if i % 39 == 0 else "regime"
        asset = ASSETS[i % 2]
        adaptations.append(f"{dates[i]},meta_adaptive,{asset},{trigger},40,{dates[0]},0.41,0.22")
    (root / "adaptations.csv").write_text("\n".join(adaptations) + "\n", encoding="utf-8")

    study = {
        "periods_per_year": 252,
        "n_trials": {**{n: 3 for n in SHAPES if n.startswith("meta_")}, "sma_cross": 12},
        "train_best": {"buy_and_hold": 0.40, "sma_cross": 0.90, "momentum": 0.50},
        "regime_changes": [{"date": dates[100], "asset": "AAA"}],
        "title": "golden study",
        "split": dates[0],
        "seed": 7,
    }
    (root / "study.json").write_text(json.dumps(study, indent=1), encoding="utf-8")
    return root


def test_comparison_markdown_of_a_fixed_run_is_byte_identical(tmp_path: Path) -> None:
    run = write_fixed_run(tmp_path / "run")
    build_reports(run, reps=400)
    written = (run / "comparison.md").read_bytes()
    if os.environ.get("METABT_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_bytes(written)
    assert written == GOLDEN.read_bytes(), (
        f"comparison.md differs from {GOLDEN}; if the change is intended, rewrite it with "
        "METABT_UPDATE_GOLDEN=1 and commit it on its own"
    )

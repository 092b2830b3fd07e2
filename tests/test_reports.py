"""Reports built from a run folder: the files, the numbers, the verdict, the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from rich.console import Console

from metabt.reports.build import OUTPUT_FILES, build_reports
from metabt.reports.comparison import Outcome, compare, differ_a_lot
from metabt.reports.errors import ReportError
from metabt.reports.markdown import to_markdown
from metabt.reports.metrics import compute_metrics, turnover, write_metrics
from metabt.reports.plots import relative_growth
from metabt.reports.runfolder import Study, read_returns, read_study
from metabt.reports.terminal import print_comparison
from metabt.reports.verdict import verdict, verdict_details

PPY = 252
ASSETS = ("AAA", "BBB")
NAMES = ("meta_adaptive", "meta_frozen", "buy_and_hold", "sma_cross", "momentum")


def make_run(
    root: Path,
    *,
    sharpes: dict[str, float] | None = None,
    n: int = 300,
    seed: int = 0,
    train_best: dict[str, float] | None = None,
) -> Path:
    """A small run folder: daily returns with chosen true Sharpes, events, study.json."""
    sharpes = sharpes or {
        "meta_adaptive": 1.0,
        "meta_frozen": 0.5,
        "buy_and_hold": 0.8,
        "sma_cross": 0.3,
        "momentum": 0.0,
    }
    rng = np.random.default_rng(seed)
    idx = pd.bdate_range("2022-01-03", periods=n, name="date")
    vol = 0.01
    returns = pd.DataFrame(
        {k: rng.normal(s / math.sqrt(PPY) * vol, vol, n) for k, s in sharpes.items()}, index=idx
    )
    root.mkdir(parents=True, exist_ok=True)
    returns.to_csv(root / "returns.csv")
    positions, trades, adaptations = [], [], []
    for name in sharpes:
        for asset in ASSETS:
            for d in idx[::25]:
                w = float(rng.uniform(-0.5, 0.5))
                positions.append((d, name, asset, w))
                trades.append((d, name, asset, 10.0, 100.0, 1000.0, 0.5))
    for d in idx[rng.choice(n, 7, replace=False)]:
        adaptations.append((d, "meta_adaptive", str(rng.choice(ASSETS)), "regime", 30, 0.4, 0.2))
    pd.DataFrame(positions, columns=["date", "strategy", "asset", "weight"]).to_csv(
        root / "positions.csv", index=False
    )
    pd.DataFrame(
        trades, columns=["date", "strategy", "asset", "size", "price", "value", "commission"]
    ).to_csv(root / "trades.csv", index=False)
    pd.DataFrame(
        adaptations,
        columns=["date", "strategy", "asset", "trigger", "window", "loss_before", "loss_after"],
    ).to_csv(root / "adaptations.csv", index=False)
    study = {
        "periods_per_year": PPY,
        "n_trials": {k: 20 for k in sharpes},
        "regime_changes": [{"date": str(idx[n // 3].date()), "asset": "AAA"}],
        "title": "test study",
        "split": str(idx[0].date()),
    }
    if train_best is not None:
        study["train_best"] = train_best
    (root / "study.json").write_text(json.dumps(study), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = make_run(
        tmp_path_factory.mktemp("run"),
        train_best={"sma_cross": 1.2, "buy_and_hold": 0.4, "momentum": 0.9},
    )
    return run, build_reports(run, reps=200)


def _strict_json(path: Path) -> dict:
    def reject(token: str) -> None:
        raise AssertionError(f"{path.name} holds {token}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def test_build_writes_every_report_file(built: tuple[Path, dict]) -> None:
    run, _ = built
    for name in OUTPUT_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert (run / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run / "tearsheet.html").read_text(encoding="utf-8")
    # The benchmark is the static comparator chosen in-sample, not a ticker.
    assert "meta_adaptive vs sma_cross" in html and "SMA_CROSS" in html
    md = (run / "comparison.md").read_text(encoding="utf-8")
    assert "sma_cross, the best static comparator chosen in-sample" in md


def test_metrics_json_matches_quantstats_on_returns_csv(built: tuple[Path, dict]) -> None:
    run, returned = built
    metrics = _strict_json(run / "metrics.json")
    assert metrics == returned
    returns = pd.read_csv(run / "returns.csv", index_col="date", parse_dates=True)
    assert list(metrics) == list(NAMES)
    for name in NAMES:
        r = returns[name]
        expected = {
            "sharpe": qs.stats.sharpe(r, rf=0.0, periods=PPY),
            "sortino": qs.stats.sortino(r, rf=0.0, periods=PPY),
            "cagr": qs.stats.cagr(r, rf=0.0, periods=PPY),
            "volatility": qs.stats.volatility(r, periods=PPY),
            "max_drawdown": qs.stats.max_drawdown(r),
            "calmar": qs.stats.calmar(r, periods=PPY),
        }
        for key, value in expected.items():
            assert metrics[name][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    trades = pd.read_csv(run / "trades.csv")
    assert metrics["sma_cross"]["n_trades"] == int((trades["strategy"] == "sma_cross").sum())
    assert metrics["meta_adaptive"]["n_adaptations"] == 7
    assert metrics["meta_frozen"]["n_adaptations"] == 0


def test_turnover_counts_every_weight_change_per_year() -> None:
    positions = pd.DataFrame(
        [
            ("2022-01-03", "s", "A", 0.5),
            ("2022-01-04", "s", "A", -0.5),
            ("2022-01-04", "s", "B", 0.2),
            ("2022-01-05", "s", "B", 0.2),
        ],
        columns=["date", "strategy", "asset", "weight"],
    )
    # 0.5 to enter A, 1.0 to flip it, 0.2 to enter B, nothing on the last day;
    # over half a year of bars that is 3.4 per year.
    assert turnover(positions, "s", n_periods=126, periods_per_year=PPY) == pytest.approx(3.4)
    assert turnover(positions, "absent", n_periods=126, periods_per_year=PPY) is None


def test_flat_strategy_writes_null_not_nan(tmp_path: Path) -> None:
    idx = pd.bdate_range("2022-01-03", periods=50, name="date")
    returns = pd.DataFrame({"buy_and_hold": 0.0}, index=idx)
    empty = pd.DataFrame(columns=["date", "strategy", "asset", "weight"])
    metrics = compute_metrics(returns, empty, empty, empty, PPY)
    out = _strict_json(write_metrics(metrics, tmp_path / "metrics.json"))
    assert out["buy_and_hold"]["sharpe"] is None
    assert out["buy_and_hold"]["turnover"] is None
    assert out["buy_and_hold"]["cagr"] == 0.0


def _comparison(tmp_path: Path, sharpes: dict[str, float], train_best: dict | None = None):
    run = make_run(tmp_path, sharpes=sharpes, n=500, train_best=train_best)
    returns = read_returns(run / "returns.csv")
    empty = pd.DataFrame(columns=["date", "strategy", "asset", "weight"])
    metrics = compute_metrics(returns, empty, empty, empty, PPY)
    return compare(returns, metrics, read_study(run / "study.json"), reps=300)


def test_verdict_says_lost_when_the_meta_strategy_is_clearly_worse(tmp_path: Path) -> None:
    c = _comparison(
        tmp_path,
        {"meta_adaptive": -2.5, "sma_cross": 2.5, "momentum": 0.0},
        train_best={"sma_cross": 1.0, "momentum": 0.2},
    )
    assert c.outcomes["sma_cross"] is Outcome.LOST and c.headline is Outcome.LOST
    assert verdict(c).startswith(
        "meta_adaptive lost to sma_cross, the best static comparator chosen in-sample "
        "(significant at 95%)."
    )
    assert verdict(c) in to_markdown(c)
    console = Console(record=True, width=400)
    print_comparison(c, console)
    assert verdict(c) in console.export_text()


def test_verdict_says_beat_when_the_meta_strategy_is_clearly_better(tmp_path: Path) -> None:
    c = _comparison(
        tmp_path,
        {"meta_adaptive": 3.0, "sma_cross": -1.5, "momentum": 0.0},
        train_best={"sma_cross": 1.0, "momentum": 0.2},
    )
    assert c.outcomes["sma_cross"] is Outcome.BEAT
    assert verdict(c).startswith(
        "meta_adaptive beat sma_cross, the best static comparator chosen in-sample "
        "(significant at 95%)."
    )


def test_verdict_says_level_when_the_interval_contains_zero(tmp_path: Path) -> None:
    c = _comparison(
        tmp_path,
        {"meta_adaptive": 1.0, "sma_cross": 0.6, "momentum": 0.0},
        train_best={"sma_cross": 1.0, "momentum": 0.2},
    )
    ci = c.pairs["sma_cross"]
    # A higher Sharpe whose interval contains 0: not a win.
    assert ci.diff > 0 and ci.low < 0 < ci.high
    assert c.outcomes["sma_cross"] is Outcome.LEVEL
    assert verdict(c).startswith(
        "meta_adaptive was level with sma_cross, the best static comparator chosen in-sample "
        "(not significant)."
    )
    assert "beat" not in verdict(c) and "WON" not in to_markdown(c)


def test_verdict_leads_with_buy_and_hold_and_the_best_static_then_the_ablations(
    tmp_path: Path,
) -> None:
    c = _comparison(
        tmp_path,
        {
            "meta_adaptive": 2.0,
            "meta_frozen": 2.0,
            "meta_random_init": -2.0,
            "buy_and_hold": 5.0,
            "sma_cross": -2.0,
        },
        train_best={"sma_cross": 1.0, "buy_and_hold": 0.2},
    )
    text = verdict(c)
    assert text.startswith(
        "meta_adaptive lost to buy_and_hold (significant at 95%) and beat sma_cross, "
        "the best static comparator chosen in-sample (significant at 95%)."
    )
    assert c.headline is Outcome.LOST  # one significant loss is enough to say lost
    assert "the meta-learned init helped (significant at 95%)" in text
    assert c.outcomes["meta_frozen"] in (Outcome.LEVEL, Outcome.BEAT, Outcome.LOST)
    assert "against meta_frozen (what adaptation adds): Sharpe" in to_markdown(c)


def test_terminal_colour_follows_the_outcome_not_the_words(tmp_path: Path) -> None:
    # meta_adaptive beats the comparator chosen in-sample but not another static one
    # on the test period: the details mention the better one; the colour stays green.
    c = _comparison(
        tmp_path,
        {"meta_adaptive": 3.0, "sma_cross": -1.5, "momentum": 4.0},
        train_best={"sma_cross": 1.0, "momentum": 0.2},
    )
    assert c.headline is Outcome.BEAT
    console = Console(record=True, width=100, force_terminal=True, color_system="standard")
    print_comparison(c, console)
    out = console.export_text(styles=True)
    assert "\x1b[1;32mmeta_adaptive beat sma_cross" in out
    assert "momentum (static, not the one chosen in-sample) had a higher test Sharpe" in out


def test_cagr_and_volatility_are_stated_when_they_differ_a_lot() -> None:
    rng = np.random.default_rng(3)
    idx = pd.bdate_range("2022-01-03", periods=500, name="date")
    base = rng.normal(0.0006, 0.01, len(idx))
    returns = pd.DataFrame(
        {
            "meta_adaptive": 0.4 * base,  # the same Sharpe at less than half the risk
            "buy_and_hold": base,
            "sma_cross": 0.4 * rng.normal(0.0006, 0.01, len(idx)),
        },
        index=idx,
    )
    empty = pd.DataFrame(columns=["date", "strategy", "asset", "weight"])
    metrics = compute_metrics(returns, empty, empty, empty, PPY)
    study = Study(periods_per_year=PPY, train_best={"sma_cross": 1.0, "buy_and_hold": 0.5})
    c = compare(returns, metrics, study, reps=200)
    assert c.scale_differs == {"buy_and_hold": True, "sma_cross": False}
    lines = {line.split(":")[0]: line for line in verdict_details(c)}
    assert "CAGR" in lines["against buy_and_hold"] and "volatility" in lines["against buy_and_hold"]
    assert "CAGR" not in lines["against sma_cross"]


@pytest.mark.parametrize(
    ("a", "b", "far"),
    [
        (0.033, 0.073, True),  # the README's demo: 3.3% vs 7.3% CAGR
        (0.113, 0.126, False),
        (0.02, -0.02, True),
        (0.004, -0.005, False),  # under a percentage point apart
        (None, 0.05, False),
    ],
)
def test_differ_a_lot(a: float | None, b: float | None, far: bool) -> None:
    assert differ_a_lot(a, b) is far


def test_best_static_is_chosen_in_sample_not_on_the_test_period(tmp_path: Path) -> None:
    sharpes = {"meta_adaptive": 0.5, "sma_cross": 3.0, "momentum": -1.0}
    c = _comparison(tmp_path / "a", sharpes, train_best={"sma_cross": 0.1, "momentum": 0.9})
    assert c.best_static == "momentum"
    assert "momentum, the best static comparator chosen in-sample" in verdict(c)
    # ... and a test-period loss to another static strategy is still said plainly.
    assert any(
        line.startswith("sma_cross (static, not the one chosen in-sample) had a higher test")
        for line in verdict_details(c)
    )
    # Without in-sample Sharpes it falls back to the test period and says so.
    c = _comparison(tmp_path / "b", sharpes, train_best=None)
    assert c.best_static == "sma_cross" and "TEST Sharpe" in verdict(c)


def test_run_without_meta_adaptive_still_builds(tmp_path: Path) -> None:
    run = make_run(tmp_path, sharpes={"meta_frozen": 0.5, "sma_cross": 0.3}, n=120)
    with pytest.warns(UserWarning, match="meta_adaptive"):
        metrics = build_reports(run, reps=50)
    assert set(metrics) == {"meta_frozen", "sma_cross"}
    assert "No verdict" in (run / "comparison.md").read_text(encoding="utf-8")
    assert "meta_adaptive absent" in (run / "tearsheet.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "missing", ["returns.csv", "positions.csv", "trades.csv", "adaptations.csv", "study.json"]
)
def test_missing_file_raises_report_error_naming_it(tmp_path: Path, missing: str) -> None:
    run = make_run(tmp_path, n=60)
    (run / missing).unlink()
    with pytest.raises(ReportError, match=missing.replace(".", r"\.")) as info:
        build_reports(run)
    assert "\n" not in str(info.value)
    assert not (run / "metrics.json").exists()


def test_nan_return_is_rejected_with_column_and_date(tmp_path: Path) -> None:
    run = make_run(tmp_path, n=60)
    frame = pd.read_csv(run / "returns.csv")
    frame.loc[10, "sma_cross"] = np.nan
    frame.to_csv(run / "returns.csv", index=False)
    with pytest.raises(ReportError, match=r"returns\.csv: column 'sma_cross'.*2022-01-17"):
        build_reports(run)


def test_tz_aware_dates_are_read_as_naive(tmp_path: Path) -> None:
    path = tmp_path / "returns.csv"
    path.write_text(
        "date,meta_adaptive\n2022-01-03 00:00:00+00:00,0.01\n2022-01-04 00:00:00+00:00,-0.02\n",
        encoding="utf-8",
    )
    assert read_returns(path).index.tz is None


def test_study_typo_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"periods_per_year": 252, "n_trial": {}}), encoding="utf-8")
    with pytest.raises(ReportError, match="did you mean 'n_trials'"):
        read_study(path)


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_table_fits_the_width_without_cutting_a_cell(
    built: tuple[Path, dict], width: int
) -> None:
    run, _ = built
    console = Console(record=True, width=width)
    build_reports(run, console=console, reps=50)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width
    # Fitting by cutting cells would keep the width too: every cell must be whole.
    assert not any("…" in line for line in lines)
    header = next(line for line in lines if line.lstrip().startswith("Strategy"))
    for column in ("Sharpe", "Diff [95% CI]", "Result", "CAGR", "Vol", "Max DD"):
        assert column in header, (width, column)
    for name in NAMES:
        assert any(line.lstrip().startswith(name) for line in lines), name
    assert f"Every metric, PSR, DSR and trials: {run / 'comparison.md'}" in "".join(lines)


def test_relative_growth_separates_an_ablation_that_lies_on_the_meta_curve() -> None:
    idx = pd.bdate_range("2022-01-03", periods=250)
    base = np.random.default_rng(5).normal(0.0004, 0.01, len(idx))
    returns = pd.DataFrame(
        {"meta_adaptive": base, "meta_frozen": base, "meta_calendar": base + 0.0002}, index=idx
    )
    equity = (1.0 + returns).cumprod()
    rel = relative_growth(equity, "meta_adaptive", ["meta_frozen", "meta_calendar"])
    assert (rel["meta_frozen"] == 0.0).all()
    # 2 bp a day more, compounding: visibly above 0 and rising, though the curves overlap.
    assert (rel["meta_calendar"].diff().dropna() > 0).all()
    expected = 100 * (np.prod(1 + base + 0.0002) / np.prod(1 + base) - 1)
    assert rel["meta_calendar"].iloc[-1] == pytest.approx(expected)


def test_every_row_of_the_strategy_table_says_what_it_is(tmp_path: Path) -> None:
    from metabt.reports.tables import strategy_rows

    sharpes = {
        "meta_adaptive": 0.5,
        "meta_calendar": 0.4,
        "meta_context": 0.3,
        "meta_context_frozen": 0.2,
        "meta_memory_calendar": 0.1,
        "sma_cross": 0.0,
    }
    c = _comparison(tmp_path, sharpes, train_best={"sma_cross": 0.1})
    roles = {row[0]: row[1] for row in strategy_rows(c)[1]}
    assert roles == {
        "meta_adaptive": "meta policy, regime-triggered",
        "meta_calendar": "ablation: calendar re-adaptation",
        "meta_context": "context learner, regime-triggered",
        "meta_context_frozen": "ablation of meta_context: no context",
        "meta_memory_calendar": "ablation of meta_memory: calendar window",
        "sma_cross": "static comparator (best, in-sample)",
    }

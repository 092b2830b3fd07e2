"""The volatility study: does a meta-learned forecaster keep risk closer to target?

``study = "volatility"`` in a config runs this instead of the trading study:

1. meta-train the volatility forecaster (``[volatility.meta]``: algorithm, steps, step
   sizes) on tasks from the training period of every asset except ``volatility.heldout``;
2. forecast next-bar variance with every estimator (EWM, GARCH(1,1), GJR-GARCH, HAR-RV,
   meta), each from bars ``<= t`` only, the fitted ones fitted before the split and
   re-fitted on the walk-forward schedule;
3. score the forecasts on the test period against the variance proxy of the next bar:
   QLIKE, MSE of the log variance, and the Mincer-Zarnowitz R^2 (proxy regressed on
   forecast, per asset, averaged), over all bars and over the ``after_change`` bars that
   follow each change the detector reports, on the meta-trained and the held-out assets;
4. measure how close each estimator keeps risk to target: for every asset and month,
   the realised vol of the return sized by the forecast (``r_{t+1} / sigma_t``) against 1,
   and the share of months within 10%; and backtest the vol-targeted comparators and
   ``meta_adaptive`` (one trading policy meta-trained by ``[meta]``, as in the trading
   studies), after costs, sized by each of ``trade_estimators``.

The run folder holds ``config.toml``, ``study.json``, ``volatility.json`` (the numbers),
``volatility.md`` (the tables) and ``model_vol/`` (the forecaster's checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from metabt.backtests.config import ConfigError, Specs, StudyConfig, build_specs, dump_config
from metabt.backtests.data import StudyData, load_study_data
from metabt.backtests.runner import meta_adaptive_params, warmup_start
from metabt.backtests.training import train_meta, true_changes
from metabt.backtests.vol_scores import (
    MIN_MONTH_BARS,
    WITHIN,
    after_change_mask,
    alarm_bars,
    monthly_risk,
    noise_ceiling,
    paired_difference,
    pooled,
    pooled_scores,
    qlike_terms,
)
from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.loaders import slice_period
from metabt.feeds.tasks import TaskSpec
from metabt.feeds.vol_features import VolFeatureSpec, variance_proxy
from metabt.metamodels.model import TrainConfig
from metabt.metamodels.vol_model import save_vol_model, train_vol_model
from metabt.reports.metrics import return_metrics
from metabt.strategies.detectors import detect_changes
from metabt.strategies.engine import run_backtest
from metabt.strategies.meta_adaptive import MetaAdaptiveStrategy
from metabt.strategies.static import STATIC_STRATEGIES
from metabt.strategies.vol_estimators import (
    MIN_FIT_BARS,
    MetaVolSchedule,
    Schedule,
    forecast_variances,
)


# -- the study ----------------------------------------------------------------------------
def _check_heldout(config: StudyConfig, symbols: list[str]) -> list[str]:
    heldout = config.volatility.heldout
    missing = [s for s in heldout if s not in symbols]
    if missing:
        raise ConfigError(
            f"volatility.heldout names {missing[0]!r}, which is not among the study's "
            f"symbols ({', '.join(symbols)}); list only symbols in data.symbols"
        )
    if len(heldout) >= len(symbols):
        raise ConfigError("volatility.heldout leaves no symbol to meta-train on; hold out fewer")
    return list(heldout)


def run_volatility_study(config: StudyConfig, out: Path, console: Console | None = None) -> dict:
    """Run the volatility study of ``config`` into the run folder ``out``; return its numbers."""
    console = console or Console(stderr=True)
    vol = config.volatility
    specs = build_specs(config)
    data = load_study_data(config)
    symbols = list(data.frames)
    heldout = _check_heldout(config, symbols)
    split = pd.Timestamp(config.data.split)
    for symbol, frame in data.frames.items():
        if (n := int(frame.index.searchsorted(split))) < MIN_FIT_BARS:
            raise ConfigError(
                f"{symbol} has {n} bars before data.split {split.date()}; GARCH and HAR "
                f"are fitted on them and need {MIN_FIT_BARS}: move data.start or data.split"
            )
    trained = [s for s in symbols if s not in heldout]
    feature_spec = VolFeatureSpec(**vol.features.model_dump())
    task_spec = TaskSpec(
        min_support=vol.min_window,
        max_support=vol.max_window,
        min_query=1,
        max_query=config.task.max_query,
        change_share=config.task.change_share,
    )
    train_frames = {s: data.frames[s] for s in trained}
    if data.regimes is not None:
        changes = {s: [t for t in c if t < split] for s, c in true_changes(data.regimes).items()}
    else:
        before = slice_period(train_frames, None, split)
        changes = {
            s: detect_changes(f, vol.detector, **vol.detector_settings) for s, f in before.items()
        }
    console.print(
        f"meta-training the volatility forecaster on {', '.join(trained)} before {split.date()}"
    )
    train_config = TrainConfig(seed=config.seed, **vol.meta.model_dump())
    model = train_vol_model(
        train_frames, feature_spec, task_spec, train_config, config.data.start, split, changes
    )
    out.mkdir(parents=True, exist_ok=True)
    dump_config(config, out / "config.toml")
    save_vol_model(model, out / "model_vol", config.model_dump(mode="json", exclude_none=True))

    schedule = Schedule(split, vol.refit_every)
    meta_schedule = MetaVolSchedule(
        vol.detector, dict(vol.detector_settings), vol.min_window, vol.max_window, vol.readapt_every
    )
    wanted = list(dict.fromkeys([*vol.estimators, *vol.trade_estimators]))
    forecasts = {
        name: forecast_variances(
            data.frames, name, schedule, model, meta_schedule, feature_spec.proxy
        )
        for name in wanted
    }
    # The proxy of bar t+1, aligned with the forecast made at t.
    proxies = {s: variance_proxy(f, feature_spec.proxy).shift(-1) for s, f in data.frames.items()}
    test = {s: np.asarray(f.index >= split) for s, f in data.frames.items()}
    after = {
        s: test[s]
        & after_change_mask(
            f.index, alarm_bars(f, vol.detector, vol.detector_settings), vol.after_change
        )
        for s, f in data.frames.items()
    }
    table: dict[str, dict[str, Any]] = {}
    for name in vol.estimators:
        fc = forecasts[name]
        row: dict[str, Any] = {}
        for label, group in (("", trained), ("heldout_", heldout)):
            if not group:
                continue
            for period, masks in (("all", test), ("after_change", after)):
                acc = pooled_scores(fc, proxies, masks, group)
                row[f"qlike_{label}{period}"] = acc["qlike"]
                row[f"mse_log_{label}{period}"] = acc["mse_log"]
                row[f"mz_r2_{label}{period}"] = acc["mz_r2"]
                row[f"n_{label}{period}"] = acc["n"]
                if "meta" in forecasts and name != "meta":
                    y = pooled(proxies, masks, group)
                    row[f"qlike_{label}{period}_minus_meta"] = paired_difference(
                        qlike_terms(pooled(fc, masks, group), y),
                        qlike_terms(pooled(forecasts["meta"], masks, group), y),
                        vol.after_change,
                    )
        row["mz_r2"] = row["mz_r2_all"]
        risk = pd.concat(
            [monthly_risk(fc[s][test[s]], data.frames[s]) for s in symbols], ignore_index=True
        )
        row["months_within_10pct"] = float((abs(risk - 1.0) <= WITHIN).mean())
        row["mean_abs_risk_error"] = float(abs(risk - 1.0).mean())
        table[name] = row
    sizes = [
        int(n)
        for s in symbols
        for n in data.frames[s].index[test[s]].to_period("M").value_counts()
        if n >= MIN_MONTH_BARS
    ]
    backtests = _backtests(config, specs, data, forecasts, split, console)
    result = {
        "split": str(split.date()),
        "assets": trained,
        "heldout": heldout,
        "proxy": feature_spec.proxy,
        "after_change_bars": vol.after_change,
        "months_within_10pct_ceiling": noise_ceiling(sizes, seed=config.seed),
        "forecaster": {
            "algorithm": model.algorithm,
            "inputs": list(feature_spec.names),
            "weights": [float(w) for w in model.params["w0"][:, 0]],
            "bias": float(model.params["b0"][0]),
            "inner_steps": model.inner_steps,
        },
        "backtests": backtests,
        **table,
    }
    (out / "volatility.json").write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    (out / "study.json").write_text(
        json.dumps({"study": "volatility", "split": str(split.date())}) + "\n"
    )
    (out / "volatility.md").write_text(render_markdown(result, vol.estimators))
    console.print(_console_table(result, vol.estimators))
    return result


def _backtests(
    config: StudyConfig,
    specs: Specs,
    data: StudyData,
    forecasts: dict[str, dict[str, pd.Series]],
    split: pd.Timestamp,
    console: Console,
) -> dict[str, dict[str, Any]]:
    """Sharpe, vol and drawdown of each vol-targeted strategy sized by each estimator."""
    vol = config.volatility
    end = None if config.data.end is None else pd.Timestamp(config.data.end) + pd.Timedelta(days=1)
    bars = slice_period(data.frames, warmup_start(config, split), end)
    runs: dict[str, tuple[type, dict, Any]] = {
        s: (STATIC_STRATEGIES[s], {"vol_target": config.strategy.vol_target}, None)
        for s in vol.strategies
        if s != "meta_adaptive"
    }
    if "meta_adaptive" in vol.strategies:
        console.print(
            f"meta-training the trading policy (seed {config.seed}) before {split.date()}"
        )
        policy = train_meta(data.frames, config, specs, split, False, regimes=data.regimes)
        runs["meta_adaptive"] = (
            MetaAdaptiveStrategy,
            meta_adaptive_params(config, policy, specs),
            lambda s, f: make_feature_feed(s, f, specs.features),
        )
    out: dict[str, dict[str, Any]] = {}
    for strategy, (cls, base, feed) in runs.items():
        for name in vol.trade_estimators:
            sizing = {s: np.sqrt(v) for s, v in forecasts[name].items()}
            params = {**base, "vol_forecast": sizing}
            res = run_backtest(
                bars, cls, params, specs.costs, trade_start=split, end=end, feed_factory=feed
            )
            m = return_metrics(res.returns, 252)
            monthly = res.returns.groupby(res.returns.index.to_period("M")).std() * np.sqrt(252)
            out[f"{strategy}@{name}"] = {
                "sharpe": m.get("sharpe"),
                "volatility": m.get("volatility"),
                "max_drawdown": m.get("max_drawdown"),
                # how steady the portfolio's risk is month to month (sd / mean of monthly vol)
                "monthly_vol_dispersion": float(monthly.std() / monthly.mean()),
            }
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


COLUMNS = (
    ("qlike_all", "QLIKE all"),
    ("qlike_after_change", "QLIKE after change"),
    ("qlike_heldout_all", "QLIKE held-out"),
    ("qlike_heldout_after_change", "QLIKE held-out after change"),
    ("mse_log_all", "MSE log var"),
    ("mz_r2", "MZ R^2"),
    ("mz_r2_heldout_all", "MZ R^2 held-out"),
    ("months_within_10pct", "months within 10%"),
)


def render_markdown(result: dict, estimators: list[str]) -> str:
    """The accuracy and risk tables of ``volatility.json`` as markdown."""
    lines = [
        f"# Volatility forecasts, test period from {result['split']}",
        "",
        f"Proxy: {result['proxy']}; after change = the {result['after_change_bars']} bars "
        f"after each detected change. Held-out: {', '.join(result['heldout']) or 'none'}.",
        "",
        "| estimator | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name in estimators:
        row = result[name]
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
    cells = [k for k, _ in COLUMNS[:4] if f"{k}_minus_meta" in result[estimators[0]]]
    if "meta" in estimators and cells:
        lines += [
            "",
            "QLIKE minus meta's (> 0: meta forecast better), 95% interval over 20-bar blocks:",
            "",
            "| estimator | " + " | ".join(dict(COLUMNS)[k] for k in cells) + " |",
            "|---" * (len(cells) + 1) + "|",
        ]
        for name in (e for e in estimators if e != "meta"):
            diffs = [result[name][f"{k}_minus_meta"] for k in cells]
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{_fmt(d['diff'])} [{_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}]" for d in diffs
                )
                + " |"
            )
    lines += [
        "",
        f"A forecast equal to the true vol of Gaussian returns would put "
        f"{result['months_within_10pct_ceiling']:.0%} of these months within 10%.",
        "",
        "| strategy (after costs) | Sharpe | vol | max drawdown | monthly vol dispersion |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["backtests"].items():
        lines.append(
            f"| {name} | {_fmt(m['sharpe'], 2)} | {_fmt(m['volatility'])} | "
            f"{_fmt(m['max_drawdown'])} | {_fmt(m['monthly_vol_dispersion'])} |"
        )
    return "\n".join(lines) + "\n"


def _console_table(result: dict, estimators: list[str]) -> Table:
    table = Table(title=f"volatility forecasts from {result['split']}")
    table.add_column("estimator")
    for _, title in COLUMNS:
        table.add_column(title, justify="right")
    for name in estimators:
        table.add_row(name, *(_fmt(result[name].get(k)) for k, _ in COLUMNS))
    return table

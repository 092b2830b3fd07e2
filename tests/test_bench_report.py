"""``metabt bench`` output: a progress line per stage, every figure against its one target."""

from __future__ import annotations

import io

from rich.console import Console

from metabt.backtests.bench_report import bench_table, run_stages, target_summary
from metabt.metamodels.bench import TARGETS as META_TARGETS
from metabt.metamodels.bench_targets import TARGETS, best_ar_flip, figure


def _figures() -> dict:
    return {
        "maml_vmap_ms": 16.4,
        "speedup_vs_loop": 31.0,  # met (>= 30)
        "speedup_vs_higher": 45.2,  # not met (>= 100)
        "adapt_p50_ms": 0.25,  # met: the bound itself
        "targets": dict(META_TARGETS),
        "strategy_speed_ratio": 0.1,
        "detectors": {
            # Catches most flips but too noisy: it must not count for the AR-flip target.
            "loud": {"update_us": 1.0, "ar_flip_detect_30": 0.9, "ar_false_alarms_per_1000": 2.5},
            "bocpd_ar": {
                "update_us": 140.0,
                "ar_flip_detect_30": 0.22,
                "ar_false_alarms_per_1000": 0.67,
            },
        },
    }


def _text(renderable: object, width: int = 200) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_the_json_targets_key_is_unchanged_and_comes_from_the_one_table() -> None:
    assert META_TARGETS == {
        "speedup_vs_higher": 100.0,
        "speedup_vs_loop": 30.0,
        "adapt_p50_ms": 0.25,
    }
    bounds = {t.key: t.bound for t in TARGETS}
    assert all(bounds[k] == v for k, v in META_TARGETS.items())
    assert len(bounds) == len(TARGETS)  # each figure has one target


def test_each_target_row_says_met_or_not_met() -> None:
    lines = _text(bench_table(_figures())).splitlines()

    def row(key: str) -> str:
        return next(line for line in lines if key in line)

    assert row("speedup_vs_loop").rstrip(" │").endswith("met") and "NOT" not in row(
        "speedup_vs_loop"
    )
    assert "NOT MET" in row("speedup_vs_higher") and ">= 100x" in row("speedup_vs_higher")
    assert "NOT MET" not in row("adapt_p50_ms") and "<= 0.25 ms" in row("adapt_p50_ms")
    assert "NOT MET" in row("detectors.bocpd_ar.update_us")
    assert "maml_vmap_ms" in row("maml_vmap_ms")  # figures without a target are listed too
    assert "NOT MET" in row("best_ar_flip_detect_30")


def test_the_ar_flip_target_counts_only_detectors_with_few_false_alarms() -> None:
    assert best_ar_flip(_figures()) == 0.22
    assert figure(_figures(), "detectors.loud.ar_flip_detect_30") == 0.9


def test_summary_counts_the_targets_this_run_measured() -> None:
    summary = target_summary(_figures())
    # measured: speedup x2, adapt, strategy ratio, bocpd_ar update, best AR flip
    assert summary.startswith("targets met: 2 of 6")
    assert "speedup_vs_higher" in summary and "speedup_vs_loop" not in summary


def test_progress_names_each_stage_when_output_is_piped() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    figures = run_stages(
        [("first: a", lambda: {"a": 1.0}), ("second: b", lambda: {"b": 2.0})], console
    )
    assert figures == {"a": 1.0, "b": 2.0}
    text = out.getvalue()
    assert "bench 1/2: first: a ..." in text and "bench 2/2: second: b ..." in text
    assert text.index("bench 1/2") < text.index("bench 2/2")

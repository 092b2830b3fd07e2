"""The speed and detection targets of ``metabt bench``, in one table.

Every figure ``metabt bench`` reports that has a target is listed here once: its
JSON key, what it measures, the bound and where the target was set. The bench's
final table and its ``targets`` JSON key both read this table, so a target is
changed in one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """One target: ``figure <op> bound``.

    Attributes
    ----------
    key : str
        The figure's key in ``metabt bench --json``; nested keys are dotted
        (``detectors.cusum.update_us``).
    what : str
        What the figure measures, in words.
    op : str
        ``">="`` (at least) or ``"<="`` (at most).
    bound : float
        The target, in ``unit``.
    unit : str
        ``"x"``, ``"ms"``, ``"us"``, ``"bars"``, ``"per 1,000 bars"``, ...
    """

    key: str
    what: str
    op: str
    bound: float
    unit: str

    def met(self, value: float | None) -> bool | None:
        """True or False; None when the figure was not measured (or is undefined)."""
        if value is None or not math.isfinite(value):
            return None
        return value >= self.bound if self.op == ">=" else value <= self.bound

    @property
    def text(self) -> str:
        """The target as a reader writes it: ``>= 100x``, ``<= 0.25 ms``."""
        sep = "" if self.unit == "x" else " "
        return f"{self.op} {self.bound:g}{sep}{self.unit}".rstrip()


TARGETS: tuple[Target, ...] = (
    # Meta-training (issue 12).
    Target("speedup_vs_higher", "2nd-order MAML meta-step, speed-up over higher", ">=", 100, "x"),
    Target("speedup_vs_loop", "the same, speed-up over a per-task loop", ">=", 30, "x"),
    # Trading-time cost (issues 9 and 10).
    Target("adapt_p50_ms", "adaptation at trading time, p50", "<=", 0.25, "ms"),
    Target("context_adapt_p50_ms", "context learner's adaptation, p50", "<=", 0.25, "ms"),
    Target("memory_adapt_p50_ms", "memory learner's adaptation, p50", "<=", 0.25, "ms"),
    Target("context_infer_us", "context learner's per-bar inference", "<=", 20, "us"),
    Target("memory_infer_us", "memory learner's per-bar inference", "<=", 20, "us"),
    # The strategy inside Backtrader (issue 12).
    Target(
        "strategy_speed_ratio",
        "MetaAdaptiveStrategy bars/s over the SMA crossover's",
        ">=",
        0.5,
        "",
    ),
    # The paper loop (issue 12): 8 assets, replay source, the bundled sample.
    Target(
        "paper_ms_per_bar_after_2500",
        "paper loop, one bar, 8 assets, after ~2,400 stored bars",
        "<=",
        20,
        "ms",
    ),
    # Detectors (issue 9): cost of an update, volatility changes, autocorrelation flips.
    *(
        Target(f"detectors.{name}.update_us", f"{name}: one update", "<=", 100, "us")
        for name in ("bocpd", "cusum", "bocpd_ar", "loss")
    ),
    *(
        Target(
            f"detectors.{name}.delay_bars",
            f"{name}: delay on a volatility doubling",
            "<=",
            10,
            "bars",
        )
        for name in ("bocpd", "cusum")
    ),
    *(
        Target(
            f"detectors.{name}.false_alarms_per_1000",
            f"{name}: false alarms, no change",
            "<=",
            0.5,
            "per 1,000 bars",
        )
        for name in ("bocpd", "cusum")
    ),
    Target(
        "best_ar_flip_detect_30",
        "AR flips caught in 30 bars, best detector with <= 1 false alarm / 1,000 bars",
        ">=",
        0.7,
        "",
    ),
    # The REST service (issue 11), with --serve.
    Target("serve_1asset_p50_ms", "/signal, 1 asset x 300 bars, p50", "<=", 5, "ms"),
    Target("serve_1asset_p99_ms", "/signal, 1 asset x 300 bars, p99", "<=", 20, "ms"),
    Target("serve_8assets_p50_ms", "/signal, 8 assets x 300 bars, p50", "<=", 20, "ms"),
    Target("serve_rps", "throughput, 2 workers, 32 clients", ">=", 300, "requests/s"),
    Target("serve_errors", "errors under that load", "<=", 0, ""),
)
#: The detectors' false-alarm bound for the AR-flip target.
AR_FLIP_MAX_FALSE_ALARMS = 1.0


def figure(figures: Mapping[str, Any], key: str) -> float | None:
    """The value of a (dotted) key in the bench's figures; None when absent."""
    if key == "best_ar_flip_detect_30":
        return best_ar_flip(figures)
    node: Any = figures
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def best_ar_flip(figures: Mapping[str, Any]) -> float | None:
    """The best share of AR flips caught within 30 bars, among detectors quiet enough."""
    shares = [
        stats["ar_flip_detect_30"]
        for stats in (figures.get("detectors") or {}).values()
        if stats.get("ar_flip_detect_30") is not None
        and stats.get("ar_false_alarms_per_1000") is not None
        and stats["ar_false_alarms_per_1000"] <= AR_FLIP_MAX_FALSE_ALARMS
    ]
    return max(shares) if shares else None


def targets_of(keys: set[str] | Mapping[str, Any]) -> dict[str, float]:
    """``{key: bound}`` of the targets whose figure is a top-level key in ``keys``."""
    return {t.key: float(t.bound) for t in TARGETS if t.key in keys}

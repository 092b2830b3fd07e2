"""The comparison's tables as rows of text, shared by the Markdown and terminal renderers."""

from __future__ import annotations

from metabt.reports.comparison import ComparatorBasis, Comparison
from metabt.reports.runfolder import CEILING, STATIC_COMPARATORS, SUBJECT
from metabt.reports.verdict import fmt, significance

ROLES: dict[str, str] = {
    SUBJECT: "meta policy, regime-triggered",
    "meta_frozen": "ablation: no adaptation",
    "meta_calendar": "ablation: calendar re-adaptation",
    "meta_random_init": "ablation: random init",
    "erm_static": "baseline: plain ERM network",
    "meta_oracle": "oracle: windows from the true changes",
    **{name: "static comparator" for name in STATIC_COMPARATORS},
    CEILING: "ceiling: told the true regime",
}
COLUMNS: tuple[tuple[str, str, str], ...] = (  # (metric key, header, format)
    ("sharpe", "Sharpe", "ratio"),
    ("sortino", "Sortino", "ratio"),
    ("cagr", "CAGR", "pct"),
    ("volatility", "Volatility", "pct"),
    ("max_drawdown", "Max DD", "pct"),
    ("calmar", "Calmar", "ratio"),
    ("turnover", "Turnover/yr", "ratio"),
    ("n_trades", "Trades", "int"),
    ("n_adaptations", "Adaptations", "int"),
)

Rows = tuple[list[str], list[list[str]]]


def _role_of(name: str) -> str:
    if name in ROLES:
        return ROLES[name]
    # The forward-pass learners of ``[meta] compare`` (meta_context, meta_memory) and
    # their two ablations, named meta_<learner>[_frozen | _calendar] by the runner.
    if not name.startswith("meta_"):
        return ""
    learner, _, ablation = name[len("meta_") :].partition("_")
    return {
        "": f"{learner} learner, regime-triggered",
        "frozen": f"ablation of meta_{learner}: no context",
        "calendar": f"ablation of meta_{learner}: calendar window",
    }.get(ablation, "")


def role(c: Comparison, name: str) -> str:
    """What a strategy is in this study, marking the best static comparator."""
    text = _role_of(name)
    if name != c.best_static:
        return text
    how = "in-sample" if c.best_static_basis is ComparatorBasis.IN_SAMPLE else "by test Sharpe"
    return f"{text} (best, {how})"


def strategy_rows(c: Comparison) -> Rows:
    """Every strategy with every metric, PSR, DSR and trials: the full table."""
    header = ["Strategy", "Role", *(h for _, h, _ in COLUMNS), "PSR", "DSR", "Trials"]
    rows = []
    for name, m in c.metrics.items():
        rows.append(
            [
                name,
                role(c, name),
                *(fmt(m[k], kind) for k, _, kind in COLUMNS),
                fmt(c.psr[name]),
                fmt(c.dsr[name]),
                fmt(c.study.n_trials.get(name), "int"),
            ]
        )
    return header, rows


def pair_rows(c: Comparison) -> Rows:
    """The subject against each other strategy: the Sharpe difference and its interval."""
    header = ["Against", f"Sharpe {c.subject}", "Sharpe other", "Difference", "CI", "Result"]
    rows: list[list[str]] = []
    if c.subject is None:  # no subject, no pairs
        return header, rows
    for other, ci in c.pairs.items():
        rows.append(
            [
                other,
                fmt(c.metrics[c.subject]["sharpe"]),
                fmt(c.metrics[other]["sharpe"]),
                fmt(ci.diff, "signed"),
                f"[{fmt(ci.low)}, {fmt(ci.high)}]",
                significance(ci),
            ]
        )
    return header, rows

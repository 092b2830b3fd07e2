"""``equity.png``: the growth of 1, the ablations against the meta policy, the adaptations.

Three panels. On top, the curves a trader compares first stand out (the meta
policy, buy-and-hold, the best static comparator and, in synthetic studies, the
ceiling); the other static comparators are thin and faint. The meta policy and
its ablations trade the same network and their curves lie on top of each other,
so the middle panel shows each ablation *relative to* ``meta_adaptive``: above 0,
the ablation did better. The strip at the bottom marks the detected regime changes.

Drawn with matplotlib's object API on an Agg canvas rather than pyplot, so
writing the plot neither depends on nor changes the user's backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from metabt.reports.comparison import ABLATIONS
from metabt.reports.runfolder import CEILING, SUBJECT, ordered_strategies

# Fixed colours so figures from different runs compare at a glance.
SUBJECT_COLOUR = "#1f4e9c"
BUY_AND_HOLD_COLOUR = "#222222"
BEST_STATIC_COLOUR = "#d62728"
CEILING_COLOUR = "#2ca02c"
#: The ablations (and the oracle) in the relative panel: distinct hues and dashes.
VARIANT_STYLES: dict[str, dict[str, object]] = {
    "meta_frozen": {"color": "#17becf", "ls": "-"},
    "meta_calendar": {"color": "#ff7f0e", "ls": "--"},
    "meta_random_init": {"color": "#9467bd", "ls": "-."},
    "erm_static": {"color": "#8c564b", "ls": ":"},
    "meta_oracle": {"color": "#2ca02c", "ls": "--"},
}
#: The other static comparators: context, thin and faint.
_CONTEXT_COLOURS = ("#e377c2", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#ff9896", "#8c6d31")
_MAX_LABELLED_CHANGES = 40  # beyond this, asset labels on the change lines overlap


def _top_style(name: str, subject: str, best_static: str | None, k: int) -> dict[str, object]:
    """Line style in the top panel: the headline curves bold, the rest thin context."""
    if name == subject:
        return {"color": SUBJECT_COLOUR, "lw": 2.8, "ls": "-", "zorder": 10, "alpha": 1.0}
    if name == "buy_and_hold":
        return {"color": BUY_AND_HOLD_COLOUR, "lw": 2.0, "ls": "-", "zorder": 8, "alpha": 1.0}
    if name == best_static:
        return {"color": BEST_STATIC_COLOUR, "lw": 2.0, "ls": "-", "zorder": 8, "alpha": 1.0}
    if name == CEILING:
        return {"color": CEILING_COLOUR, "lw": 1.8, "ls": "--", "zorder": 7, "alpha": 0.9}
    colour = _CONTEXT_COLOURS[k % len(_CONTEXT_COLOURS)]
    return {"color": colour, "lw": 1.0, "ls": "-", "zorder": 2, "alpha": 0.55}


def _label(name: str, subject: str, best_static: str | None, final: float) -> str:
    role = {subject: "meta policy", "buy_and_hold": "buy and hold", CEILING: "ceiling"}.get(name)
    if name == best_static:
        role = "best static" if role is None else f"{role}; best static"
    return f"{name}  ({final:.2f}x" + (f", {role})" if role else ")")


def plot_equity(
    returns: pd.DataFrame,
    path: Path,
    *,
    regime_changes: Sequence[tuple[pd.Timestamp, str]] = (),
    adaptations: pd.DataFrame | None = None,
    subject: str = SUBJECT,
    best_static: str | None = None,
    title: str = "",
) -> Path:
    """Write the equity-curve figure to ``path`` (PNG).

    Parameters
    ----------
    returns : pd.DataFrame
        Date x strategy daily simple returns.
    path : Path
        Output PNG.
    regime_changes : sequence of (Timestamp, str)
        True regime changes ``(date, asset)``; drawn as grey vertical lines.
    adaptations : pd.DataFrame, optional
        ``adaptations.csv`` rows (``date, strategy, asset``); the rows of
        ``subject`` are drawn as ticks in a strip below the curves, one row per asset.
    subject : str
        The meta policy: bold on top, the reference of the relative panel, and
        the strategy whose adaptation events are shown.
    best_static : str, optional
        The static comparator the verdict uses; drawn bold next to buy-and-hold.
    title : str
        Figure heading.

    Returns
    -------
    Path
        ``path``.
    """
    names = ordered_strategies(returns.columns)
    equity = (1.0 + returns[names].astype(float)).cumprod()
    # Start every curve at 1 on the day before the first return, so the first
    # day's gain or loss is visible rather than folded into the starting point.
    start = equity.index[0] - pd.Timedelta(days=1)
    equity = pd.concat([pd.DataFrame(1.0, index=[start], columns=names), equity])

    events = pd.DataFrame(columns=["date", "asset"])
    if adaptations is not None and not adaptations.empty:
        rows = adaptations["strategy"] == subject
        if "trigger" in adaptations.columns:
            # Re-adaptations come every few bars; the detected regime changes are the news.
            rows &= adaptations["trigger"] == "alarm"
        events = adaptations.loc[rows, ["date", "asset"]]
    lo, hi = equity.index[0], equity.index[-1]
    changes = [(d, a) for d, a in regime_changes if lo <= d <= hi]
    assets = sorted(events["asset"].unique()) if not events.empty else []
    strip = subject in names
    variants = [n for n in (*ABLATIONS, "meta_oracle") if n in names] if strip else []

    heights = (
        [5.0]
        + ([2.2] if variants else [])
        + ([0.6 + 0.25 * min(len(assets) or 1, 8)] if strip else [])
    )
    fig = Figure(figsize=(12, 1.2 + sum(heights)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False
    )[:, 0]
    ax = axes[0]
    rel = axes[1] if variants else None
    ev = axes[-1] if strip else None

    # Context first, headline curves last so they are drawn (and listed) on top.
    headline = [n for n in (subject, "buy_and_hold", best_static, CEILING) if n in names]
    context = [n for n in names if n not in headline and n not in variants]
    for k, name in enumerate(context + list(dict.fromkeys(reversed(headline)))):
        st = _top_style(name, subject, best_static, k)
        ax.plot(
            equity.index,
            equity[name],
            label=_label(name, subject, best_static, equity[name].iloc[-1]),
            color=st["color"],
            lw=st["lw"],
            ls=st["ls"],
            alpha=st["alpha"],
            zorder=st["zorder"],
        )
    ax.axhline(1.0, color="black", lw=0.6, alpha=0.5)
    values = equity[headline + context].to_numpy()
    if (values > 0).all():
        ax.set_yscale("log")
        # Plain numbers (0.8, 1, 1.5) read better than 10^0 on a narrow log range.
        dense = values.max() / values.min() <= 20
        subs = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0) if dense else (1.0, 2.0, 5.0)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("growth of 1 (log scale)")
    else:  # a leveraged strategy lost everything: log scale cannot show it
        ax.set_ylabel("growth of 1")
    ax.grid(True, which="major", alpha=0.3)
    # Long study titles wrap instead of running off the canvas.
    ax.set_title(
        textwrap.fill(title or "Equity curves", width=110),
        loc="left",
        fontsize=12,
        fontweight="bold",
    )

    for k, (when, asset) in enumerate(changes):
        for axis in axes:
            axis.axvline(
                when,
                color="#7f7f7f",
                lw=1.0,
                ls="--",
                alpha=0.8,
                zorder=1,
                label="true regime change" if (axis is ax and k == 0) else None,
            )
        if asset and len(changes) <= _MAX_LABELLED_CHANGES:
            ax.annotate(
                asset,
                (when, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                rotation=90,
                va="top",
                fontsize=7,
                color="#555555",
            )
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: _legend_rank(labels[i], headline))
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        frameon=False,
        title="strategy (final value)",
        title_fontsize=9,
    )
    if rel is not None:
        _relative_panel(rel, equity, subject, variants)
    if ev is not None:
        _event_strip(ev, events, assets, subject)
    fig.savefig(path, dpi=110)
    return Path(path)


def _legend_rank(label: str, headline: list[str]) -> int:
    """Headline curves first, in their fixed order; then the rest as drawn."""
    name = label.split("  (")[0]
    return headline.index(name) if name in headline else len(headline)


def relative_growth(equity: pd.DataFrame, subject: str, others: list[str]) -> pd.DataFrame:
    """Each of ``others``' growth of 1 over the subject's, minus 1, in percent.

    Above 0 the other strategy has grown more since the start; two curves that lie
    on top of each other in the growth panel separate here.
    """
    return 100.0 * (equity[others].div(equity[subject], axis=0) - 1.0)


def _relative_panel(ax: Axes, equity: pd.DataFrame, subject: str, variants: list[str]) -> None:
    """Each ablation's growth relative to the subject's, in percent: above 0 it did better."""
    relative = relative_growth(equity, subject, variants)
    for name in variants:
        st = VARIANT_STYLES.get(name, {"color": "#7f7f7f", "ls": "-"})
        ax.plot(
            equity.index,
            relative[name],
            color=st["color"],
            ls=st["ls"],
            lw=1.6,
            label=f"{name}  ({relative[name].iloc[-1]:+.1f}%)",
        )
    ax.axhline(0.0, color=SUBJECT_COLOUR, lw=1.6)
    ax.grid(True, alpha=0.3)
    ax.set_ylabel(f"vs {subject} (%)")
    ax.set_title(
        f"Ablations relative to {subject}: their growth of 1 / {subject}'s - 1, in % "
        "(above 0: the ablation did better)",
        loc="left",
        fontsize=9,
    )
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        frameon=False,
        title="ablation (at the end)",
        title_fontsize=9,
    )


def _event_strip(ev: Axes, events: pd.DataFrame, assets: list[str], subject: str) -> None:
    """One row per asset, a tick at each regime change the subject's detector reported."""
    if assets:
        ypos = {a: i for i, a in enumerate(assets)}
        ev.scatter(
            events["date"],
            events["asset"].map(ypos),
            marker="|",
            s=120,
            color=SUBJECT_COLOUR,
            linewidths=1.4,
            zorder=5,
        )
        ev.set_yticks(range(len(assets)), labels=assets, fontsize=8)
        ev.set_ylim(-0.7, len(assets) - 0.3)
    else:
        ev.set_yticks([])
        ev.text(
            0.5,
            0.5,
            f"no regime change detected for {subject}",
            ha="center",
            va="center",
            transform=ev.transAxes,
            fontsize=9,
            color="#555555",
        )
    ev.set_title(f"{subject}: detected regime changes ({len(events)})", loc="left", fontsize=9)
    ev.grid(True, axis="x", alpha=0.3)

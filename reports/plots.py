"""``equity.png``: every strategy's growth of 1, with regime changes and adaptations marked.

Drawn with matplotlib's object API on an Agg canvas rather than pyplot, so
writing the plot neither depends on nor changes the user's backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from metabt.reports.runfolder import SUBJECT, ordered_strategies

# Fixed colour and line per strategy so figures from different runs compare at a
# glance: the subject bold, ablations solid/dashed, static comparators dotted.
STYLES: dict[str, dict[str, object]] = {
    "meta_adaptive": {"color": "#1f4e9c", "lw": 2.6, "ls": "-", "zorder": 10},
    "meta_frozen": {"color": "#6baed6", "lw": 1.5, "ls": "--"},
    "meta_calendar": {"color": "#2ca02c", "lw": 1.5, "ls": "--"},
    "meta_random_init": {"color": "#9467bd", "lw": 1.5, "ls": "--"},
    "erm_static": {"color": "#8c564b", "lw": 1.5, "ls": "-."},
    "buy_and_hold": {"color": "#444444", "lw": 1.6, "ls": "-"},
    "sma_cross": {"color": "#d62728", "lw": 1.4, "ls": ":"},
    "momentum": {"color": "#ff7f0e", "lw": 1.4, "ls": ":"},
    "rsi_reversion": {"color": "#e377c2", "lw": 1.4, "ls": ":"},
}
_OTHER_COLOURS = ("#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939")
_MAX_LABELLED_CHANGES = 40  # beyond this, asset labels on the change lines overlap


def _style(name: str, i: int) -> dict[str, object]:
    return STYLES.get(
        name, {"color": _OTHER_COLOURS[i % len(_OTHER_COLOURS)], "lw": 1.3, "ls": "-"}
    )


def plot_equity(
    returns: pd.DataFrame,
    path: Path,
    *,
    regime_changes: Sequence[tuple[pd.Timestamp, str]] = (),
    adaptations: pd.DataFrame | None = None,
    subject: str = SUBJECT,
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
        Strategy whose adaptation events are shown and whose curve is bold.
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

    fig = Figure(figsize=(12, 7.5 if strip else 6.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    if strip:
        rows = max(1, len(assets))
        ax, ev = fig.subplots(
            2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 0.6 + 0.25 * min(rows, 8)]}
        )
    else:
        ax, ev = fig.subplots(1, 1), None

    for i, name in enumerate(names):
        st = _style(name, i)
        final = equity[name].iloc[-1]
        ax.plot(
            equity.index,
            equity[name],
            label=f"{name}  ({final:.2f}x)",
            color=st["color"],
            lw=st["lw"],
            ls=st["ls"],
            zorder=st.get("zorder", 3),
        )
    ax.axhline(1.0, color="black", lw=0.6, alpha=0.5)
    values = equity.to_numpy()
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
        for axis in (ax, ev):
            if axis is not None:
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
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        frameon=False,
        title="strategy (final value)",
        title_fontsize=9,
    )

    if ev is not None:
        if assets:
            ypos = {a: i for i, a in enumerate(assets)}
            ev.scatter(
                events["date"],
                events["asset"].map(ypos),
                marker="|",
                s=120,
                color=STYLES[SUBJECT]["color"],
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
    fig.savefig(path, dpi=110)
    return Path(path)

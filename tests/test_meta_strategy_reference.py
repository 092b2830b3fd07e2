"""The meta-adaptive strategy decides exactly what it decided before it was made faster.

``tests/data/meta_basket_reference.csv.gz`` holds every target weight and every adaptation
event of :func:`basket_runs` as computed by the strategy before its per-bar work was
vectorised (features read from feed lines, one forward pass per asset, the detector's
Student-t constants recomputed every bar). Regenerate it only for a deliberate change of
behaviour: ``python tests/test_meta_strategy_reference.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metabt.feeds.btfeed import make_feature_feed
from metabt.feeds.features import FeatureSpec
from metabt.feeds.loaders import load_sample
from metabt.metamodels.objective import ObjectiveSpec
from metabt.metamodels.policy import PolicySpec, init_params, to_numpy
from metabt.strategies.engine import CostSpec, run_backtest
from metabt.strategies.meta_adaptive import AdaptivePolicy, MetaAdaptiveStrategy

REFERENCE = Path(__file__).parent / "data" / "meta_basket_reference.csv.gz"
SPEC = FeatureSpec()
TRADE_START = pd.Timestamp("2010-06-01")


def _policy(mode: str, seed: int, steps: int = 5) -> AdaptivePolicy:
    spec = PolicySpec(n_features=len(SPEC.names), mode=mode)
    return AdaptivePolicy(
        spec, ObjectiveSpec(), to_numpy(init_params(spec, seed)), 0.3, steps, SPEC.names
    )


def basket_runs() -> pd.DataFrame:
    """Weights and adaptation events of three basket runs, one row per decision or event."""
    sample = load_sample()
    frames = {s: f.loc["2009-01-01":"2011-06-30"] for s, f in sample.items()}
    runs = {
        # The demo's setting: an ensemble of two long-only policies, AR(1) BOCPD windows.
        "ensemble_bocpd_ar": {"policy": (_policy("long_only", 0), _policy("long_only", 1))},
        # The loss detector reads the strategy's own positions on every labelled bar.
        "long_short_loss": {"policy": _policy("long_short", 2), "detector": "loss"},
        "calendar": {"policy": _policy("long_short", 3), "trigger": "calendar"},
    }
    rows = []
    for name, params in runs.items():
        res = run_backtest(
            frames,
            MetaAdaptiveStrategy,
            params,
            CostSpec(),
            trade_start=TRADE_START,
            feed_factory=lambda s, f: make_feature_feed(s, f, SPEC),
        )
        w = res.weights.assign(run=name, kind="weight", value=res.weights["weight"])
        rows.append(w[["run", "kind", "date", "asset", "value"]])
        for e in res.events:
            for key in ("window", "loss_before", "loss_after"):
                rows.append(
                    pd.DataFrame(
                        [
                            {
                                "run": name,
                                "kind": f"{e['trigger']}.{key}",
                                "date": pd.Timestamp(e["date"]),
                                "asset": e["asset"],
                                "value": float(e[key]),
                            }
                        ]
                    )
                )
    out = pd.concat(rows, ignore_index=True)
    out["date"] = pd.to_datetime(out["date"])
    return out


def test_positions_and_adaptations_equal_the_reference_bar_for_bar():
    want = pd.read_csv(REFERENCE, parse_dates=["date"])
    got = basket_runs()
    assert len(want) > 6_000  # three runs x 8 assets x ~270 bars, plus events
    key = ["run", "kind", "date", "asset"]
    assert not want.duplicated(key).any() and not got.duplicated(key).any()
    both = want.merge(got, on=key, how="outer", suffixes=("_want", "_got"), indicator=True)
    assert not (both["_merge"] == "right_only").any(), "a decision or event the reference lacks"
    kept = both[both["_merge"] == "both"]
    np.testing.assert_allclose(
        kept["value_got"].to_numpy(), kept["value_want"].to_numpy(), rtol=1e-9, atol=1e-12
    )
    # The only rows gone are warm-up adaptations that a later one replaced before trading
    # began (never computed now); every weight and alarm is there, and with the loss
    # detector, which reads the adapted weights on every bar, every adaptation too.
    gone = both[both["_merge"] == "left_only"]
    assert len(gone) > 0 and (gone["date"] < TRADE_START).all()
    assert not gone["kind"].str.startswith(("weight", "alarm.")).any()
    assert not (gone["run"] == "long_short_loss").any()


if __name__ == "__main__":
    basket_runs().to_csv(REFERENCE, index=False, float_format="%.12g")

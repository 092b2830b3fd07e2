"""The settings of :class:`strategies.meta_adaptive.MetaAdaptiveStrategy` and their defaults.

They are documented in the strategy's ``Params:`` block and kept here, apart
from the strategy, because study configs (:mod:`backtests.config`) take their
``[strategy]`` and ``[detector]`` defaults from them: reading them must not load
the policy code (torch), so the command line answers ``--help`` and names a bad
key at once.
"""

from __future__ import annotations

TRIGGERS = ("regime", "calendar", "never", "oracle")
# What trades between a regime change and the new regime's first adaptation.
FALLBACKS = ("initial", "flat", "previous")
# The policy's position moves a little on every bar; re-ordering each wiggle
# pays costs for nothing (and is most of a backtest's run time). A change of
# 0.02 in portfolio weight is 16% of a full position in an 8-asset basket.
DEFAULT_REBALANCE_THRESHOLD = 0.02

#: Backtrader ``params`` of MetaAdaptiveStrategy (its base class adds its own).
META_ADAPTIVE_PARAMS = (
    ("policy", None),
    ("trigger", "regime"),
    ("detector", "bocpd_ar"),
    ("detector_settings", None),
    ("min_window", 20),
    ("fallback", "initial"),
    ("max_window", 120),
    ("readapt_every", 5),
    ("calendar_window", 60),
    ("long_only", False),
    ("known_changes", None),
    ("vol_target", 0.01),
    ("rebalance_threshold", DEFAULT_REBALANCE_THRESHOLD),
    ("allow_in_sample", False),
)

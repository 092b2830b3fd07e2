"""Paper trading: the backtested MetaAdaptiveStrategy, bar by bar, on a crash-safe SQLite ledger.

``metabt paper run CONFIG --state DIR`` feeds each newly closed daily bar to
the same strategy code the backtest runs, fills its orders at the next bar's
open with the configured costs, and commits everything one bar changes in one
transaction. ``metabt paper status`` and ``metabt paper report`` read the state.

Modules: :mod:`~backtests.paper.ledger` (SQLite state, lock),
:mod:`~backtests.paper.simulate` (the strategy replay), :mod:`~backtests.paper.sources`
(replay / yfinance bars), :mod:`~backtests.paper.session` (create / resume / verify),
:mod:`~backtests.paper.loop` (per-bar transaction), :mod:`~backtests.paper.status`
(status table, run folder, tear sheet), :mod:`~backtests.paper.cli` (commands).
"""

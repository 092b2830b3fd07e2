"""``python -m backtests`` runs the metabt command line."""

from backtests.cli import main

main()

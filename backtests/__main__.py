"""``python -m backtests`` runs the metabt command line."""

from backtests.cli import main

# Guarded: `metabt sweep` starts worker processes that re-import the main module.
if __name__ == "__main__":
    main()

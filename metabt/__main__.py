"""``python -m metabt`` runs the metabt command line."""

from metabt.backtests.cli import main

# Guarded: `metabt sweep` starts worker processes that re-import the main module.
if __name__ == "__main__":
    main()

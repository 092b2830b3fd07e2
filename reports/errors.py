"""The one exception type for a run folder the reports cannot read."""

from __future__ import annotations


class ReportError(ValueError):
    """One clear line: the file (and row, column or key), what is wrong, what to do.

    Reports read only files, so this error does not depend on ``feeds``; the CLI
    turns it into one line on stderr and a non-zero exit, like ``DataError``.
    """

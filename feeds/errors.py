"""The one exception type for bad input data."""

from __future__ import annotations


class DataError(ValueError):
    """One clear line: file/row/key, what is wrong, what to do."""

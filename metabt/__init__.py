"""metabt: regime-adaptive meta-learned trading policies for Backtrader.

The repository keeps its five code folders at the top (``feeds``, ``metamodels``, ``strategies``,
``backtests``, ``reports``); ``pip install`` places them under this package as ``metabt.feeds`` and
so on (``package-dir`` in ``pyproject.toml``), so a user's own ``strategies.py`` never collides with
ours.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from pathlib import Path as _Path

# Run from a source checkout without installing (tests, ``python -m metabt`` in the repository), the
# sub-packages sit next to this folder rather than inside it: look for them there too. An installed
# copy has them inside, and this does nothing.
_here = _Path(__file__).resolve().parent
if not (_here / "feeds").is_dir() and (_here.parent / "pyproject.toml").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - __path__ is defined for packages

try:
    __version__ = _metadata.version("metabt")
except _metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+source"

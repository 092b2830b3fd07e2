"""metabt: regime-adaptive meta-learned trading policies for Backtrader.

The repository keeps its five code folders at the top (``feeds``, ``metamodels``, ``strategies``,
``backtests``, ``reports``); ``pip install`` places them under this package as ``metabt.feeds`` and
so on (``package-dir`` in ``pyproject.toml``), so a user's own ``strategies.py`` never collides with
ours.

The public API is a short list of names, loaded on first use (PEP 562) so that
``import metabt`` and ``metabt --help`` stay quick and import neither torch nor
backtrader::

    import metabt
    policy = metabt.load_policy("runs/demo/model")      # a checkpoint folder
    feed = metabt.feature_feed("data/SPY.csv", policy)  # bars + the policy's feature lines
    cerebro.addstrategy(metabt.MetaAdaptiveStrategy, policy=policy)
    cerebro.addanalyzer(metabt.AdaptationAnalyzer)
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

# name -> module that defines it; the code lives in the folder whose job it is.
_PUBLIC = {
    "load_policy": "metabt.strategies.adaptive_policy",
    "AdaptivePolicy": "metabt.strategies.adaptive_policy",
    "InSampleError": "metabt.strategies.adaptive_policy",
    "MetaAdaptiveStrategy": "metabt.strategies.meta_adaptive",
    "AdaptationAnalyzer": "metabt.strategies.analyzers",
    "feature_feed": "metabt.feeds.btfeed",
    "load_csv": "metabt.feeds.loaders",
    "DataError": "metabt.feeds.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'metabt' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})

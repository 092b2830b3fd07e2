"""Work that does not depend on the meta-training seed, done once per sweep.

In a sweep over seeds every run tunes the same static comparators on the same
training bars and trades them over the same test bars: a third of a basket
run's CPU, repeated identically in every run. ``metabt sweep`` hands each run a
:class:`joblib.Memory` in ``SWEEP_DIR/cache/<metabt version>/``; the runs then
compute each of these results once and read it back after.

What is cached is a pure function of its arguments: the tuning of a comparator
(bars, grid, costs, period) and a static strategy's test-period backtest (bars,
params, costs, period). joblib keys each entry by a hash of every argument and
of the function's code, so a changed data file, grid or cost misses the cache;
the cache folder is named by the metabt version and a digest of its source, so
changed code anywhere in the package starts a new cache. Warnings raised while
computing are stored with the result and raised again on every read, so a run
folder's ``warnings.log`` is the same whether the result came from the cache.
The cache holds pickles written by the sweep itself: share a sweep folder only
with people you trust, as you would its run folders.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from joblib import Memory

from metabt.strategies.engine import CostSpec
from metabt.strategies.tuning import TuningResult, tune_static

Frames = dict[str, pd.DataFrame]

T = TypeVar("T")


def code_digest() -> str:
    """12 hex digits of SHA-256 over every ``.py`` file of the installed package."""
    import metabt

    digest = hashlib.sha256()
    for root in sorted({Path(p).resolve() for p in metabt.__path__}):
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.relative_to(root).parts:
                continue
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def sweep_cache(folder: Path) -> Memory:
    """The cache of a sweep folder: ``cache/<version>-<code digest>/``."""
    from metabt.backtests.sweep import metabt_version

    where = Path(folder) / "cache" / f"{metabt_version()}-{code_digest()}"
    return Memory(location=str(where), verbose=0)


def frames_digest(frames: dict[str, pd.DataFrame]) -> str:
    """SHA-256 of the bars themselves: names, dates, columns and values.

    joblib would hash the pickled frames, whose bytes change when pandas fills an
    index cache during a backtest: the same bars would miss the cache.
    """
    digest = hashlib.sha256()
    for name in sorted(frames):
        frame = frames[name]
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(frame.index.asi8).tobytes())
        digest.update("\x1f".join(map(str, frame.columns)).encode())
        digest.update(np.ascontiguousarray(frame.to_numpy(dtype=float)).tobytes())
    return digest.hexdigest()


def _with_warnings(func: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = func(*args, **kwargs)
    return result, [str(w.message) for w in caught]


def _tuned(bars: str, frames: Frames, *args: Any) -> tuple[TuningResult, list[str]]:
    # Keyed by ``bars`` (frames_digest), not the frames. n_jobs is left at 1: it does
    # not change the result, and the key must not depend on it.
    return _with_warnings(tune_static, frames, *args, n_jobs=1)


def tune_once(
    cache: Memory | None,
    frames: Frames,
    name: str,
    grid: dict[str, list],
    costs: CostSpec,
    start: pd.Timestamp,
    end: pd.Timestamp,
    n_jobs: int = 2,
) -> TuningResult:
    """:func:`strategies.tuning.tune_static`, through ``cache`` if given."""
    args = (name, grid, costs, start, end)
    if cache is None:
        return tune_static(frames, *args, n_jobs=n_jobs)
    tuned = cache.cache(_tuned, ignore=["frames"])
    result, notes = tuned(frames_digest(frames), frames, *args)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return result


def _ran(bars: str, run: Callable[..., T], frames: Frames, *args: Any) -> T:
    return run(frames, *args)  # keyed by ``bars`` (frames_digest), not the frames


def run_once(cache: Memory | None, run: Callable[..., T], frames: Frames, *args: Any) -> T:
    """``run(frames, *args)``, through ``cache`` if given (``run`` returns its own warnings)."""
    if cache is None:
        return run(frames, *args)
    return cache.cache(_ran, ignore=["frames"])(frames_digest(frames), run, frames, *args)

"""Work the runs of a sweep have in common, done once per sweep.

In a sweep over seeds every run tunes the same static comparators on the same
training bars and trades them over the same test bars: a third of a basket
run's CPU, repeated identically in every run. ``metabt sweep`` hands each run a
:class:`joblib.Memory` in ``SWEEP_DIR/cache/<metabt version>/``; the runs then
compute each of these results once and read it back after.

What is cached is a pure function of its arguments: the tuning of a comparator
(bars, grid, costs, period), a static strategy's test-period backtest (bars,
params, costs, period), and, per meta-training seed, the trained models and the
test runs of that seed alone. A run of seed ``s`` trains the ensemble
``s .. s + n - 1``, so neighbouring runs share all but one of their seeds; each
is trained and traded once per sweep. Two workers that need the same entry at
the same time do not both compute it: :func:`in_turn` puts an entry another
worker holds aside and takes the next free one. joblib keys each entry by a
hash of every argument and of the function's code, so a changed data file,
grid or cost misses the cache; the cache folder is named by the metabt version
and a digest of its source, so changed code anywhere in the package starts a
new cache. Warnings raised while computing are stored with the result and
raised again on every read, so a run folder's ``warnings.log`` is the same
whether the result came from the cache. The cache holds pickles written by the
sweep itself: share a sweep folder only with people you trust, as you would
its run folders.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import joblib
import numpy as np
import pandas as pd
from filelock import FileLock, Timeout
from joblib import Memory

from metabt.strategies.engine import CostSpec
from metabt.strategies.tuning import TuningResult, tune_static

if TYPE_CHECKING:
    from metabt.backtests.config import Specs, StudyConfig

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


def in_turn(cache: Memory, calls: list[tuple[str | None, Callable[[], T]]]) -> list[T]:
    """Each ``(key, call)`` once, the calls whose entry is free first; results in order.

    ``key`` names the cache entry a call reads or writes (None: nothing shared). While
    another worker of the sweep holds an entry's lock it is computing that entry, so
    the call is put aside and done after the free ones, when it is a cache read.
    """
    locks = Path(cache.location) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    results: dict[int, T] = {}
    pending = list(range(len(calls)))
    while pending:
        chosen, lock = pending[0], None
        for i in pending:
            key = calls[i][0]
            if key is None:
                chosen, lock = i, None
                break
            candidate = FileLock(str(locks / f"{key}.lock"))
            try:
                candidate.acquire(timeout=0)
            except Timeout:
                continue
            chosen, lock = i, candidate
            break
        else:  # every entry left is being computed elsewhere: wait for the first
            lock = FileLock(str(locks / f"{calls[chosen][0]}.lock"))
            lock.acquire()
        try:
            results[chosen] = calls[chosen][1]()
        finally:
            if lock is not None:
                lock.release()
        pending.remove(chosen)
    return [results[i] for i in range(len(calls))]


def _seedless(config: StudyConfig, specs: Specs) -> tuple[StudyConfig, Specs]:
    # A model of seed k is the same whichever run's ensemble it belongs to: the run's
    # own seed is set to 0, so it cannot reach the training (tests/test_shared_work.py
    # checks the models equal those trained without the cache).
    return config.model_copy(update={"seed": 0}), dc_replace(
        specs, train=dc_replace(specs.train, seed=0)
    )


def _trained_seed(
    bars: str, train: Callable[..., T], frames: Frames, config: dict, *args: Any
) -> tuple[T, list[str]]:
    # Keyed by ``bars``, not the frames; the config travels as its JSON form, which
    # hashes the same in every process (its section classes are built at import).
    from metabt.backtests.config import parse_config

    return _with_warnings(train, frames, parse_config(config, "sweep cache"), *args)


def train_seeds_once(
    cache: Memory,
    train: Callable[..., T],
    frames: Frames,
    config: StudyConfig,
    specs: Specs,
    split: pd.Timestamp,
    changes: dict,
    seeds: list[int],
) -> list[T]:
    """``train(frames, config, specs, split, changes, seed, None)`` per seed, once per sweep."""
    seedless, specs = _seedless(config, specs)
    as_json = seedless.model_dump(mode="json")
    bars = frames_digest(frames)
    cached = cache.cache(_trained_seed, ignore=["frames"])

    def call(seed: int) -> Callable[[], tuple[T, list[str]]]:
        return lambda: cached(bars, train, frames, as_json, specs, split, changes, seed, None)

    args = [(bars, train.__name__, as_json, specs, split, changes, s) for s in seeds]
    done = in_turn(cache, [(joblib.hash(a), call(s)) for a, s in zip(args, seeds)])
    for _, notes in done:
        for note in notes:
            warnings.warn(note, stacklevel=2)
    return [result for result, _ in done]


def _ran_seed(
    bars: str,
    run: Callable[..., T],
    frames: Frames,
    name: str,
    params: dict,
    *args: Any,
    tables: Any,
) -> T:
    return run(frames, name, params, *args, tables)  # keyed by ``bars``: tables follow from them


def seed_run_once(
    cache: Memory, run: Callable[..., tuple], frames: Frames, name: str, params: dict, *args: Any
) -> tuple[str | None, Callable[[], tuple]]:
    """``(key, call)`` for :func:`in_turn`: the test run of one seed's model, once per sweep.

    ``name`` is ``"<variant>#<i>"``, ``i`` the model's place in this run's ensemble;
    the entry is keyed by the variant and the model, so the run of another seed that
    trades the same model reads it. The result carries ``name`` back.
    """
    *rest, tables = args
    variant = name.split("#")[0] + "#"
    bars = frames_digest(frames)
    cached = cache.cache(_ran_seed, ignore=["frames", "tables"])

    def call() -> tuple:
        _, result, notes = cached(bars, run, frames, variant, params, *rest, tables=tables)
        return name, result, notes

    return joblib.hash((bars, run.__name__, variant, params, *rest)), call

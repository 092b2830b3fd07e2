"""What a sweep runs: the product of seeds, grid points, walk-forward periods and universes.

Each point of the product is one ordinary study run, named by a hash of
everything that decides its result: the resolved config, the overrides, the
contents of the data files it reads and the metabt version. A run whose folder
``DIR/runs/<hash>/`` exists is finished and never runs again; change a data
file and only the runs that read it get a new hash. Execution lives in
:mod:`backtests.sweep_exec`; this module only plans and reads back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from metabt.backtests.config import StudyConfig
from metabt.backtests.overrides import toml_value, with_keys
from metabt.feeds.errors import DataError
from metabt.feeds.loaders import list_symbols, parse_symbols, sample_data_dir
from metabt.feeds.synthetic import REGIMES_FILE
from metabt.reports.metrics import METRIC_KEYS
from metabt.reports.runfolder import ordered_strategies

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: What each run folder gets beside the study's own files: which point of the sweep it is.
RECORD_FILE = "sweep_run.json"
#: Columns of sweep.csv before the grid keys and the metrics.
ID_COLUMNS = ("run", "universe", "seed")


class SweepError(ValueError):
    """A sweep option is malformed or the cluster cannot be reached (one line)."""


@dataclass(frozen=True)
class SweepRun:
    """One study of the sweep: a config, where it sits in the product, and its hash."""

    hash: str
    universe: str
    seed: int
    point: dict[str, Any]
    config: StudyConfig
    data_files: dict[str, str]

    def record(self) -> dict[str, Any]:
        """What ``sweep_run.json`` holds: enough to tell which run a folder is."""
        return {
            "hash": self.hash,
            "universe": self.universe,
            "seed": self.seed,
            "point": self.point,
            "data_files": self.data_files,
        }


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"3"`` or ``"0-4,7,9"`` -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise SweepError(f"--seeds {text!r}: use a range and/or a list, e.g. 0-9 or 0-4,7")
        low = int(match.group(1))
        seeds.update(range(low, int(match.group(2) or low) + 1))
    return sorted(seeds)


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so ``[16],[32,16]`` is two values."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["meta.inner_lr=0.01,0.1", "policy.hidden=[16],[32]"]`` -> key -> values."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise SweepError(f"--grid {item!r}: use section.key=v1,v2, e.g. meta.inner_lr=0.01,0.1")
        if key in grid:
            raise SweepError(f"--grid {key}: given twice; put all its values in one --grid")
        grid[key] = [toml_value(v, f"--grid {key}") for v in _split_values(values)]
    return grid


def parse_universes(items: list[str], path: Path | None) -> dict[str, list[str] | str]:
    """Named symbol lists from ``--universe A,B`` (repeatable) and a ``--universes`` TOML file."""
    universes: dict[str, list[str] | str] = {}
    for item in items:
        symbols = parse_symbols(item)
        universes["+".join(symbols) if symbols else "all"] = symbols or "all"
    if path is not None:
        if not path.is_file():
            raise SweepError(f'{path}: no such universes file; write NAME = ["SYM", ...] lines')
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SweepError(f"{path}: not valid TOML ({exc})") from None
        for name, symbols in raw.items():
            if not (
                isinstance(symbols, list) and symbols and all(isinstance(s, str) for s in symbols)
            ):
                raise SweepError(
                    f"{path}: {name} must be a non-empty list of symbols, "
                    f'e.g. {name} = ["SPY", "TLT"]'
                )
            universes[name] = parse_symbols(",".join(symbols)) or "all"
    return universes


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_files(config: StudyConfig) -> list[Path]:
    """The files a run reads its bars from (none for synthetic or downloaded data)."""
    data = config.data
    if data.source not in ("csv", "sample"):
        return []
    folder = Path(str(data.path)) if data.source == "csv" else sample_data_dir()
    symbols = list(data.symbols) if data.symbols != "all" else list_symbols(folder)
    files = [folder / f"{s}.csv" for s in symbols]
    for path in files:
        if not path.is_file():
            raise DataError(
                f"{path}: no such file; symbols in {folder}: "
                f"{', '.join(list_symbols(folder)[:12]) or 'none'}"
            )
    regimes = folder / REGIMES_FILE
    return files + ([regimes] if regimes.is_file() else [])


def metabt_version() -> str:
    try:
        return metadata.version("metabt")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_hash(config: StudyConfig, overrides: dict[str, Any], files: dict[str, str]) -> str:
    """12 hex digits of SHA-256 over config, overrides, data file contents and metabt version."""
    resolved = config.model_dump(mode="json")
    if resolved["data"]["source"] == "csv":
        # The files' contents are hashed; moving the data folder must not re-run the sweep.
        resolved["data"]["path"] = None
    payload = {
        "config": resolved,
        "overrides": overrides,
        "data": files,
        "metabt": metabt_version(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def expand(
    config: StudyConfig,
    seeds: list[int],
    grid: dict[str, list[Any]],
    walk_forward: list[str | None],
    universes: dict[str, list[str] | str],
) -> list[SweepRun]:
    """Every run of the product universes x walk-forward x grid points x seeds, in that order."""
    axes = dict(grid)
    if walk_forward != [None]:
        axes["walk_forward.refit_every"] = walk_forward
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    named = universes or {"config": config.data.symbols}
    digests: dict[Path, str] = {}
    runs = []
    for (name, symbols), point, seed in itertools.product(named.items(), points, seeds):
        overrides = {**point, "seed": seed}
        if universes:
            overrides["data.symbols"] = symbols
        label = ", ".join(f"{k}={v}" for k, v in overrides.items())
        run_config = with_keys(config, overrides, f"sweep point {label}")
        files = {}
        for path in data_files(run_config):
            if path not in digests:
                digests[path] = _sha256(path)
            files[path.name] = digests[path]
        runs.append(
            SweepRun(run_hash(run_config, overrides, files), name, seed, point, run_config, files)
        )
    if len({r.hash for r in runs}) < len(runs):
        raise SweepError(
            "two points of the sweep are the same run; a --grid or --universe value is repeated"
        )
    return runs


def run_dir(out: Path, run: SweepRun) -> Path:
    return out / "runs" / run.hash


def is_finished(out: Path, run: SweepRun) -> bool:
    """A run folder appears only when its study finished (it is renamed into place)."""
    return (run_dir(out, run) / "metrics.json").is_file()


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def sweep_table(out: Path, runs: list[SweepRun], failures: dict[str, str]) -> pd.DataFrame:
    """sweep.csv: one row per run and strategy, or one ``failed`` row with the error.

    Built from the run folders in the order of the sweep (never the order runs
    finished in), so a sweep gives the same file whatever ran it.
    """
    keys = list(dict.fromkeys(k for r in runs for k in r.point))
    rows = []
    for run in runs:
        ident = {
            "run": run.hash,
            "universe": run.universe,
            "seed": run.seed,
            **{k: _cell(run.point.get(k)) for k in keys},
        }
        if not is_finished(out, run):
            error = failures.get(run.hash, "did not finish (interrupted); run the sweep again")
            rows.append({**ident, "strategy": "", "status": "failed", "error": error})
            continue
        metrics = json.loads((run_dir(out, run) / "metrics.json").read_text())
        for name in ordered_strategies(list(metrics)):
            rows.append(
                {
                    **ident,
                    "strategy": name,
                    "status": "ok",
                    "error": "",
                    **{k: metrics[name].get(k) for k in METRIC_KEYS},
                }
            )
    columns = [*ID_COLUMNS, *keys, "strategy", "status", "error", *METRIC_KEYS]
    return pd.DataFrame(rows, columns=columns)

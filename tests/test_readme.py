"""The README is tested like code: examples run, commands exist, defaults are the code's.

- every ```python block runs, in a scratch folder (a block that cannot run offline and quickly is
  marked ``<!-- not run: reason -->`` on the line before it);
- every ``metabt ...`` command line names an existing (sub)command, and each ``--option`` it uses
  is one that command takes; an option documented with "(default N)" has that default;
- the tables that state defaults agree with the code (the Params table: test_library_api.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import invoke_cli
from typer.main import get_command

from metabt.backtests.cli import app
from metabt.backtests.config import StudyConfig
from metabt.feeds.synthetic import DEFAULT_REGIMES
from metabt.strategies.static import DEFAULT_GRIDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
TINY = Path(__file__).parent / "data" / "tiny_basket.toml"
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")


def _line_of(offset: int) -> int:
    return TEXT.count("\n", 0, offset) + 1


def _fences(language: str) -> list[tuple[int, str, str]]:
    """(line, code, text just before the fence) of every ```language block."""
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", TEXT, re.S | re.M):
        before = TEXT[: match.start()].rstrip().rsplit("\n", 1)[-1]
        found.append((_line_of(match.start()), match.group(1), before))
    return found


# -- the python blocks run -------------------------------------------------------------------------

PYTHON_BLOCKS = [
    (line, code) for line, code, before in _fences("python") if not NOT_RUN.search(before)
]


def test_the_readme_has_python_examples_and_marks_every_skipped_one_with_a_reason():
    assert PYTHON_BLOCKS, "no ```python block found: the README test would test nothing"
    for line, _, before in _fences("python"):
        if "not run" in before:
            assert NOT_RUN.search(before), f"README.md:{line}: write <!-- not run: the reason -->"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """An empty working folder; the examples write their files (data/, runs/) there."""
    return tmp_path_factory.mktemp("readme")


def _demo_checkpoint(folder: Path) -> None:
    """What ``metabt demo`` leaves in runs/demo/model, trained small (seconds, not minutes)."""
    target = folder / "runs" / "demo" / "model"
    if not target.exists():
        result = invoke_cli("train", TINY, "--out", target, "--set", "ensemble.seeds=1")
        assert result.code == 0, result.err


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"line{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs(line, code, scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    if "runs/demo" in code:
        _demo_checkpoint(scratch)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


# -- the command lines exist -----------------------------------------------------------------------

ROOT = get_command(app)


def _command_lines() -> list[tuple[int, str]]:
    """``metabt ...`` as written in inline code and in bash/text blocks (continuations joined)."""
    lines = [
        (_line_of(m.start()), " ".join(m.group(1).split()))
        for m in re.finditer(r"`(?:python -m )?(metabt [^`]+)`", TEXT)
    ]
    for language in ("bash", "text"):
        for start, code, _ in _fences(language):
            joined = code.replace("\\\n", " ")
            for offset, text in enumerate(joined.splitlines()):
                match = re.match(r"\s*(?:\$ )?(?:python -m )?(metabt\s.*)", text)
                if match:
                    command = match.group(1).split(" #")[0]
                    lines.append((start + 1 + offset, " ".join(command.split())))
    return lines


COMMAND_LINES = _command_lines()


# typer ships its own copy of click: a group is what has sub-commands.
def _is_group(command: object) -> bool:
    return hasattr(command, "commands")


def _resolve(words: list[str]) -> tuple[Any, list[str]]:
    command, path = ROOT, []
    for word in words:
        if _is_group(command) and word in command.commands:
            command = command.commands[word]
            path.append(word)
        else:
            break
    return command, path


def _options(command: Any) -> dict[str, Any]:
    return {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_the_readme_shows_command_lines():
    assert len(COMMAND_LINES) > 20, COMMAND_LINES


@pytest.mark.parametrize("line, text", COMMAND_LINES, ids=[f"line{n}" for n, _ in COMMAND_LINES])
def test_command_line_uses_existing_commands_and_options(line, text):
    words = text.split()[1:]
    command, path = _resolve(words)
    if not path and words and words[0].startswith("--"):  # an option of metabt itself
        known = {*_options(ROOT), "--help"}
        assert words[0] in known, f"README.md:{line}: metabt has no {words[0]} (takes {known})"
        return
    assert path, f"README.md:{line}: {text!r} names no metabt command"
    rest = words[len(path) :]
    if _is_group(command) and rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
        raise AssertionError(f"README.md:{line}: 'metabt {' '.join(path)} {rest[0]}' is no command")
    known = {*_options(command), "--help"}
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(rest)):
        assert option in known, (
            f"README.md:{line}: metabt {' '.join(path)} has no {option} (it takes {sorted(known)})"
        )


def _all_commands(group: Any = ROOT) -> list[Any]:
    found: list[Any] = []
    for command in group.commands.values():
        found.append(command)
        if _is_group(command):
            found.extend(_all_commands(command))
    return found


DOCUMENTED_OPTION_DEFAULTS = [
    (_line_of(m.start()), m.group(1), float(m.group(2)))
    for m in re.finditer(r"`(--[a-z][a-z-]*)`[^`(]{0,60}\(default:? (\d+(?:\.\d+)?)\)", TEXT)
]


def test_documented_option_defaults_are_the_commands_defaults():
    assert DOCUMENTED_OPTION_DEFAULTS, "no '`--option` ... (default N)' found"
    for line, option, value in DOCUMENTED_OPTION_DEFAULTS:
        defaults = {
            p.default
            for command in _all_commands()
            for opt, p in _options(command).items()
            if opt == option
        }
        assert value in defaults, f"README.md:{line}: {option} defaults to {defaults}, not {value}"


# -- the documented defaults are the code's ------------------------------------------------------


def _table(*header: str) -> list[list[str]]:
    """Body rows of the Markdown table whose header starts with these cells (backticks dropped)."""
    pattern = r"^\|\s*" + r"\s*\|\s*".join(re.escape(h) for h in header) + r"\s*\|.*\n\|[-| ]+\|\n"
    match = re.search(pattern, TEXT, re.M)
    assert match, f"README.md has no table with header {header}"
    rows = []
    for row in TEXT[match.end() :].splitlines():
        if not row.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))  # a \| inside a cell is text
        rows.append([cell.strip().replace("`", "") for cell in cells])
    return rows


def _toml(text: str) -> object:
    if text == "unset":  # a key whose default is None (TOML has no null)
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def test_config_defaults_table_matches_the_config():
    defaults = StudyConfig.model_validate({"data": {"split": "2010-01-04"}}).model_dump(mode="json")
    rows = _table("key", "default")
    assert len(rows) >= 10
    for key, documented, *_ in rows:
        section, name = key.split(".")
        assert name in defaults[section], f"README config table: no key {key}"
        assert _toml(documented) == defaults[section][name], (
            f"README config table: {key} is documented as {documented}, "
            f"the code's default is {defaults[section][name]!r}"
        )


def test_synthetic_regime_table_matches_the_generator():
    rows = {row[0]: row[1:4] for row in _table("regime", "ar", "daily vol", "drift/day")}
    assert set(rows) == {r.name for r in DEFAULT_REGIMES}
    for regime in DEFAULT_REGIMES:
        ar, vol, drift = rows[regime.name]
        assert float(ar) == pytest.approx(regime.ar), regime.name
        assert float(vol.rstrip("%")) / 100 == pytest.approx(regime.vol), regime.name
        assert float(drift.rstrip("%")) / 100 == pytest.approx(regime.drift), regime.name


def test_static_grid_table_matches_default_grids():
    rows = {row[0]: row[2] for row in _table("name", "rule", "tuned over (`DEFAULT_GRIDS`)")}
    assert set(rows) == set(DEFAULT_GRIDS)
    for name, grid in DEFAULT_GRIDS.items():
        documented = {float(x) for x in re.findall(r"\d+(?:\.\d+)?", rows[name])}
        in_code = {float(v) for values in grid.values() for v in values if not isinstance(v, bool)}
        assert documented == in_code, f"README grid of {name}: {documented} vs {in_code}"

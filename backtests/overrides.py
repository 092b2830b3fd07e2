"""``--set section.key=value``: the one way to change any config key from the command line.

Every command that takes a config accepts it (repeatable), and ``metabt sweep`` builds its grid
points with the same setter. The value is a TOML literal (``0.1``, ``true``, ``[16, 32]``,
``"1y"``); a bare word such as ``long_only`` is read as a string. The result is validated like
the file itself, so an unknown key gets a "did you mean" hint and a bad value names the option
that gave it, before any work starts.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from metabt.backtests.config import ConfigError, StudyConfig, load_config, parse_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "SetOpt",
    "load_with_settings",
    "parse_setting",
    "toml_value",
    "with_keys",
    "with_settings",
]

#: The option itself, shared by every command that takes a config.
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="SECTION.KEY=VALUE",
        help="Override any config key, e.g. --set meta.inner_lr=0.1 (TOML value; repeat).",
    ),
]

_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def toml_value(text: str, option: str) -> Any:
    """A TOML literal (``0.1``, ``true``, ``[16, 32]``, ``"x"``); a bare word is a string.

    Raises
    ------
    ConfigError
        An empty value, or a ``[`` that does not open a valid TOML list.
    """
    text = text.strip()
    if not text:
        raise ConfigError(f"{option}: an empty value; write key=value, e.g. meta.inner_lr=0.1")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text.startswith("["):
            raise ConfigError(f"{option}: {text!r} is not a TOML list, e.g. [16, 32]") from None
        return text


def parse_setting(text: str, option: str = "--set") -> tuple[str, Any]:
    """``"meta.inner_lr=0.1"`` -> ``("meta.inner_lr", 0.1)``.

    Raises
    ------
    ConfigError
        No ``=``, or a key that is not dotted names.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(
            f"{option} {text!r}: use section.key=value, e.g. {option} meta.inner_lr=0.1"
        )
    return key, toml_value(value, f"{option} {key}")


def _section(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The config section ``name`` of ``model`` (None: not a section, e.g. a dict-valued key)."""
    field = None if model is None else model.model_fields.get(name)
    kind = None if field is None else field.annotation
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _merged(old: dict, table: dict, model: type[BaseModel]) -> dict:
    """Section ``old`` with the keys of ``table`` set, sections inside it merged the same way."""
    out = dict(old)
    for key, value in table.items():
        inner = _section(model, key)
        if inner is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value, inner)
        else:
            out[key] = value
    return out


def with_keys(config: StudyConfig, overrides: dict[str, Any], source: str) -> StudyConfig:
    """A copy of ``config`` with dotted keys (``meta.inner_lr``, ``seed``) set, re-validated.

    A table given for a whole section (``features={bar_shape=false}``) sets the keys it
    names and leaves the section's others as they were, as the dotted keys would; a
    dict-valued key (``detector.settings={}``) is replaced whole. ``source`` names where
    the values came from in any error (``"--set seed=x"``).
    """
    raw = config.model_dump(mode="json")
    model: type[BaseModel] | None
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node, model = raw, StudyConfig
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"{source}: {key}: {part!r} is a value, not a section")
            node, model = node.setdefault(part, {}), _section(model, part)
        section = _section(model, last)
        if section is not None and isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last] = _merged(node[last], value, section)
        else:
            node[last] = value
    return parse_config(raw, source)


def with_settings(
    config: StudyConfig, settings: Sequence[str], option: str = "--set"
) -> StudyConfig:
    """``config`` with each ``section.key=value`` applied in order, each one validated.

    Validating one at a time lets an error name the exact ``option`` (``--set``) that caused it.
    """
    for text in settings:
        key, value = parse_setting(text, option)
        config = with_keys(config, {key: value}, f"{option} {text.strip()}")
    return config


def load_with_settings(path: str | Path, settings: Sequence[str] = ()) -> StudyConfig:
    """Load a study TOML (errors name the file), then apply ``--set`` overrides (errors name
    the option)."""
    return with_settings(load_config(path), settings)

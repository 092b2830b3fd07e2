"""``metabt --help`` lists every command with a summary that is not cut off."""

from __future__ import annotations

from typing import Any

import pytest
import typer.main

from metabt.backtests.cli import app


def _groups() -> list[tuple[str, Any]]:
    """The command groups (objects with sub-commands), from typer's own click."""
    root = typer.main.get_command(app)
    groups = [("metabt", root)]
    groups += [(f"metabt {n}", c) for n, c in root.commands.items() if hasattr(c, "commands")]
    return groups


@pytest.mark.parametrize(
    ("name", "group"), _groups(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_help_summaries_are_whole_at_80_columns(name: str, group: Any) -> None:
    ctx = group.context_class(group, info_name=name, terminal_width=80)
    text = group.get_help(ctx)
    listing = text.split("Commands:")[1]
    lines = [line for line in listing.splitlines() if line.strip()]
    assert len(lines) == len(group.commands), text
    for line in lines:
        # click cuts a summary that does not fit and marks the cut with "...".
        assert not line.rstrip().endswith("..."), line
        assert len(line) <= 80, line

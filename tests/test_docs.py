"""The README documents every command and every option the CLI has (docs that cannot drift)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from catalog.cli import cli, load_plugins

README = (Path(__file__).parents[1] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


load_plugins()
COMMANDS = _commands(cli)


def test_every_plugin_is_installed():
    assert {"scan", "sql", "show", "lineage", "export", "db", "db upgrade", "report", "survey"} <= {n for n, _ in COMMANDS}


@pytest.mark.parametrize("name,command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_and_options_in_readme(name, command):
    assert f"superweights {name}" in README, f"README does not show `superweights {name}`"
    for param in command.params:
        for opt in param.opts + param.secondary_opts:
            if opt.startswith("--") and opt != "--help":
                assert opt in README, f"README does not mention {opt} of `superweights {name}`"

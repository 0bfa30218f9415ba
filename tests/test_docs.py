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


def test_make_test_names_the_system_packages_it_cannot_install(tmp_path):
    """Without root's apt-get, `make test`'s first step names what to install, in one line, and stops."""
    import shutil
    import subprocess

    bin_dir = tmp_path / "bin"  # a PATH with none of the tools the tests need, and no apt-get
    bin_dir.mkdir()
    for tool in ("ls", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    script = Path(__file__).with_name("system_packages.sh")
    done = subprocess.run(["/bin/sh", str(script)], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "the tests need these Debian packages: tidy chromium chromium-driver iproute2 util-linux" in done.stderr
    assert "tests/system_packages.sh" in (script.parents[1] / "Makefile").read_text()  # what `make test` runs first

"""The README documents every command and every option the CLI has (docs that cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from catalog.cli import cli, load_plugins

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


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


def test_architecture_notes_name_only_files_that_exist():
    """The design notes point a newcomer at files; a rename that forgets them is caught here."""
    cited = set(re.findall(r"`((?:catalog|db|workers|reports|tests|benchmarks)/[\w/.]+)`", ARCHITECTURE.read_text()))
    assert cited, "docs/ARCHITECTURE.md names no file"
    assert [p for p in sorted(cited) if not (ROOT / p).exists()] == []


def test_code_cites_design_notes_users_can_open():
    """Docstrings cite the notes by their path in the repository, never a file outside it."""
    code = [p for d in ("catalog", "db", "workers", "reports") for p in (ROOT / d).rglob("*.py")]
    stale = [str(p.relative_to(ROOT)) for p in code if "DESIGN.md" in p.read_text()]
    assert stale == []

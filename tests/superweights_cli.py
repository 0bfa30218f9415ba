"""Run `superweights` as a user does: the installed console script, in a subprocess, isolated.

Each run pays for importing torch and transformers (seconds), so tests that make several runs
start them together with `run_many`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SUPERWEIGHTS = Path(sys.executable).with_name("superweights")
ISOLATED_DIRS = ("HF_HOME", "SUPERWEIGHTS_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")
# Root without the capabilities that override file modes: a chmod 0444 file is then read-only to it.
WITHOUT_OVERRIDE = ("setpriv", "--bounding-set=-dac_override,-dac_read_search",
                    "--inh-caps=-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
DROPPED = ("HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "SUPERWEIGHTS_DB", "SUPERWEIGHTS_DEBUG")


def isolated_env(root: Path) -> dict[str, str]:
    """The variables a hermetic test sets: data and cache dirs under `root`, offline, no token."""
    return {**{name: str(root / name.lower()) for name in ISOLATED_DIRS}, "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            under: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`superweights ARGS` with os.environ (plus `env`), wide output for the tables; `under`: a
    command to run it under (`WITHOUT_OVERRIDE`). Every test that needs a process of its own runs
    the CLI through this (in-process: conftest's `superweights` fixture)."""
    environ = {k: v for k, v in os.environ.items() if k not in DROPPED} | {"COLUMNS": "200"} | (env or {})
    return subprocess.run([*under, str(SUPERWEIGHTS), *args], capture_output=True, text=True, env=environ, timeout=timeout)


def run_many(commands: dict[str, list[str]], env: dict[str, str] | None = None,
             under: tuple[str, ...] = ()) -> dict[str, subprocess.CompletedProcess]:
    """Run several commands at once; results by the same keys."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, *args, env=env, under=under) for name, args in commands.items()}
    return {name: future.result() for name, future in futures.items()}


def one_line_error(run: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed; fails unless it failed cleanly with exactly one line."""
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "Traceback" not in output, output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]

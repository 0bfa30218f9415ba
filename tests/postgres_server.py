"""A throwaway PostgreSQL server for the catalog tests, from the Debian `postgresql` package.

The tests run in a fresh network namespace (tests/isolated.sh), where no outside server can be
reached: this one is started inside it, listening on 127.0.0.1 (a free port) and on a unix socket
in its own temp dir, with fsync off. As root it runs as the unprivileged `postgres` user
(initdb refuses root).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH: "
    "install Debian's `postgresql` package (`.ci/run` does)."
)


def find_binaries() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin, else the directory of `initdb` on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for directory in reversed(versions):
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


@dataclass
class PostgresServer:
    binaries: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sw-pg-")))
    port: int = field(default_factory=lambda: _free_port())
    _names: itertools.count = field(default_factory=itertools.count)

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options)
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        """The same server through its unix socket (libpq's `host=DIR`)."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.root}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        self.execute(self.url(), f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, url: str, statement: str) -> None:
        import psycopg

        with psycopg.connect(url, autocommit=True) as con:
            con.execute(statement)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.binaries / program), *args]
        if os.geteuid() == 0:
            owner = pwd.getpwnam(SUPERUSER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode:
            log = self.root / "server.log"
            raise RuntimeError(f"{program} failed: {done.stderr.strip()}\n{log.read_text() if log.exists() else ''}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

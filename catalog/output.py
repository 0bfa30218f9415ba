"""Files the user names on the command line (`scan --json FILE`, `export --parquet DIR`), written
without harming what is already there.

Rules:
- A path that is, or will be, a regular file is written atomically: into a temporary file next
  to it, renamed over it once complete. A reader never sees half a file, and a command that fails
  leaves what was there.
- Anything else at the path (a symlink, a device such as /dev/full or /dev/stdout, a FIFO, a file
  with other hard links) is written through, in place: it is never replaced by a new file.
- Whether the path can be written is found out before the work starts (the temporary file is made
  then), so a scan of hours is not lost to an unwritable path at its end.
- Only what this run created is removed (its own temporary file).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from catalog.errors import BadOptionError, UnwritableOutputError


@dataclass
class Output:
    """Where one output file goes. `staging` is the temporary file; None: written in place."""

    path: Path
    option: str
    staging: Path | None

    @property
    def target(self) -> Path:
        """The file to write the content to (then `commit`)."""
        return self.staging or self.path

    def write_text(self, text: str) -> None:
        """Write `text` and put it in place."""
        with self.errors():
            with open(self.target, "w", encoding="utf-8") as file:
                file.write(text)
        self.commit()

    def commit(self) -> None:
        """Rename the complete temporary file over the path (nothing to do when written in place)."""
        if self.staging is not None:
            with self.errors():
                os.replace(self.staging, self.path)
            self.staging = None

    def discard(self) -> None:
        if self.staging is not None:
            self.staging.unlink(missing_ok=True)
            self.staging = None

    @contextmanager
    def errors(self) -> Iterator[None]:
        """An OSError on this output becomes one line naming the option and the path."""
        try:
            yield
        except OSError as exc:
            self.discard()
            raise UnwritableOutputError(self.option, self.path, exc.strerror or str(exc)) from exc


def prepare(path: Path, option: str) -> Output:
    """Check that `path` can be written, and make its temporary file when it is a regular file."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UnwritableOutputError(option, path, exc.strerror or str(exc)) from exc
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise BadOptionError(option, f"{path} is a directory; give a file name.")
    if st is not None and path.exists() and not os.access(path, os.W_OK):  # a dangling symlink: its target is made
        raise UnwritableOutputError(option, path, "permission denied")
    if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_nlink > 1):
        return Output(path, option, None)  # not ours to replace: written through
    if not path.parent.is_dir():
        raise BadOptionError(option, f"{path.parent} is not a directory; create it or write elsewhere.")
    try:
        staging = _temporary(path, None if st is None else stat.S_IMODE(st.st_mode))
    except OSError as exc:
        raise UnwritableOutputError(option, path, f"no new file can be made in {path.parent}: {exc.strerror}") from exc
    return Output(path, option, staging)


@contextmanager
def output_file(path: Path, option: str) -> Iterator[Output]:
    """`prepare(path)` for the length of a block; its temporary file is removed if the block fails."""
    output = prepare(path, option)
    try:
        yield output
    finally:
        output.discard()


def _temporary(path: Path, mode: int | None) -> Path:
    """A new file next to `path`, with the mode of the file it replaces (else the umask's)."""
    while True:
        staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        except FileExistsError:
            continue
        os.close(fd)
        if mode is not None:
            os.chmod(staging, mode)  # the umask narrowed it at creation
        return staging

"""A content fingerprint of a model's weights: the same bytes under another path, file name or
repo are the same model, and other bytes under a known name are another revision of it.

The fingerprint of one weight file is its sha256, which is what the Hub calls the file's LFS oid
and what huggingface_hub names the file's blob in the HF_HOME cache (`blobs/<sha256>`): a file
read from the Hub cache costs nothing, and a local copy of it hashes to the same value. Several
files (safetensors shards) are fingerprinted by the sha256 of their sha256s, one hex digest per
line in file-name order. Files are hashed in parallel threads (hashlib releases the GIL).

Hashing a 7B checkpoint's 13.5 GB takes over 2 s, longer than reading it onto a GPU, so a local
file's sha256 is kept under SUPERWEIGHTS_HOME with the file's stat (size, mtime, ctime, inode,
device), as git's index keeps its stat data: the next scan of the unchanged file reads the cache,
and any write, rename over or `touch` of the file changes its stat and hashes it again. A file
changed less than `SETTLED_NS` before it was hashed is not cached (a later write within the same
timestamp tick could not be told apart). The cache is an aid only: an unreadable, corrupt or
unwritable one is ignored and the file hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from catalog import settings

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SETTLED_NS = 2_000_000_000  # a file written within this long of its hashing is hashed again next time


def fingerprint(files: Sequence[Path], threads: int | None = None) -> str:
    """The sha256 of one file, or of the files' sha256s (one per line, in the order given).
    No files is a `ValueError`: weights that are not there identify nothing."""
    if not files:
        raise ValueError("no weight files")
    with ThreadPoolExecutor(threads or min(8, len(files), os.cpu_count() or 1)) as pool:
        digests = list(pool.map(file_sha256, files))
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The file's sha256: the name of its blob when it lies in the Hub cache, else as cached for
    the file's current stat, else read and hashed."""
    target = Path(path).resolve()
    if target.parent.name == "blobs" and SHA256.match(target.name):
        return target.name
    before = _stat_key(target)
    cached = _cached(target, before)
    if cached:
        return cached
    started = time.time_ns()
    digest = hash_file(target)
    if _stat_key(target) == before and started - max(before["mtime_ns"], before["ctime_ns"]) >= SETTLED_NS:
        _store(target, before, digest)
    return digest


def hash_file(path: Path) -> str:
    """The sha256 of the file's bytes, read."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_dir() -> Path:
    return settings.home() / "cache" / "sha256"


def _stat_key(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _entry(path: Path) -> Path:
    """One small file per weight file, named by a hash of its path: concurrent scans never share one."""
    return cache_dir() / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"


def _cached(path: Path, stat: dict[str, int]) -> str | None:
    try:
        entry = json.loads(_entry(path).read_text())
        digest = entry["sha256"]
        same = entry["path"] == str(path) and entry["stat"] == stat
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or corrupt: hash the file
        return None
    return digest if same and isinstance(digest, str) and SHA256.match(digest) else None


def _store(path: Path, stat: dict[str, int], digest: str) -> None:
    entry = _entry(path)
    partial = entry.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"path": str(path), "stat": stat, "sha256": digest}))
        os.replace(partial, entry)  # readers see the old entry or the new one, never half of one
    except OSError:  # read-only or full home: the fingerprint stands, uncached
        with contextlib.suppress(OSError):
            partial.unlink()

"""A content fingerprint of a model's weights: the same bytes under another path, file name or
repo are the same model, and other bytes under a known name are another revision of it.

The fingerprint of one weight file is its sha256, which is what the Hub calls the file's LFS oid
and what huggingface_hub names the file's blob in the HF_HOME cache (`blobs/<sha256>`): a file
read from the Hub cache costs nothing, and a local copy of it hashes to the same value. Several
files (safetensors shards) are fingerprinted by the sha256 of their sha256s, one hex digest per
line in file-name order. Files are hashed in parallel threads (hashlib releases the GIL).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    """The file's sha256: the name of its blob when it lies in the Hub cache, else read and hashed."""
    target = Path(path).resolve()
    if target.parent.name == "blobs" and SHA256.match(target.name):
        return target.name
    with open(target, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

"""Resolve what the user asked to scan: a Hub repo id (`org/name[@rev]`), a local checkpoint
directory, or a `.gguf` file. Resolving downloads (Hub) or checks (local) the files; it loads nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from catalog import settings
from catalog.errors import GatedSourceError, InvalidSourceError, SourceNotFoundError

# What a scan needs from a Hub repo: config, tokenizer and safetensors weights, nothing else.
HUB_PATTERNS = [
    "config.json",
    "README.md",  # the model card: license, base_model, tags
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "*.model",
    "*.safetensors",
    "*.safetensors.index.json",
]
PICKLE_PATTERNS = ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedSource:
    """Files ready to load. `revision` is the pinned commit sha for Hub sources."""

    spec: str
    path: Path  # checkpoint directory (for GGUF: the directory holding the file)
    format: str  # "safetensors" | "gguf" | "pytorch"
    repo_id: str | None = None
    revision: str | None = None
    gguf_file: str | None = None


def resolve(spec: str, *, allow_pickle: bool = False) -> ResolvedSource:
    """Turn a user's SOURCE into files on disk, or raise a typed error naming the fix."""
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local(spec, path, allow_pickle)
    if is_local(spec):
        raise SourceNotFoundError(spec, "Give an existing checkpoint directory, a .gguf file, or a Hub repo id org/name[@revision].")
    return _resolve_hub(spec, allow_pickle)


def is_local(spec: str) -> bool:
    """Whether `spec` names a file or directory rather than a Hub repo: one rule for resolving and cataloguing."""
    if Path(spec).expanduser().exists():
        return True
    return spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or not REPO_ID.match(split_revision(spec)[0])


def split_revision(spec: str) -> tuple[str, str | None]:
    """A Hub spec `org/name[@rev]` as (repo id, revision or None)."""
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def _resolve_local(spec: str, path: Path, allow_pickle: bool) -> ResolvedSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise InvalidSourceError(spec, "a single file must be a .gguf model; for other formats give the checkpoint directory.")
        return ResolvedSource(spec, path.parent, "gguf", gguf_file=path.name)
    if not (path / "config.json").is_file():
        raise InvalidSourceError(spec, "no config.json in this directory; give a Hugging Face checkpoint directory or a .gguf file.")
    return ResolvedSource(spec, path, _weights_format(spec, path, allow_pickle))


def _weights_format(spec: str, path: Path, allow_pickle: bool) -> str:
    if any(path.glob("*.safetensors")):
        return "safetensors"
    if any(path.glob("*.bin")):
        if not allow_pickle:
            raise InvalidSourceError(spec, "only pickle .bin weights here, which can run code when loaded; convert to safetensors or pass --allow-pickle (loads with weights_only=True).")
        return "pytorch"
    raise InvalidSourceError(spec, "no weights (*.safetensors) in this directory.")


def _or_a_path(repo_id: str, hub_fix: str) -> str:
    """A repo id whose first part is a local directory was most likely a path: say that first."""
    parent = Path(repo_id).expanduser().parent
    if not parent.is_dir():
        return hub_fix
    return f"{parent}/ has no {Path(repo_id).name}: check the path. As a Hub repo id: {hub_fix}"


def _resolve_hub(spec: str, allow_pickle: bool) -> ResolvedSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = split_revision(spec)
    patterns = HUB_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError as exc:
        raise GatedSourceError(spec) from exc
    except RevisionNotFoundError as exc:
        raise SourceNotFoundError(spec, f"the repo has no revision {revision!r}; give a branch, tag or commit sha.") from exc
    except RepositoryNotFoundError as exc:
        raise SourceNotFoundError(spec, _or_a_path(repo_id, "no such Hub repo (or it is private: set HF_TOKEN).")) from exc
    except LocalEntryNotFoundError as exc:
        missing = f"revision {revision!r}" if revision else "the repo"
        fix = (
            f"HF_HUB_OFFLINE is set and {missing} is not in the HF_HOME cache; run once online or unset HF_HUB_OFFLINE."
            if settings.hub_offline()
            else f"the Hub cannot be reached and {missing} is not cached; check the network or HF_ENDPOINT."
        )
        raise SourceNotFoundError(spec, _or_a_path(repo_id, fix)) from exc
    resolved = _resolve_local(spec, folder, allow_pickle)
    # snapshot folders are named by commit sha: this pins the revision actually scanned
    return ResolvedSource(spec, folder, resolved.format, repo_id=repo_id, revision=folder.name)

"""Resolve what the user asked to scan: a Hub repo id (`org/name[@rev]`), one GGUF file of a Hub
repo (`org/name:Q4_K_M`), a local checkpoint directory, or a `.gguf` file. Resolving downloads
(Hub) or checks (local) the files and fingerprints them; it loads nothing.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from catalog import settings
from catalog.errors import BadOptionError, GatedSourceError, InvalidSourceError, SourceNotFoundError, first_line
from catalog.fingerprint import fingerprint
from catalog.gguf_meta import first_part, part_names

WEIGHTS = "model.safetensors"  # what transformers loads, else the shards its index names
INDEX = "model.safetensors.index.json"
# What a scan needs from a Hub repo besides its weights (`_hub_weights`): config, card, tokenizer, index.
HUB_PATTERNS = [
    "config.json",
    "README.md",  # the model card: license, base_model, tags
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "*.model",
    INDEX,
]
PICKLE_WEIGHTS = "pytorch_model*.bin"  # what transformers loads: not training_args.bin, optimizer.bin beside it
PICKLE_INDEX = "pytorch_model.bin.index.json"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedSource:
    """Files ready to load. `revision` is the pinned commit sha for Hub sources.

    `spec` is what the user typed (for messages); `source` is what the model is catalogued under,
    the same however it was typed: a local path resolved (`./m`, `m`, a symlink to it: one
    source), a Hub repo id without its revision, `org/name:FILE.gguf` for one GGUF file of a repo.
    `fingerprint` identifies the weights themselves (`catalog.fingerprint`)."""

    spec: str
    path: Path  # checkpoint directory (for GGUF: the directory holding the file)
    format: str  # "safetensors" | "gguf" | "pytorch"
    repo_id: str | None = None
    revision: str | None = None
    gguf_file: str | None = None
    source: str = ""
    fingerprint: str | None = None

    def weight_files(self) -> list[Path]:
        """The files holding the weights, in the order the fingerprint takes them; each a regular
        file (a link to one, as in the Hub's cache), never a device that reads without end."""
        if self.gguf_file:
            files = [self.path / name for name in part_names(self.gguf_file)]
        elif self.format == "pytorch":
            files = sorted(self.path.glob(PICKLE_WEIGHTS))
        else:
            files = checkpoint_shards(self.path)
        for file in files:
            if file.exists() and not file.is_file():
                raise ValueError(f"{file.name} is not a regular file")
        return files

    def fingerprinted(self) -> ResolvedSource:
        """This source with the fingerprint of its weight files. A local source has no commit:
        its revision is named by its fingerprint, so other weights under the same path are
        another revision of it, never mistaken for the ones catalogued."""
        try:
            found = fingerprint(self.weight_files())
        except (OSError, ValueError) as exc:  # unreadable file, broken index: the load would fail the same way
            raise _unreadable(self.spec, exc) from exc
        return replace(self, fingerprint=found, revision=self.revision if self.repo_id else local_revision(found))

    @property
    def again(self) -> str:
        """A spec that resolves to exactly these files again (on another node: per-node caches)."""
        return f"{self.source}@{self.revision}" if self.repo_id and self.revision else self.source


def checkpoint_shards(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (`shard_names`)."""
    return [path / name for name in shard_names(os.listdir(path), path / INDEX)]


def shard_names(files: Iterable[str], index: Path) -> list[str]:
    """The safetensors files among a checkpoint's `files` (paths relative to it), as transformers
    picks them: model.safetensors, else those its index names; only where it has neither, every
    top-level .safetensors file (a checkpoint saved under another name). So a variant
    (model.fp16.safetensors), an adapter, Mistral's consolidated.safetensors or a training copy
    in a subfolder (checkpoint-500/) beside the weights is neither read, fingerprinted nor
    downloaded. `index` is read only where the files hold no model.safetensors."""
    files = set(files)
    if WEIGHTS in files:
        return [WEIGHTS]
    if INDEX in files:
        return _index_names(index)
    return sorted(name for name in files if name.endswith(".safetensors") and "/" not in name)


def _index_names(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{index.name} is not a safetensors index ({exc})") from exc
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index.name} is not a safetensors index (its weight_map is not an object)")
    return sorted({_inside(index.name, name) for name in weight_map.values()})


def _inside(index: str, name: object) -> str:
    """A shard name of the index, which must name a file of the checkpoint itself: a hostile index
    could otherwise have the scan read (and hash) any file, /dev/zero without end."""
    relative = PurePosixPath(name) if isinstance(name, str) else None
    if relative is None or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{index} names {name!r}, which is not a file of the checkpoint directory")
    return name


def _unreadable(spec: str, exc: Exception) -> InvalidSourceError:
    return InvalidSourceError(spec, f"cannot read its weight files ({first_line(exc)[:200]}).")


def local_revision(fingerprint: str) -> str:
    """The revision of a local source: `sha256:` and the first 12 hex digits of its fingerprint."""
    return f"sha256:{fingerprint[:12]}"


def resolve(spec: str, *, allow_pickle: bool = False) -> ResolvedSource:
    """Turn a user's SOURCE into files on disk, or raise a typed error naming the fix."""
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local(spec, path.resolve(), allow_pickle).fingerprinted()
    if is_local(spec):
        raise SourceNotFoundError(spec, "Give an existing checkpoint directory, a .gguf file, or a Hub repo id org/name[@revision] "
                                        "(one GGUF file of it: org/name:Q4_K_M).")
    return _resolve_hub(spec, allow_pickle).fingerprinted()


def is_local(spec: str) -> bool:
    """Whether `spec` names a file or directory rather than a Hub repo: one rule for resolving and cataloguing."""
    if Path(spec).expanduser().exists():
        return True
    repo, gguf = split_gguf(spec)
    if spec.startswith((".", "/", "~")) or not REPO_ID.match(split_revision(repo)[0]):
        return True
    return spec.endswith(".gguf") and not gguf  # org/name:FILE.gguf is one file of a Hub repo


def canonical(spec: str) -> str:
    """The spec as the catalog names its source: a local path resolved (a part of a split GGUF: its
    first part, which names the model); a Hub spec as typed."""
    return str(first_part(Path(spec).expanduser().resolve())) if is_local(spec) else spec


def split_revision(spec: str) -> tuple[str, str | None]:
    """A Hub spec `org/name[@rev]` as (repo id, revision or None)."""
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


def split_gguf(spec: str) -> tuple[str, str | None]:
    """`org/name:Q4_K_M` (llama.cpp's spelling; `org/name:FILE.gguf` too, the revision on either
    side) as (`org/name[@rev]`, the GGUF file or quantization: "" when nothing follows the colon),
    else (spec, None)."""
    head, colon, tail = spec.partition(":")
    if not colon:
        return spec, None
    gguf, at, revision = tail.partition("@")
    return head + (f"@{revision}" if at else ""), gguf


def with_gguf(spec: str, gguf: str | None) -> str:
    """`scan org/name --gguf Q4_K_M` as the spec `org/name:Q4_K_M`."""
    if gguf is None:
        return spec
    if is_local(spec) or split_gguf(spec)[1] is not None:
        raise BadOptionError("--gguf", f"picks a GGUF file of a Hub repo; {spec!r} is a local path or names its file already.")
    return f"{spec}:{gguf}"


def _resolve_local(spec: str, path: Path, allow_pickle: bool) -> ResolvedSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise InvalidSourceError(spec, "a single file must be a .gguf model; for other formats give the checkpoint directory.")
        first = first_part(path)
        return ResolvedSource(spec, path.parent, "gguf", gguf_file=first.name, source=str(first))
    if not (path / "config.json").is_file():
        raise InvalidSourceError(spec, "no config.json in this directory; give a Hugging Face checkpoint directory or a .gguf file.")
    return ResolvedSource(spec, path, _weights_format(spec, path, allow_pickle), source=str(path))


def _weights_format(spec: str, path: Path, allow_pickle: bool) -> str:
    if any(path.glob("*.safetensors")):
        return "safetensors"
    if any(path.glob(PICKLE_WEIGHTS)):
        if not allow_pickle:
            raise InvalidSourceError(spec, "only pickle .bin weights here, which can run code when loaded; convert to safetensors "
                                           "or pass --allow-pickle (loads with weights_only=True).")
        return "pytorch"
    raise InvalidSourceError(spec, "no weights (*.safetensors) in this directory.")


def _or_a_path(repo_id: str, hub_fix: str) -> str:
    """A repo id whose first part is a local directory was most likely a path: say that first."""
    parent = Path(repo_id).expanduser().parent
    if not parent.is_dir():
        return hub_fix
    return f"{parent}/ has no {Path(repo_id).name}: check the path. As a Hub repo id: {hub_fix}"


@contextmanager
def _hub_errors(spec: str, repo_id: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's errors as our typed ones, each naming the fix."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except GatedRepoError as exc:
        raise GatedSourceError(spec) from exc
    except RevisionNotFoundError as exc:
        raise SourceNotFoundError(spec, f"the repo has no revision {revision!r}; give a branch, tag or commit sha.") from exc
    except RepositoryNotFoundError as exc:
        raise SourceNotFoundError(spec, _or_a_path(repo_id, "no such Hub repo (or it is private: set HF_TOKEN).")) from exc
    except LocalEntryNotFoundError as exc:
        missing = f"revision {revision!r}" if revision else "the repo"
        raise SourceNotFoundError(spec, _or_a_path(repo_id, _not_cached(missing))) from exc


def _not_cached(missing: str) -> str:
    if settings.hub_offline():
        return f"HF_HUB_OFFLINE is set and {missing} is not in the HF_HOME cache; run once online or unset HF_HUB_OFFLINE."
    return f"the Hub cannot be reached and {missing} is not cached; check the network or HF_ENDPOINT."


def _resolve_hub(spec: str, allow_pickle: bool) -> ResolvedSource:
    from huggingface_hub import snapshot_download

    repo_spec, gguf = split_gguf(spec)
    repo_id, revision = split_revision(repo_spec)
    if gguf is not None:
        return _resolve_hub_gguf(spec, repo_id, revision, gguf)
    with _hub_errors(spec, repo_id, revision):
        _check_access(repo_id)
        with _without_progress_bars():  # config, card, tokenizer: no bar above the weights' own, or an error's line
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
        try:
            weights = _hub_weights(_repo_files(repo_id, folder), folder, allow_pickle)
        except ValueError as exc:  # a broken or hostile index
            raise _unreadable(spec, exc) from exc
        if weights:  # at the commit just pinned, even if the branch moves meanwhile
            snapshot_download(repo_id, revision=folder.name, allow_patterns=[glob.escape(name) for name in weights])
    resolved = _resolve_local(spec, folder, allow_pickle)
    # snapshot folders are named by commit sha: this pins the revision actually scanned
    return replace(resolved, repo_id=repo_id, revision=folder.name, source=repo_id)


def _hub_weights(files: list[str], snapshot: Path, allow_pickle: bool) -> list[str]:
    """The weight files of a repo's `files` that a scan downloads: the safetensors ones transformers
    would load (`shard_names`), else, where pickle is allowed, its pytorch_model*.bin files and
    their index. Never both formats of a repo that ships both, nor the copies beside them."""
    safetensors = shard_names(files, snapshot / INDEX)
    if safetensors or not allow_pickle:
        return safetensors
    return [name for name in files if "/" not in name and fnmatch.fnmatch(name, PICKLE_WEIGHTS) or name == PICKLE_INDEX]


def _resolve_hub_gguf(spec: str, repo_id: str, revision: str | None, wanted: str) -> ResolvedSource:
    """Just one GGUF model of a Hub repo (its file, or every part of a split one) and its model card, at a pinned commit."""
    from huggingface_hub import snapshot_download

    if not wanted.strip():
        raise BadOptionError("--gguf", f"{spec!r} names no GGUF file; give its file name or a quantization, e.g. {repo_id}:Q4_K_M.")

    with _hub_errors(spec, repo_id, revision):
        _check_access(repo_id)
        with _without_progress_bars():  # a few kB: no bar before the file's own, or before an error's one line
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["README.md"]))
        name = pick_gguf(spec, wanted, [f for f in _repo_files(repo_id, folder) if f.endswith(".gguf")])
        for part in part_names(name):  # into the snapshot folder
            _download_part(spec, repo_id, part, folder.name)
    return ResolvedSource(spec, folder, "gguf", repo_id, folder.name, name, source=f"{repo_id}:{name}")


def _download_part(spec: str, repo_id: str, name: str, commit: str) -> None:
    """One file of a GGUF model; one missing (from the repo, or offline from the cache: a part of a
    split model only partly uploaded or cached) is named, where `_hub_errors` would blame the repo."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        hf_hub_download(repo_id, name, revision=commit)
    except LocalEntryNotFoundError as exc:
        raise SourceNotFoundError(spec, _not_cached(name)) from exc
    except EntryNotFoundError as exc:  # a part its name promises, which the repo lacks
        raise SourceNotFoundError(spec, f"The repo has no {name} at commit {commit[:12]}; a split GGUF needs every part.") from exc


def _check_access(repo_id: str) -> None:
    """A gated or unknown repo, refused before its download starts (and draws a progress bar above
    the error). Offline, or where the Hub cannot be reached, the download's own handling decides:
    a cached snapshot still serves."""
    if settings.hub_offline():
        return
    from huggingface_hub import auth_check
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        auth_check(repo_id)
    except RepositoryNotFoundError:  # GatedRepoError is one too
        raise
    except Exception:  # the network, or an answer auth-check gives no verdict in
        return


@contextmanager
def _without_progress_bars() -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    were_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            enable_progress_bars()


def _repo_files(repo_id: str, snapshot: Path) -> list[str]:
    """The repo's files at the snapshot's commit: from the Hub, or offline those in the cache."""
    if settings.hub_offline():
        return sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if not p.is_dir())
    from huggingface_hub import HfApi

    return sorted(HfApi().list_repo_files(repo_id, revision=snapshot.name))


def pick_gguf(spec: str, wanted: str, files: list[str]) -> str:
    """The one model that `wanted` names: a file name, or a quantization such as Q4_K_M; of a split
    model (any of its parts named), its first part."""
    if wanted.endswith(".gguf"):
        matches = [f for f in files if f == wanted or Path(f).name == wanted]
    else:
        tag = re.compile(rf"(?<![A-Za-z0-9]){re.escape(wanted)}(?![A-Za-z0-9_])", re.IGNORECASE)
        matches = [f for f in files if tag.search(Path(f).name)]
    matches = list(dict.fromkeys(part_names(f)[0] for f in matches))
    if len(matches) == 1:
        return matches[0]
    where = "in the HF_HOME cache (HF_HUB_OFFLINE is set)" if settings.hub_offline() else "in the repo"
    listed = ", ".join(files[:12]) or "none"
    if not matches:
        raise SourceNotFoundError(spec, f"no GGUF file {where} matches {wanted!r}; its GGUF files: {listed}.")
    raise InvalidSourceError(spec, f"{wanted!r} matches {len(matches)} GGUF files ({', '.join(matches[:6])}); give the file name.")

"""Who a model is, from what it says about itself: a GGUF file's `general.*` metadata, a
checkpoint's config.json and model card (README.md front matter), a Hub repo id. Never the path
it was read from, except as the last resort, and then `named_from` says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from catalog.gguf_meta import read_metadata
from catalog.sources import REPO_ID

FROM_GGUF = "gguf metadata"
FROM_CARD = "config and model card"
FROM_REPO = "hub repo id"
FROM_FILE_NAME = "file name"  # a GGUF without general.* keys, or a bare directory: the name is a guess
GGUF_QUANT = re.compile(r"(I?Q\d+_[A-Z0-9_]+|I?Q\d+|BF16|F16|F32)", re.IGNORECASE)
TEXT = 255  # characters of a declared name, license or base model kept: the catalog's columns (db.models)
HUB_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/([\w.-]+/[\w.-]+)/?$")


@dataclass(frozen=True)
class Identity:
    """The self-declared facts of a model (`ModelInfo` carries them)."""

    name: str
    named_from: str  # FROM_GGUF | FROM_CARD | FROM_REPO | FROM_FILE_NAME
    organization: str | None = None
    basename: str | None = None  # GGUF `general.basename`: the family's own spelling ("smollm2")
    size_label: str | None = None  # "135M", "8x7B"
    license: str | None = None
    base_model: str | None = None  # a Hub repo id where one is declared
    quantization: str | None = None  # GGUF file type: "Q4_1", "Q4_K_M"...
    tags: tuple[str, ...] = ()


def gguf_identity(path: Path, repo_id: str | None = None, metadata: Mapping[str, object] | None = None) -> Identity:
    """From the file's `general.*` keys (`metadata`: the file's, already read by the load); a file
    without them is named after itself (`FROM_FILE_NAME`)."""
    metadata = read_metadata(path) if metadata is None else metadata
    meta = {k.removeprefix("general."): v for k, v in metadata.items() if k.startswith("general.")}
    quantization = file_type_name(meta.get("file_type")) or quantization_from_name(path.name)
    base = _gguf_base_model(meta)
    tags = meta.get("tags")
    name = _text(meta.get("name"))
    if not name:
        return Identity(repo_id or path.name, FROM_REPO if repo_id else FROM_FILE_NAME, _organization(repo_id),
                        quantization=quantization, base_model=base, license=_text(meta.get("license")))
    return Identity(
        name=name, named_from=FROM_GGUF,
        organization=_text(meta.get("organization")) or _organization(repo_id), basename=_text(meta.get("basename")),
        size_label=_text(meta.get("size_label")), license=_text(meta.get("license")), base_model=base,
        quantization=quantization, tags=tuple(map(str, tags)) if isinstance(tags, list) else (),
    )


def checkpoint_identity(path: Path, config_name: str | None, repo_id: str | None = None) -> Identity:
    """From the repo id where there is one, else the card's model name or the repo id config.json
    was saved from (`_name_or_path`), else the directory's name; license, base model and tags from
    the model card."""
    card = card_metadata(path)
    saved_as = config_name if config_name and REPO_ID.match(config_name) else None
    if repo_id or saved_as:
        named = repo_id or saved_as
        name, organization = named.split("/", 1)[1], _organization(named)
        named_from = FROM_REPO if repo_id else FROM_CARD
    else:
        declared = _text(card.get("model_name"))
        name, organization = declared or path.name, None
        named_from = FROM_CARD if declared else FROM_FILE_NAME
    return Identity(name, named_from, organization, license=_text(card.get("license")),
                    base_model=_text(card.get("base_model")), tags=tuple(card.get("tags", ())))


def name_fact(name: str | None, named_from: str | None) -> str | None:
    """The name as the model facts show it, with where it came from; a guess is called one."""
    if not name:
        return None
    if named_from == FROM_FILE_NAME:
        return f"{name} (from the file name: the files declare no name)"
    return f"{name} (from the {named_from})" if named_from else name


def card_metadata(path: Path) -> dict:
    """license, base_model and tags from a checkpoint's model card (README.md front matter), if any."""
    from huggingface_hub import ModelCard

    card_file = path / "README.md"
    if not card_file.is_file():
        return {}
    try:
        data = ModelCard.load(card_file).data
    except Exception:  # a malformed card is not a reason to refuse the weights
        return {}
    base = data.base_model[0] if isinstance(data.base_model, list) and data.base_model else data.base_model
    found = {"license": data.license, "base_model": base, "tags": list(data.tags or []), "model_name": data.model_name}
    return {k: v for k, v in found.items() if v}


def file_type_name(file_type: object) -> str | None:
    """GGUF `general.file_type` by llama.cpp's name: 3 is Q4_1, 15 Q4_K_M, 0 F32 (None: unknown)."""
    from gguf import LlamaFileType

    try:
        kind = LlamaFileType(int(file_type))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if kind is LlamaFileType.GUESSED:
        return None
    return kind.name.removeprefix("MOSTLY_").removeprefix("ALL_")


def quantization_from_name(file_name: str) -> str | None:
    """A quantization named in the file name ("model.Q4_K_M.gguf"): only where the file says nothing."""
    stem = file_name.removesuffix(".gguf")
    match = GGUF_QUANT.search(stem.split("-")[-1]) or GGUF_QUANT.search(stem)
    return match.group(1).upper() if match else None


def _gguf_base_model(meta: dict[str, object]) -> str | None:
    """The first declared base model as a Hub repo id: its Hub URL, else organization/name."""
    url = _text(meta.get("base_model.0.repo_url"))
    if url and (match := HUB_URL.match(url)):
        return match.group(1)
    org, name = _text(meta.get("base_model.0.organization")), _text(meta.get("base_model.0.name"))
    return f"{org}/{name.replace(' ', '-')}" if org and name else name


def _organization(repo_id: str | None) -> str | None:
    return repo_id.split("/", 1)[0] if repo_id and "/" in repo_id else None


def _text(value: object) -> str | None:
    """A declared fact as text, cut to what a catalog column holds (`TEXT`): a file may declare
    a name of any length, which would leave its scan one that no catalog takes."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value if len(value) <= TEXT else f"{value[:TEXT - 1]}…"

"""Environment read in one place: where superweights keeps its data, and whether it may go online."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """SUPERWEIGHTS_HOME, default `~/.local/share/superweights`: the catalog, fetched models and text."""
    default = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "superweights"
    return Path(os.environ.get("SUPERWEIGHTS_HOME", default)).expanduser()


def default_eval_text() -> Path:
    """The offline evaluation text that `make fixtures` fetches (1911 Britannica, "Shakespeare")."""
    return home() / "eval" / "britannica-1911-shakespeare.txt"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}

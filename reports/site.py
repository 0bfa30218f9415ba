"""The site's model of the catalog: which models and families there are, and their file names.

A model is one repo id (or, for a local source, one path); its page shows its newest successful
scan, and its history every scan of it. Slugs are file names derived from untrusted names, so
they keep only `[a-z0-9._-]` and are made unique with a short hash when two names collide.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePath

from catalog.result import ScanResult, SuperWeight
from db.repository import StoredScan


@dataclass
class ModelEntry:
    """One model of the site: its newest successful scan and all its scans, newest first."""

    key: str
    name: str
    slug: str
    latest: StoredScan
    scans: list[StoredScan]

    @property
    def result(self) -> ScanResult:
        assert self.latest.result is not None  # `latest` is always a successful scan
        return self.latest.result

    @property
    def family(self) -> str:
        return self.result.model.family


@dataclass
class Site:
    """Everything the pages are made from, in display order."""

    scans: list[StoredScan]  # newest first
    models: list[ModelEntry]  # by name
    family_slugs: dict[str, str] = field(default_factory=dict)
    shared: Counter[tuple[str, int, int, int]] = field(default_factory=Counter)

    @classmethod
    def from_scans(cls, scans: list[StoredScan]) -> Site:
        scans = sorted(scans, key=lambda s: (utc(s.finished_at), s.scan_id), reverse=True)
        models = collect_models(scans)
        families = unique_slugs(sorted({m.family for m in models}))
        return cls(scans, models, families, shared_coordinates(models))

    def families(self) -> dict[str, list[ModelEntry]]:
        """Family name -> its models, families by name."""
        grouped: dict[str, list[ModelEntry]] = defaultdict(list)
        for model in self.models:
            grouped[model.family].append(model)
        return dict(sorted(grouped.items(), key=lambda item: item[0].lower()))

    def shared_count(self, family: str, weight: SuperWeight) -> int:
        return self.shared[(family, weight.layer, weight.row, weight.col)]

    def model_for(self, scan: StoredScan) -> ModelEntry | None:
        key = model_key(scan)
        return next((m for m in self.models if m.key == key), None)


def model_key(scan: StoredScan) -> str:
    return scan.repo_id or scan.source


def display_name(scan: StoredScan) -> str:
    """Repo id, else the last part of the path (a .gguf file or checkpoint directory name)."""
    return scan.repo_id or PurePath(scan.source).name or scan.source


def collect_models(scans: list[StoredScan]) -> list[ModelEntry]:
    """One entry per model with a successful scan; `scans` must be newest first."""
    by_key: dict[str, list[StoredScan]] = defaultdict(list)
    for scan in scans:
        by_key[model_key(scan)].append(scan)
    entries = []
    for key, history in by_key.items():
        latest = next((s for s in history if s.status == "ok" and s.result is not None), None)
        if latest is not None:
            entries.append(ModelEntry(key, display_name(latest), "", latest, history))
    entries.sort(key=lambda m: (m.name.lower(), m.key))
    slugs = unique_slugs([m.key for m in entries], [m.name for m in entries])
    for entry in entries:
        entry.slug = slugs[entry.key]
    return entries


def shared_coordinates(models: list[ModelEntry]) -> Counter[tuple[str, int, int, int]]:
    """(family, layer, row, col) -> how many of the family's models have a super weight there."""
    counts: Counter[tuple[str, int, int, int]] = Counter()
    for model in models:
        coordinates = {(w.layer, w.row, w.col) for w in model.result.super_weights}
        counts.update((model.family, *c) for c in coordinates)
    return counts


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return slug[:80] or "model"


def unique_slugs(keys: list[str], names: list[str] | None = None) -> dict[str, str]:
    """key -> slug of its name; names whose slugs collide get a hash of their key appended."""
    names = names or keys
    slugs = [slugify(n) for n in names]
    taken = Counter(slugs)
    return {
        key: slug if taken[slug] == 1 else f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        for key, slug in zip(keys, slugs)
    }


def utc(moment: datetime) -> datetime:
    """Aware UTC time; a naive time from the catalog is taken to be UTC already."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def when(moment: datetime) -> str:
    return utc(moment).strftime("%Y-%m-%d %H:%M UTC")

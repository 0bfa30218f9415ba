"""The site's model of the catalog: which models and families there are, and their file names.

A model is one catalog source (a repo id, one GGUF file of a repo, one resolved local path); its
page shows its newest successful scan, and its history every scan of it. Slugs are file names
derived from untrusted names, so they keep only `[a-z0-9._-]` and are made unique with a short
hash when two names collide.

Published pages carry no local paths: every scan enters the site through `public`, which names a
local source by its last part (the file or directory name) and cuts the directories off any
absolute path in an error message.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import PurePath

from catalog.result import ScanResult, SuperWeight
from db.lineage import Coordinate
from db.reads import StoredScan
from db.schema import STATUS_OK


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
    """Everything the pages are made from, in display order; derived once from the scans."""

    scans: list[StoredScan]  # newest first
    models: list[ModelEntry]  # by name
    families: dict[str, list[ModelEntry]]  # family name -> its models, families by name
    family_slugs: dict[str, str]
    holders: dict[Coordinate, list[ModelEntry]]  # see coordinate_holders
    by_key: dict[str, ModelEntry]  # model_key -> model
    keys: dict[int, str]  # scan id -> model_key (of the scan as catalogued: `scans` are public copies)

    @classmethod
    def from_scans(cls, scans: list[StoredScan]) -> Site:
        """`scans` must be newest first, as `Catalog.scans()` returns them."""
        keys = {scan.scan_id: model_key(scan) for scan in scans}
        public_scans = [public(scan) for scan in scans]
        models = collect_models(public_scans, keys)
        families = group_families(models)
        return cls(public_scans, models, families, unique_slugs(sorted(families)), coordinate_holders(models),
                   {m.key: m for m in models}, keys)

    def shared_count(self, weight: SuperWeight) -> int:
        """How many catalog models hold a candidate at the weight's (layer, row, col)."""
        return len(self.holders.get(coordinate_of(weight), []))

    def shared(self) -> list[tuple[Coordinate, list[ModelEntry]]]:
        """Coordinates held by two or more catalog models, most shared first: each gets a page."""
        return _most_shared((c, models) for c, models in self.holders.items())

    def shared_in(self, family: str) -> list[tuple[Coordinate, list[ModelEntry]]]:
        """Coordinates held by two or more of the family's models, most shared first: the family's cross-model finds."""
        return _most_shared((c, [m for m in models if m.family == family]) for c, models in self.holders.items())

    def model_for(self, scan: StoredScan) -> ModelEntry | None:
        return self.by_key.get(self.keys[scan.scan_id])


def _most_shared(items: Iterable[tuple[Coordinate, list[ModelEntry]]]) -> list[tuple[Coordinate, list[ModelEntry]]]:
    return sorted(((c, models) for c, models in items if len(models) > 1), key=lambda item: (-len(item[1]), item[0]))


def coordinate_of(weight: SuperWeight) -> Coordinate:
    return (weight.layer, weight.row, weight.col)


def coordinate_slug(coordinate: Coordinate) -> str:
    """`l1-2533-7890`: the file name of a coordinate's page (numbers only, so never a collision)."""
    return "l{}-{}-{}".format(*coordinate)


def weight_anchor(weight: SuperWeight) -> str:
    """The id of a weight's row on its model's page; experts of one MoE layer share a coordinate."""
    expert = "" if weight.expert is None else f"-e{weight.expert}"
    return f"w-{coordinate_slug(coordinate_of(weight))}{expert}"


def model_key(scan: StoredScan) -> str:
    """The catalog's source: a repo id (`org/name:FILE.gguf` for one GGUF file of it) or a resolved path."""
    return scan.source


def display_name(source: str) -> str:
    """A Hub source as it is; a local path by its last part (the .gguf file or checkpoint directory name)."""
    return PurePath(source).name or source if is_local_path(source) else source


def is_local_path(source: str) -> bool:
    return source.startswith(("/", "~", "."))


ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])~?/(?:[^\s/'\"<>]+/)+(?=[^\s/'\"<>]*)")


def scrub(text: str | None) -> str | None:
    """`text` with the directories of each absolute path cut off (`/home/me/m/model.gguf` is `model.gguf`)."""
    return ABSOLUTE_PATH.sub("", text) if text else text


def public(scan: StoredScan) -> StoredScan:
    """The scan as a published page may show it: no local path in its source, error or model facts."""
    source = display_name(scan.source)
    result = scan.result and replace(scan.result, model=replace(scan.result.model, source=source))
    return replace(scan, source=source, error=scrub(scan.error), result=result)


def collect_models(scans: list[StoredScan], keys: dict[int, str]) -> list[ModelEntry]:
    """One entry per model with a successful scan; `scans` must be newest first."""
    by_key: dict[str, list[StoredScan]] = defaultdict(list)
    for scan in scans:
        by_key[keys[scan.scan_id]].append(scan)
    entries = []
    for key, history in by_key.items():
        latest = next((s for s in history if s.status == STATUS_OK and s.result is not None), None)
        if latest is not None:
            entries.append(ModelEntry(key, latest.source, "", latest, history))
    entries.sort(key=lambda m: (m.name.lower(), m.key))
    slugs = unique_slugs([m.key for m in entries], [m.name for m in entries])
    for entry in entries:
        entry.slug = slugs[entry.key]
    return entries


def group_families(models: list[ModelEntry]) -> dict[str, list[ModelEntry]]:
    """Family name -> its models (in `models` order), families by name ignoring case."""
    grouped: dict[str, list[ModelEntry]] = defaultdict(list)
    for model in models:
        grouped[model.family].append(model)
    return dict(sorted(grouped.items(), key=lambda item: item[0].lower()))


def coordinate_holders(models: list[ModelEntry]) -> dict[Coordinate, list[ModelEntry]]:
    """(layer, row, col) -> the models with a super weight candidate there, in `models` order."""
    holders: dict[Coordinate, list[ModelEntry]] = defaultdict(list)
    for model in models:
        for coordinate in dict.fromkeys(map(coordinate_of, model.result.super_weights)):
            holders[coordinate].append(model)
    return dict(holders)


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


def when(moment: datetime) -> str:
    """The catalog's times are aware UTC already; `astimezone` keeps the label true for any aware time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

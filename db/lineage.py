"""Provenance from super weights: fine-tunes keep their base model's super weights (Yu et al. 2024),
so the set of confirmed coordinates (layer, row, col) is a fingerprint. Models are ranked by how
many coordinates they share with the one asked about.
"""

from __future__ import annotations

from dataclasses import dataclass

Coordinate = tuple[int, int, int]  # (layer, row, col)


@dataclass(frozen=True)
class ModelKey:
    """A catalog model as lineage shows it."""

    source: str
    repo_id: str | None
    revision: str | None
    family: str | None
    base_model: str | None


@dataclass
class LineageMatch:
    """A model sharing confirmed super-weight coordinates with the query model."""

    model: ModelKey
    shared: list[Coordinate]  # sorted
    jaccard: float  # shared / union of both coordinate sets
    declared: str | None  # "base" if this is the query's declared base_model, "fine-tune" if it declares the query as its base

    @property
    def overlap(self) -> int:
        """How many coordinates are shared: derived, so it cannot disagree with `shared`."""
        return len(self.shared)


def rank(query: ModelKey, mine: set[Coordinate], others: dict[ModelKey, set[Coordinate]]) -> list[LineageMatch]:
    """Models sharing at least one coordinate, most shared first (then Jaccard, then name); a declared
    base or fine-tune is listed even when it shares none, since that contradicts the model card.
    """
    matches = [_match(query, key, mine, theirs) for key, theirs in others.items() if mine & theirs or _declared(query, key)]
    return sorted(matches, key=lambda m: (-m.overlap, -m.jaccard, m.model.source))


def _match(query: ModelKey, key: ModelKey, mine: set[Coordinate], theirs: set[Coordinate]) -> LineageMatch:
    shared = sorted(mine & theirs)
    union = len(mine | theirs)
    return LineageMatch(key, shared, len(shared) / union if union else 0.0, _declared(query, key))


def _declared(query: ModelKey, other: ModelKey) -> str | None:
    if query.base_model and query.base_model in _names(other):
        return "base"
    if other.base_model and other.base_model in _names(query):
        return "fine-tune"
    return None


def _names(key: ModelKey) -> set[str]:
    return {name for name in (key.source, key.repo_id) if name}

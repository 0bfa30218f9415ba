"""Find Hub models to survey: `HfApi.list_models` filtered by author, task and library.

Each hit carries its current commit sha, so the driver can skip a model already catalogued at
that revision before downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.errors import BadOptionError, first_line
from catalog.sources import canonical, is_local, split_gguf, split_revision

SORTS = ("downloads", "last_modified", "likes", "trending_score", "created_at")


@dataclass(frozen=True)
class HubQuery:
    search: str | None = None  # substring of the repo id ("" or None: any)
    author: str | None = None
    task: str | None = "text-generation"  # the Hub's pipeline_tag
    library: str | None = "transformers"
    sort: str = "downloads"  # descending
    limit: int = 20

    def __post_init__(self) -> None:  # checked once, when built
        if self.sort not in SORTS:
            raise BadOptionError("--sort", f"unknown sort {self.sort!r}; use one of {', '.join(SORTS)}.")
        if self.limit < 1:
            raise BadOptionError("--limit", "must be at least 1.")


@dataclass(frozen=True)
class Candidate:
    """A model to survey. `revision` is the commit sha when known before downloading."""

    spec: str
    revision: str | None = None
    downloads: int | None = None


def discover(query: HubQuery, api=None) -> list[Candidate]:
    """The Hub's models matching `query`, most downloaded (or most recent) first."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    from huggingface_hub.errors import OfflineModeIsEnabled

    found = api.list_models(
        search=query.search or None,
        author=query.author,
        pipeline_tag=query.task,
        filter=query.library,
        sort=query.sort,
        limit=query.limit,
        expand=["sha", "downloads", "pipeline_tag", "library_name"],
    )
    try:
        return [Candidate(m.id, m.sha, m.downloads) for m in found]
    except OfflineModeIsEnabled as exc:
        raise BadOptionError("--from-hub",
                             "HF_HUB_OFFLINE is set and discovery needs the Hub; unset it, or name the MODELs instead.") from exc
    except Exception as exc:  # HTTP errors, DNS, refused connections: huggingface_hub raises many types
        raise BadOptionError("--from-hub",
            f"cannot list the Hub's models ({first_line(exc)[:200]}); check the network, HF_ENDPOINT and HF_TOKEN.") from exc


def from_specs(specs: list[str]) -> list[Candidate]:
    """Models named on the command line, local paths resolved (`canonical`); an `@<40-hex sha>`
    pins a Hub revision up front."""
    return [Candidate(canonical(spec), None if is_local(spec) else _commit_sha(split_revision(split_gguf(spec)[0])[1])) for spec in specs]


def _commit_sha(revision: str | None) -> str | None:
    """The revision when it is a full commit sha; a branch or tag must be resolved by downloading."""
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    return None

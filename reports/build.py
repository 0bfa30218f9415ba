"""Build the static site: `build_site(scans, out_dir) -> SiteSummary`.

The site is written to a sibling temporary directory and moved into place at the end, so a
failed build leaves the previous site (or nothing) and never half a site. An existing `out_dir`
is only replaced when it is empty or holds a site built here (its `MARKER` file): `--out ~`
must not delete a home directory. A build removes only directories it made itself, under names
no one else has (`our_directory`); a symlinked `out_dir` stays a symlink (the site replaces what
it points to).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.bccache import Bucket

from catalog import settings
from catalog.errors import BadOptionError, UnwritableOutputError
from catalog.terminal import ratio
from db.reads import StoredScan
from reports.contexts import Page
from reports.downloads import write_catalog_downloads, write_downloads
from reports.formats import format_number, format_ratio
from reports.pages import Provenance, coordinate_page, family_page, index_page, model_page
from reports.search import index_script
from reports.site import Site, coordinate_slug, when

MARKER = ".superweights-report"
PACKAGE = files("reports")


@dataclass
class SiteSummary:
    """What a build wrote."""

    out_dir: Path
    index: Path  # the front page: open it in a browser
    pages: int  # HTML pages written
    models: int
    families: int
    scans: int


def build_site(scans: list[StoredScan], out_dir: Path, now: datetime | None = None) -> SiteSummary:
    """Render every page of the catalog's scans (newest first, as `Catalog.scans()` returns them) into
    `out_dir`, replacing a site built there before."""
    out_dir = Path(out_dir)
    target = out_dir.resolve()  # through a symlink: the link stays, the site goes where it points
    check_replaceable(target)
    site = Site.from_scans(list(scans))
    prov = Provenance(when(now or datetime.now(UTC)), package_version())
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with our_directory(target, "new") as staging:
            pages = write_site(site, prov, staging)
            replace_dir(staging, target)
    except OSError as exc:
        raise UnwritableOutputError("--out", out_dir, exc.strerror or str(exc)) from exc
    return SiteSummary(out_dir, out_dir / "index.html", pages, len(site.models), len(site.families), len(site.scans))


def write_site(site: Site, prov: Provenance, root: Path) -> int:
    """Write pages, downloads, search index and assets under `root`; return the page count."""
    env = environment()
    for directory in ("models", "families", "coordinates"):
        (root / directory).mkdir()
    render(env, "index.html", index_page(site, prov), root / "index.html")
    for family, models in site.families.items():
        render(env, "family.html", family_page(site, family, models, prov), root / "families" / f"{site.family_slugs[family]}.html")
    for model in site.models:
        render(env, "model.html", model_page(site, model, prov), root / "models" / f"{model.slug}.html")
        write_downloads(model, root / "models")
    shared = site.shared()
    for coordinate, holders in shared:
        render(env, "coordinate.html", coordinate_page(site, coordinate, holders, prov),
               root / "coordinates" / f"{coordinate_slug(coordinate)}.html")
    write_catalog_downloads(site, root / "downloads")
    (root / "search-index.js").write_text(index_script(site), encoding="utf-8")
    shutil.copytree(Path(str(PACKAGE / "assets")), root / "assets")
    (root / MARKER).write_text("built by `superweights report`; this directory is replaced on rebuild\n")
    return 1 + len(site.families) + len(site.models) + len(shared)


def environment() -> Environment:
    """Jinja2 with autoescape on for every template: catalog strings are untrusted."""
    env = Environment(
        loader=FileSystemLoader(str(PACKAGE / "templates")), autoescape=select_autoescape(default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, bytecode_cache=TemplateCache(),
    )
    env.filters.update(num=format_number, ratio=format_ratio, ratio_value=ratio)
    return env


class TemplateCache(FileSystemBytecodeCache):
    """The templates compiled once, under $SUPERWEIGHTS_HOME/cache/templates: compiling them is a
    third of a small report's time. Jinja checks each entry against the template's source and its
    own version; a cache that cannot be read or written is skipped, never a failed report."""

    def __init__(self) -> None:
        super().__init__(str(settings.home() / "cache" / "templates"))

    def load_bytecode(self, bucket: Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except OSError:
            pass

    def dump_bytecode(self, bucket: Bucket) -> None:
        try:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError:
            pass


def render(env: Environment, template: str, context: Page, path: Path) -> None:
    path.write_text(env.get_template(template).render(page=context), encoding="utf-8")


def check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).exists())):
        raise BadOptionError(
            str(out_dir), "exists and is not a report built by `superweights report`; choose a new or empty directory"
        )


@contextmanager
def our_directory(target: Path, role: str) -> Iterator[Path]:
    """A new directory next to `target`, made by this build and removed at the end with what is in it.

    Its name is new (`mkdtemp`), so nothing of the user's (a `.site-old` of their own) is touched.
    """
    path = Path(tempfile.mkdtemp(prefix=f".{target.name}-{role}-", dir=target.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old site there is moved aside into a directory of this build
    first (and back if the move fails), then removed with it."""
    with our_directory(target, "old") as aside:
        old = aside / target.name
        if target.exists():
            target.rename(old)
        try:
            new.rename(target)
        except OSError:
            if old.exists():
                old.rename(target)
            raise
        target.chmod(0o755)


def package_version() -> str:
    try:
        return version("superweight-catalog")
    except PackageNotFoundError:
        return "unknown"

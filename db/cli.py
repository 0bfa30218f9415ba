"""The catalog's commands (`db upgrade`, `sql`, `export`, `show`, `lineage`) and the `scan` sink
that saves each scan, registered through the `superweights.plugins` entry point.

Each command calls one library function; their typed errors reach `catalog.cli.main`. The
modules behind the commands are imported when one runs, not when the commands are registered:
`superweights --help` or `sql` should not pay for the ORM, DuckDB or Alembic they do not use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from catalog import keeplist
from catalog.cli import add_scan_sink
from catalog.errors import BadOptionError
from catalog.options import NON_NEGATIVE
from catalog.result import CONFIRMED
from catalog.terminal import stdout_console
from db.limits import QueryLimits

if TYPE_CHECKING:
    from catalog.result import ScanResult
    from catalog.sources import ResolvedSource

out = stdout_console()
FORMATS = ("table", "csv", "json")  # of `sql`

DB_HELP = ("Catalog URL: sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB. "
           "[default: $SUPERWEIGHTS_DB, else $SUPERWEIGHTS_HOME/catalog.db]")
db_option = click.option("--db", "url", metavar="URL", help=DB_HELP)


def register(cli: click.Group) -> None:
    for command in (db_group, sql, export, show, lineage):
        cli.add_command(command)
    add_scan_sink(CatalogSink())


@click.group("db")
def db_group() -> None:
    """Manage the catalog database."""


@db_group.command("upgrade")
@db_option
@click.option("--revision", default="head", show_default=True, help="Alembic revision to migrate to.")
def db_upgrade(url: str | None, revision: str) -> None:
    """Create or migrate the catalog schema (servers are never migrated implicitly)."""
    from db.schema import upgrade

    display, at = upgrade(url, revision)
    click.echo(f"{display}: schema at revision {at}", err=True)


@db_group.command("save")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@db_option
def db_save(files: tuple[Path, ...], url: str | None) -> None:
    """Save scan JSON FILES into the catalog: from `scan --no-save --json`, or kept when a save failed.

    Every file is read before any is saved; a scan already in the catalog (same model, revision and
    config) is replaced, as a new scan of it would be."""
    from db.repository import Catalog
    from db.scanfile import read_scan, scan_times

    results = [(path, read_scan(path)) for path in files]
    catalog = Catalog(url)
    for path, result in results:
        note = catalog.known_as(result.model)
        scan_id = catalog.save(result, **scan_times(result, path))
        click.echo("\n".join(filter(None, [note, f"saved {path} as scan {scan_id} to {catalog.display}"])), err=True)


@click.command()
@click.argument("query")
@db_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--timeout", type=NON_NEGATIVE, default=QueryLimits.timeout, show_default=True,
              help="Stop the query after this many seconds (0: no limit).")
@click.option("--max-rows", type=click.IntRange(min=0), default=QueryLimits.max_rows, show_default=True,
              help="Return at most this many rows (0: no limit).")
def sql(query: str, url: str | None, fmt: str, timeout: float, max_rows: int) -> None:
    """Run one read-only SQL QUERY over the catalog (DuckDB dialect; tables: models, scans,
    layer_stats, super_weights, ablations)."""
    from db import render
    from db.query import run_sql

    result = run_sql(url, query, QueryLimits(timeout or None, max_rows or None))
    if fmt == "table":
        out.print(render.query_table(result))
    else:
        click.echo(render.query_csv(result) if fmt == "csv" else render.query_json(result), nl=False)
    if result.cut:
        click.echo(f"note: only the first {max_rows} rows; raise --max-rows (0: no limit) or add a LIMIT.", err=True)


@click.command()
@click.argument("model", required=False)
@click.option("--parquet", "directory", type=click.Path(file_okay=False, path_type=Path), help="Write one Parquet file per table here.")
@click.option("--keep-list", "fmt", type=click.Choice(list(keeplist.FORMATS)),
              help="Print what a quantizer of MODEL should keep in full precision, in this tool's terms.")
@click.option("--verdict", type=click.Choice(keeplist.VERDICT_CHOICES), default=CONFIRMED, show_default=True,
              help="Keep the confirmed super weights, or every candidate.")
@click.option("--check-gguf", "gguf", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --keep-list llama.cpp: refuse tensor names this GGUF file does not have.")
@db_option
def export(model: str | None, directory: Path | None, fmt: str | None, verdict: str, gguf: Path | None, url: str | None) -> None:
    """Export the catalog's tables (--parquet DIR), or MODEL's keep list for a quantizer (--keep-list FORMAT MODEL)."""
    if (directory is None) == (fmt is None) or (fmt is None) != (model is None):
        raise BadOptionError("export", "give either --parquet DIR, or --keep-list FORMAT and a MODEL.")
    if gguf is not None and fmt != "llama.cpp":
        raise BadOptionError("--check-gguf", "checks llama.cpp tensor names; use it with --keep-list llama.cpp.")
    if directory is not None:
        from db.query import export_parquet

        for path in export_parquet(url, directory):
            click.echo(f"wrote {path}", err=True)
        return
    from db.reads import CatalogReader

    keep = keeplist.keep_list(CatalogReader(url).latest(model).result, fmt, verdict)
    if gguf is not None:
        keeplist.check_gguf(keep, gguf)
    click.echo(keep.text, nl=False)
    if not keep.weights:
        kept = "super weight candidate" if verdict == keeplist.ALL else f"{verdict} super weight"
        click.echo(f"{model}: its latest scan has no {kept}; the keep list is empty (nothing to hold out).", err=True)


@click.command()
@click.argument("model")
@db_option
def show(model: str, url: str | None) -> None:
    """Print MODEL's catalog entry (MODEL: a scanned source or Hub repo id)."""
    from db import render
    from db.reads import CatalogReader

    out.print(render.show(CatalogReader(url).show(model)))


@click.command()
@click.argument("model")
@db_option
def lineage(model: str, url: str | None) -> None:
    """List catalog models that share MODEL's confirmed super-weight coordinates, most shared first.

    Fine-tunes keep their base model's super weights: the coordinates are a provenance fingerprint.
    """
    from db import render
    from db.reads import CatalogReader

    matches = CatalogReader(url).lineage(model)
    if not matches:
        click.echo(f"{model}: no other catalog model shares its confirmed super weights (or it has none), "
                   "and no declared base or fine-tune is in the catalog", err=True)
        return
    out.print(render.lineage(model, matches))


class CatalogSink:
    """Saves each `scan` into the catalog (unless --no-save); checks the catalog before scanning."""

    options = [
        click.Option(["--db"], metavar="URL", help=DB_HELP),
        click.Option(["--no-save"], is_flag=True, help="Do not save the scan in the catalog."),
        click.Option(["--skip-existing"], is_flag=True, help="Skip the scan when the catalog has it (same source, revision and config)."),
    ]

    def existing(self, source: ResolvedSource, config_hash: str, params: dict[str, Any]) -> str | None:
        if params["no_save"]:
            return None
        from db.repository import Catalog

        catalog = Catalog(params["db"])  # a bad or unreachable catalog fails here, before a long scan
        if params["skip_existing"] and catalog.has_scan(source.source, source.revision, config_hash, fingerprint=source.fingerprint):
            return (f"{source.spec}: already in the catalog {catalog.display} with this revision and config; "
                    "skipped (drop --skip-existing to scan again)")
        return None

    def save(self, result: ScanResult, params: dict[str, Any], started_at: datetime) -> str:
        if params["no_save"]:
            return "not saved (--no-save)"
        from db.errors import CatalogError, UnsavedScanError
        from db.repository import Catalog
        from db.scanfile import keep

        try:
            catalog = Catalog(params["db"])  # opened again: the scan in between may have lasted hours
            note = catalog.known_as(result.model)
            scan_id = catalog.save(result, started_at=started_at, finished_at=datetime.now(UTC))
        except CatalogError as exc:  # locked, unreachable, disk full: the scan itself is not lost
            raise UnsavedScanError(exc, keep(result)) from exc
        return "\n".join(filter(None, [note, f"saved scan {scan_id} to {catalog.display}"]))

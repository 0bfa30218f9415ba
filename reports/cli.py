"""`superweights report`: build the static HTML directory from the catalog (a plugin, see catalog.cli)."""

from __future__ import annotations

from pathlib import Path

import click

from reports.build import build_site


def register(cli: click.Group) -> None:
    cli.add_command(report)


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the site to (replaced if it holds an earlier report).")
@click.option("--db", "db_url", default=None, metavar="URL",
              help="Catalog URL: sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB. "
                   "[default: $SUPERWEIGHTS_DB, else $SUPERWEIGHTS_HOME/catalog.db]")
def report(out_dir: Path, db_url: str | None) -> None:
    """Build a static, searchable HTML site of the catalog into OUT: open OUT/index.html, or serve it anywhere."""
    from db.repository import Catalog  # imported here so other commands do not load SQLAlchemy

    summary = build_site(Catalog(db_url, create=False).scans(), out_dir)
    click.echo(
        f"wrote {summary.pages} pages ({summary.models} models, {summary.families} families, "
        f"{summary.scans} scans) to {summary.out_dir}"
    )
    click.echo(f"file://{summary.index.resolve()}")

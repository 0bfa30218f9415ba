"""`superweights report`: build the static HTML directory from the catalog (a plugin, see catalog.cli)."""

from __future__ import annotations

from pathlib import Path

import click

from db.cli import db_option


def register(cli: click.Group) -> None:
    cli.add_command(report)


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the site to (replaced if it holds an earlier report).")
@db_option
def report(out_dir: Path, url: str | None) -> None:
    """Build a static, searchable HTML site of the catalog into OUT: open OUT/index.html, or serve it anywhere."""
    from db.reads import CatalogReader  # imported here: `superweights --help` needs neither
    from reports.build import build_site

    summary = build_site(CatalogReader(url).scans(), out_dir)
    click.echo(
        f"wrote {summary.pages} pages ({summary.models} models, {summary.families} families, "
        f"{summary.scans} scans) to {summary.out_dir}"
    )
    click.echo(f"file://{summary.index.resolve()}")

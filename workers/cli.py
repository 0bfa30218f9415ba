"""`superweights survey`: scan many models on a Ray cluster into the catalog (plugin of `catalog.cli`)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from catalog.cli import options_from, quiet_transformers, scan_config_options
from catalog.errors import SurveyFailedError
from catalog.options import NON_NEGATIVE
from db.cli import db_option
from workers.discovery import SORTS, Candidate, HubQuery, discover, from_specs

if TYPE_CHECKING:
    from workers.driver import Counts, Survey, SurveySummary

console = Console(stderr=True)


@click.command()
@click.argument("models", nargs=-1)
@click.option("--from-hub", "query", metavar="QUERY", help="Also survey Hub models whose id contains QUERY ('' for any).")
@click.option("--author", help="Hub discovery: only this user or organisation.")
@click.option("--task", default="text-generation", show_default=True, help="Hub discovery: pipeline tag ('' for any).")
@click.option("--library", default="transformers", show_default=True, help="Hub discovery: library tag ('' for any).")
@click.option("--sort", type=click.Choice(SORTS), default="downloads", show_default=True, help="Hub discovery order (descending).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Hub discovery: at most this many models.")
@click.option("--ray-address", metavar="ADDR", help="A running Ray cluster (e.g. ray://head:10001 or auto); default: start one here.")
@click.option("--gpus-per-scan", type=NON_NEGATIVE, default=1.0, show_default=True,
              help="GPUs per scan worker (fractional allowed); ignored without GPUs.")
@click.option("--cpus-per-scan", type=NON_NEGATIVE, default=1.0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), help="Scan workers [default: as many as the cluster's GPUs (else CPUs) fit].")
@click.option("--prefetch", type=click.IntRange(min=0), default=1, show_default=True, help="Models downloaded ahead per scan worker.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True, help="Re-runs of a model whose worker died mid-scan.")
@click.option("--timeout", type=NON_NEGATIVE, default=3600, show_default=True,
              help="Seconds per scan, then its worker is killed and the model fails (0: none).")
@click.option("--skip-failed", is_flag=True, help="Also skip models whose scan at this revision and config failed before.")
@db_option
@scan_config_options
def survey(models: tuple[str, ...], query: str | None, author: str | None, task: str, library: str, sort: str, limit: int,
           ray_address: str | None, gpus_per_scan: float, cpus_per_scan: float, workers: int | None, prefetch: int,
           retries: int, timeout: float | None, skip_failed: bool, url: str | None, **scan: Any) -> None:
    """Scan MODELs (Hub ids, directories, .gguf files) and/or Hub models found by --from-hub, on Ray.

    Models already in the catalog at the same revision and scan config are skipped; each result is
    saved as it arrives, so an interrupted survey continues where it stopped when run again.
    """
    from workers.driver import Survey, SurveySettings, start_ray  # Ray, torch: only when surveying

    quiet_transformers()
    options = options_from(scan)
    from db.repository import Catalog  # imported here: `superweights --help` needs no ORM

    catalog = Catalog(url)
    candidates = from_specs(list(models))
    if query is not None or author:
        hub = HubQuery(query, author, task or None, library or None, sort, limit)
        candidates += discover(hub)
    if not candidates:
        raise click.UsageError("nothing to survey: name MODELs or use --from-hub QUERY / --author.")
    settings = SurveySettings(gpus_per_scan, cpus_per_scan, workers, prefetch, retries, timeout or None, skip_failed, options.allow_pickle)
    start_ray(ray_address)
    summary = run_with_progress(Survey(catalog, options, settings), candidates)
    console.print(summary_table(summary))
    if summary.interrupted:
        sys.exit(130)
    if summary.rows and summary.count("failed") == len(summary.rows):
        raise SurveyFailedError(len(summary.rows))


def run_with_progress(survey: Survey, candidates: list[Candidate]) -> SurveySummary:
    """The survey under a live bar (done, failed, skipped, running, ETA); its log lines above the bar."""
    columns = (
        TextColumn("[bold]survey"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[green]{task.fields[scanned]} done [red]{task.fields[failed]} failed "
                   "[dim]{task.fields[skipped]} skipped [cyan]{task.fields[running]} running"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("survey", total=None, scanned=0, failed=0, skipped=0, running=0)

        def update(c: Counts) -> None:
            progress.update(bar, total=c.total, completed=c.finished, **{k: getattr(c, k) for k in ("scanned", "failed", "skipped",
                "running")})

        survey.on_update = update
        with _logging_to(console):
            return survey.run(candidates)


def summary_table(summary: SurveySummary) -> Table:
    title = (f"Survey: {summary.count('scanned')} scanned, {summary.count('failed')} failed, {summary.count('skipped')} skipped "
             f"in {summary.seconds:.0f}s on {summary.workers} workers" + (" (interrupted)" if summary.interrupted else ""))
    table = Table(title=title)
    for name in ("model", "status", "revision", "super weights", "seconds", "tries", "node", "error"):
        table.add_column(name, justify="right" if name in ("super weights", "seconds", "tries") else "left", overflow="fold")
    style = {"scanned": "green", "failed": "red", "skipped": "dim"}
    for r in summary.rows:
        table.add_row(
            r.spec, r.status, (r.revision or "")[:12], "" if r.super_weights is None else str(r.super_weights),
            "" if r.seconds is None else f"{r.seconds:.1f}", str(r.attempts), (r.node or "")[:8], r.error or "", style=style[r.status],
        )
    return table


class _logging_to:
    """Route the survey's log lines to the rich console for the duration of a block."""

    def __init__(self, console: Console) -> None:
        self.handler = RichHandler(console=console, show_path=False, markup=False)
        self.logger = logging.getLogger("superweights.survey")

    def __enter__(self) -> None:
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)


def register(cli: click.Group) -> None:
    cli.add_command(survey)

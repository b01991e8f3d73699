"""`flask --app app history ...`: init-db, import, export."""
from __future__ import annotations

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from history import arrivals
from history import jobs
from history import thumbnails
from history.db import connection
from history.db import init_db_command
from history.models import known_status
from history.models import STATUSES

history_cli = AppGroup("history", help="Manage the job store.")

history_cli.add_command(init_db_command)


@history_cli.command("import")
@click.argument("source", type=click.File("r"))
def import_command(source):
    """Import a JSON array of records (a file, or - for standard input), upserting by prompt_id."""
    try:
        records = json.load(source)
    except json.JSONDecodeError as error:
        raise click.ClickException(f"{source.name} is not JSON: {error}") from None
    try:
        with connection():
            report = jobs.import_records(records, current_app.config["STUDIO"].output_dir)
    except jobs.InvalidRecord as error:
        raise click.ClickException(str(error)) from None
    for refused in report.refused:
        click.echo(f"refused record {refused['index']} ({refused['prompt_id']}): {refused['error']}", err=True)
    click.echo(report.summary())
    # Their card thumbnails now, so the first page that lists them does not wait for Pillow.
    refused_at = {refused["index"] for refused in report.refused}
    made = arrivals.make_for([record for index, record in enumerate(records) if index not in refused_at],
                             current_app.config["STUDIO"])
    if made:
        click.echo(f"made {made} thumbnails")
    if report.refused:
        sys.exit(1)


@history_cli.command("export")
@click.option("--status", "statuses", multiple=True, help="only these statuses (repeatable)")
@click.option("--output", "-o", type=click.File("w"), default="-", help="file to write (default standard output)")
def export_command(statuses, output):
    """Export records as a JSON array in the API's shape (import takes it back unchanged)."""
    chosen = []
    for given in statuses:
        status = known_status(given)
        if status is None:
            raise click.BadParameter(f"unknown status {given!r}; use one of {', '.join(STATUSES)}", param_hint="--status")
        chosen.append(status)
    with connection():
        output.write("[")
        for index, record in enumerate(jobs.export_records(tuple(chosen) or None)):
            output.write(("," if index else "") + "\n" + json.dumps(record))
        output.write("\n]\n")


@history_cli.command("prune-thumbnails")
@click.option("--max-age-days", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="remove thumbnails not used for this many days")
@click.option("--max-mb", type=click.FloatRange(min=0), default=None, help="then the oldest until this many MB remain")
def prune_thumbnails(max_age_days, max_mb):
    """Trim the thumbnail cache (a removed thumbnail is made again when next shown)."""
    cache_dir = current_app.config["STUDIO"].thumbnail_dir
    max_bytes = int(max_mb * 1024 * 1024) if max_mb is not None else None
    removed, freed = thumbnails.prune(cache_dir, max_age=max_age_days * 86400, max_bytes=max_bytes)
    click.echo(f"removed {removed} thumbnails ({freed:,} bytes) from {cache_dir}")


def init_app(app) -> None:
    """Add the `history` command group."""
    app.cli.add_command(history_cli)

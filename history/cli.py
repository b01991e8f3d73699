"""`flask --app app history ...`: init-db, import, export."""
from __future__ import annotations

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from history import jobs
from history.db import connection
from history.db import migrate
from history.models import STATUS_ALIASES
from history.models import STATUSES

history_cli = AppGroup("history", help="Manage the job store.")


@history_cli.command("init-db")
def init_db():
    """Create or upgrade the tables."""
    with connection():
        version = migrate()
    click.echo(f"Database ready at schema version {version}")


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
    if report.refused:
        sys.exit(1)


@history_cli.command("export")
@click.option("--status", "statuses", multiple=True, help="only these statuses (repeatable)")
@click.option("--output", "-o", type=click.File("w"), default="-", help="file to write (default standard output)")
def export_command(statuses, output):
    """Export records as a JSON array in the API's shape (import takes it back unchanged)."""
    chosen = []
    for status in statuses:
        status = STATUS_ALIASES.get(status, status)
        if status not in STATUSES:
            raise click.BadParameter(f"unknown status {status!r}; use one of {', '.join(STATUSES)}", param_hint="--status")
        chosen.append(status)
    with connection():
        output.write("[")
        for index, record in enumerate(jobs.export_records(tuple(chosen) or None)):
            output.write(("," if index else "") + "\n" + json.dumps(record))
        output.write("\n]\n")


def init_app(app) -> None:
    """Add the `history` command group."""
    app.cli.add_command(history_cli)

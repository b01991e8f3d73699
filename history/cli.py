"""The command line: `studio-history ...` (and `python -m history`), and `flask --app app history ...`.

`studio-history serve` runs the server; every command of the `history` group (init-db, import, export,
prune-thumbnails, ...) is also a `studio-history` command, run inside the app the STUDIO_* settings describe.
"""
from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
import signal
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from history import arrivals
from history import config
from history import jobs
from history import retention
from history import thumbnails
from history.config import ConfigError
from history.config import parse_age
from history.db import connection
from history.db import init_db_command
from history.executors.base import ExecutorUnavailable
from history.executors.comfyui import ComfyUIExecutor
from history.models import HISTORY_STATUSES
from history.models import STATUSES
from history.models import iso
from history.models import known_status
from history.studio import studio
from history.workers import RunnerRefused
from history.web.login import api_token_command

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
            report = jobs.import_records(records, current_app.config["STUDIO"].output_roots)
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


@history_cli.command("prune")
@click.option("--older-than", required=True, metavar="AGE", help="remove jobs queued longer ago than this: 30d, 12h, 2w")
@click.option("--status", "statuses", multiple=True, help="only jobs of these statuses (repeatable; default completed, error, stalled)")
@click.option("--workflow", "workflow_id", default=None, help="only jobs of this workflow id")
@click.option("--include-starred", is_flag=True, help="remove starred jobs too (they are kept otherwise)")
@click.option("--dry-run", is_flag=True, help="list what would go and the bytes it would free; remove nothing")
def prune_command(older_than, statuses, workflow_id, include_starred, dry_run):
    """Remove old jobs and their files by rule; starred jobs are kept unless --include-starred."""
    try:
        age = parse_age(older_than)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--older-than") from None
    chosen = []
    for given in statuses:
        status = known_status(given)
        if status not in HISTORY_STATUSES:
            raise click.BadParameter(f"{given!r}: use one of {', '.join(HISTORY_STATUSES)}", param_hint="--status")
        chosen.append(status)
    if workflow_id is not None and not jobs.WORKFLOW_ID_PATTERN.match(workflow_id):
        raise click.BadParameter(f"{workflow_id!r} is not a workflow id", param_hint="--workflow")
    rule = retention.Rule(tuple(chosen) or HISTORY_STATUSES, age, workflow_id, include_starred)
    output_root = current_app.config["STUDIO"].output_roots
    with connection():
        planned = retention.plan([rule], output_root)
        sizes = {job.prompt_id: size for job, size in planned}

        def line(verb: str, job) -> str:
            return f"{verb} {job.prompt_id}  {job.status:<9} {job.workflow_id}  queued {iso(job.queued_at)}  {sizes[job.prompt_id]:,} bytes"

        if dry_run:
            for job, _size in planned:
                click.echo(line("would remove", job))
            click.echo(f"{len(planned)} jobs would be removed, freeing {sum(sizes.values()):,} bytes (dry run: nothing removed)")
            return
        report = retention.prune(planned, output_root, include_starred)
    bus = current_app.extensions["studio"].bus  # with PostgreSQL, the servers' pages hear of it
    for record in report.deleted_jobs:
        bus.publish("job.deleted", record)
    deleted = set(report.deleted)
    for job, _size in planned:
        if job.prompt_id in deleted:
            click.echo(line("removed", job))
    for failure in report.failed:
        click.echo(f"kept {failure['prompt_id']}: {failure['error']}", err=True)
    click.echo(f"{len(report.deleted)} jobs removed, {report.files_removed} files, {report.bytes_freed:,} bytes freed")
    if report.failed:
        sys.exit(1)


@history_cli.command("import-comfyui")
@click.argument("url", required=False)
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="history entries asked for per request")
def import_comfyui_command(url, page_size):
    """Read a ComfyUI server's whole /history into the store (default: STUDIO_COMFYUI_URL), adding what it lacks."""
    configured = current_app.config["STUDIO"].comfyui_urls
    if url is None and len(configured) > 1:
        raise click.UsageError(f"STUDIO_COMFYUI_URL names {len(configured)} servers: give the one to read ({', '.join(configured)})")
    url = (url or (configured[0] if configured else "")).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise click.UsageError("give the ComfyUI server's URL (http://127.0.0.1:8188) or set STUDIO_COMFYUI_URL")
    # Only HTTP: no websocket, and nothing of a running server's jobs is touched.
    reader = ComfyUIExecutor(studio().runner, url)
    try:
        taken, refused = reader.import_history(page_size)
    except ExecutorUnavailable as error:
        raise click.ClickException(str(error)) from None
    for entry in refused:
        click.echo(f"refused {entry['prompt_id']}: {entry['error']}", err=True)
    click.echo(f"took {taken} prompts from {url}, refused {len(refused)}")
    if refused:
        sys.exit(1)


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


# ---- studio-history -------------------------------------------------------------------------------

class StudioError(click.ClickException):
    """A refusal or a bad setting: one line on standard error, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"studio-history: {self.message}", err=True)


def settings_help() -> str:
    """The STUDIO_* settings as a help epilog (click keeps a paragraph that starts with \\b as it is)."""
    rows = [f"  {name:<24} {default:<28} {meaning}" for name, default, meaning in config.help_rows()]
    return "\b\nenvironment (all optional):\n" + "\n".join(rows)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_refusal(host: str, password: str | None, insecure: bool) -> str | None:
    """Why the server must not listen on ``host`` (no password, not loopback, no --insecure), or None."""
    if password or insecure or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host} without STUDIO_ADMIN_PASSWORD: anyone who reaches it could delete jobs "
        "and start work; set a password, or pass --insecure if the network is yours alone"
    )


def load_app(**overrides):
    """The app of the STUDIO_* settings; a bad setting becomes StudioError."""
    from history import create_app  # here, not at the top: history/__init__.py imports this module

    try:
        return create_app(overrides or None)
    except ConfigError as error:
        raise StudioError(str(error)) from None


def in_app_context(command: click.Command) -> click.Command:
    """A copy of ``command`` that runs inside the app (as `flask history ...` runs it)."""
    callback = command.callback

    @functools.wraps(callback)
    def run(*args, **kwargs):
        with load_app().app_context():
            return callback(*args, **kwargs)

    wrapped = copy.copy(command)
    wrapped.callback = run
    return wrapped


def app_commands() -> dict[str, click.Command]:
    """The store commands: the `history` group's, and api-token (history.web.login), by name."""
    return {**history_cli.commands, api_token_command.name: api_token_command}


class StudioCommands(click.Group):
    """`serve`, and every command of the `history` group (a command added there shows up here too)."""

    def list_commands(self, ctx) -> list[str]:
        return sorted({*super().list_commands(ctx), *app_commands()})

    def get_command(self, ctx, name: str):
        command = super().get_command(ctx, name)
        if command is None and (found := app_commands().get(name)) is not None:
            command = in_app_context(found)
        return command


@click.group(cls=StudioCommands, epilog=settings_help(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="studio-history", message="%(prog)s %(version)s")
def studio_history():
    """Studio History: the job history of a ComfyUI studio."""


@studio_history.command("serve", epilog=settings_help())
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=int, default=5000, show_default=True, help="port to listen on")
@click.option("--insecure", is_flag=True, help="listen on a non-loopback address without STUDIO_ADMIN_PASSWORD")
@click.option("--debug", is_flag=True, help="Flask debug mode with the reloader")
@click.option("--gunicorn", "use_gunicorn", is_flag=True,
              help="serve with gunicorn (one gthread worker; the server extra) instead of Werkzeug")
@click.option("--threads", type=click.IntRange(min=2), default=64, show_default=True,
              help="gunicorn's threads: each open page's websocket holds one")
def serve(host: str, port: int, insecure: bool, debug: bool, use_gunicorn: bool, threads: int):
    """Serve the studio: Werkzeug by default, gunicorn with --gunicorn (production: see the README)."""
    refusal = exposure_refusal(host, os.environ.get("STUDIO_ADMIN_PASSWORD"), insecure)
    if refusal:
        raise StudioError(refusal)
    if use_gunicorn:
        run_gunicorn(host, port, threads)
        return
    app = load_app()
    the_studio = app.extensions["studio"]
    if not debug:
        # Run the executor (and the demo jobs on a fresh store) now, not on the first request; with the
        # debug reloader the serving child starts it on its first request instead.
        start_studio(app)
        # SIGTERM (systemd, a container) stops the studio cleanly: a worker retires its heartbeat, so
        # another takes over what it ran at once instead of after the heartbeat expires.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    prefix = app.config["STUDIO"].url_prefix
    try:
        if the_studio.role == "worker":
            serve_health(app, host, port)
            return
        if port:  # with --port 0 the OS picks one: Werkzeug's "Running on" line says which
            click.echo(f" * Studio History: http://{host}:{port}{prefix}/admin/history")
        app.run(host=host, port=port, debug=debug, use_reloader=debug, threaded=True)
    finally:
        the_studio.stop()


def start_studio(app) -> None:
    """Start the app's background work now; a process refused the jobs (SQLite has a runner) stops here."""
    try:
        app.extensions["studio"].start()
    except RunnerRefused as refused:
        raise StudioError(str(refused)) from None


def serve_health(app, host: str, port: int) -> None:
    """Serve a worker's /healthz and /metrics (all a worker answers) until SIGTERM or Ctrl-C."""
    from werkzeug.serving import make_server  # Werkzeug's server without its development banner

    server = make_server(host, port, app, threaded=True)
    prefix = app.config["STUDIO"].url_prefix
    click.echo(f" * Studio History worker {app.extensions['studio'].worker_id}: "
               f"http://{host}:{server.server_port}{prefix}/healthz")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def stop_gunicorn_worker(arbiter, worker) -> None:
    """gunicorn's worker_exit hook, in the worker process: stop its studio (a worker retires its heartbeat)."""
    app = getattr(worker, "wsgi", None)
    if app is not None and "studio" in getattr(app, "extensions", {}):
        app.extensions["studio"].stop()


def run_gunicorn(host: str, port: int, threads: int) -> None:
    """Run gunicorn in this process with one gthread worker (flask-sock's websocket needs gthread or gevent)."""
    try:
        from gunicorn.app.base import BaseApplication  # here, not at the top: gunicorn is the optional server extra
    except ImportError:
        raise StudioError("--gunicorn needs gunicorn: pip install 'studio-history[server]'") from None

    class StudioServer(BaseApplication):
        """gunicorn serving create_app() (background work starts on the worker's first request)."""

        def load_config(self):
            bind = f"[{host}]:{port}" if ":" in host.strip("[]") else f"{host}:{port}"
            for name, value in {
                "bind": [bind],
                "workers": 1,  # the built-in executor runs in the web process: one worker (README, Production)
                "worker_class": "gthread",
                "threads": threads,
                "control_socket_disable": True,
                # In the worker process, as it exits: a worker retires its heartbeat (see serve).
                "worker_exit": stop_gunicorn_worker,
            }.items():
                self.cfg.set(name, value)

        def load(self):
            app = load_app()
            start_studio(app)  # in gunicorn's worker process; a refusal fails its boot, and gunicorn stops
            return app

    load_app()  # a bad setting stops here with one line, not in a worker that gunicorn restarts
    StudioServer().run()


def main(argv: list[str] | None = None) -> int:
    """Run `studio-history` with ``argv`` (default: the process's arguments); return the exit status."""
    try:
        studio_history.main(args=argv, prog_name="studio-history", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0

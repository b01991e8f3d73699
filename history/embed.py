"""Mount the studio inside another Flask app, and trust a reverse proxy's X-Forwarded-* headers.

``history.init_app(host_app, url_prefix="/studio", **settings)`` builds the studio as an app of its own
(create_app: blueprints, database binding, runner, websocket, login, cross-origin checks, CORS) and mounts it under the
prefix with Werkzeug's DispatcherMiddleware, the way Sidekiq's web UI is mounted in a Rack app. The host
keeps its own config, secret key, session cookie, templates, error handlers and JSON settings: the studio
brings a ``base.html`` and an app-wide error handler that must not shadow the host's, and the host's
``DATABASE_URL`` (its own database) is never read. What the host gains:

- every URL under the prefix is the studio's (SCRIPT_NAME carries the prefix, so every ``url_for`` of the
  studio, media, static and websocket URLs included, follows it);
- ``host_app.extensions["studio_history"]``: the studio app;
- ``url_for("studio.history.history")`` (any studio endpoint, prefixed ``studio.``) in the host's own views
  and templates;
- ``flask --app host studio ...``: the studio's commands (``studio history export``, ``studio init-db``).

The studio's database proxy (history.db.database) is module-global: one studio per process.
"""
from __future__ import annotations

import click
from flask import Flask
from flask import current_app
from flask import has_request_context
from flask import request
from werkzeug.http import parse_list_header
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BuildError

from history.config import ConfigError
from history.config import Settings

EXTENSION = "studio_history"
ENDPOINT_PREFIX = "studio."


# ---- reverse proxies -------------------------------------------------------------------------------

class ForwardedPrefix:
    """Put a trusted ``X-Forwarded-Prefix`` in front of SCRIPT_NAME (ProxyFix would replace it, losing a mount)."""

    def __init__(self, app, trusted: int):
        self.app = app
        self.trusted = trusted

    def __call__(self, environ, start_response):
        values = parse_list_header(environ.get("HTTP_X_FORWARDED_PREFIX", ""))
        if self.trusted and len(values) >= self.trusted:
            prefix = values[-self.trusted].strip().rstrip("/")
            if prefix.startswith("/") and not prefix.startswith("//"):
                environ["SCRIPT_NAME"] = prefix + environ.get("SCRIPT_NAME", "")
        return self.app(environ, start_response)


def trust_proxies(app: Flask, settings: Settings) -> None:
    """With STUDIO_PROXY_FIX=N, read client address, scheme, host, port and prefix from N proxies' headers."""
    trusted = settings.proxy_fix
    if trusted:
        app.wsgi_app = ProxyFix(
            ForwardedPrefix(app.wsgi_app, trusted), x_for=trusted, x_proto=trusted, x_host=trusted, x_port=trusted, x_prefix=0
        )


# ---- mounting -------------------------------------------------------------------------------------

def _studio_config(host_app: Flask, overrides: dict) -> dict:
    """The studio app's config: the host's STUDIO_* keys, then the overrides (``database_url=`` means STUDIO_DATABASE_URL)."""
    fields = set(Settings.__dataclass_fields__)
    config = {key: value for key, value in host_app.config.items() if key.startswith("STUDIO_")}
    for key, value in overrides.items():
        if key.lower() in fields:
            key = "STUDIO_" + key.upper()
        config[key] = value
    return config


class StudioCommands(click.Group):
    """The studio's CLI commands inside the host's ``flask`` command, run in the studio's app context."""

    def __init__(self, studio_app: Flask):
        super().__init__("studio", help="Studio History: manage the job store (init-db, history import/export, api-token).")
        self.studio_app = studio_app
        for name, command in studio_app.cli.commands.items():
            self.add_command(command, name)

    def invoke(self, ctx):
        ctx.with_resource(self.studio_app.app_context())
        return super().invoke(ctx)


def _url_builder(studio_app: Flask, url_prefix: str):
    """A url_for fallback for the host: ``studio.<endpoint>`` builds the studio's URL under the mount."""

    def build(error, endpoint, values):
        if not endpoint.startswith(ENDPOINT_PREFIX):
            return None
        external = bool(values.pop("_external", False))
        scheme = values.pop("_scheme", None)
        anchor = values.pop("_anchor", None)
        method = values.pop("_method", None)
        if has_request_context():
            server_name, script_root, url_scheme = request.host, request.script_root, request.scheme
        else:
            # Flask gets here without a request only when the host has SERVER_NAME.
            server_name = current_app.config.get("SERVER_NAME") or "localhost"
            script_root = (current_app.config.get("APPLICATION_ROOT") or "/").rstrip("/")
            url_scheme, external = current_app.config.get("PREFERRED_URL_SCHEME") or "http", True
        adapter = studio_app.url_map.bind(server_name, script_name=script_root + url_prefix, url_scheme=scheme or url_scheme)
        try:
            url = adapter.build(endpoint[len(ENDPOINT_PREFIX):], values, method=method, force_external=external or bool(scheme))
        except BuildError:
            raise error from None
        return url + (f"#{anchor}" if anchor else "")

    return build


def mount(host_app: Flask, url_prefix: str = "/studio", **settings_overrides) -> Flask:
    """Build the studio and serve it under ``url_prefix`` of ``host_app``; return the studio app."""
    from history import create_app  # here, not at the top: history/__init__.py imports this module

    url_prefix = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
    if not url_prefix:
        raise ConfigError("init_app needs a url_prefix such as /studio (the host keeps /)")
    if EXTENSION in host_app.extensions:
        raise ConfigError(f"the studio is already mounted in this app at {host_app.extensions[EXTENSION].config['STUDIO_MOUNT']}")
    config = _studio_config(host_app, settings_overrides)
    # Inside the studio the mount is SCRIPT_NAME, not a prefix of its routes.
    config["STUDIO_URL_PREFIX"] = ""
    studio_app = create_app(config)
    studio_app.config["STUDIO_MOUNT"] = url_prefix
    host_app.wsgi_app = DispatcherMiddleware(host_app.wsgi_app, {url_prefix: studio_app})
    host_app.extensions[EXTENSION] = studio_app
    host_app.url_build_error_handlers.append(_url_builder(studio_app, url_prefix))
    host_app.cli.add_command(StudioCommands(studio_app))
    return studio_app

"""Studio History: the job-history service of a ComfyUI studio."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from flask import Flask
from flask import has_app_context
from jinja2 import ChoiceLoader
from jinja2 import FileSystemLoader

from history import cli
from history import db
from history import embed
from history import jobs
from history import studio
from history import web
from history.config import ConfigError
from history.config import load_settings
from history.web import cors

PACKAGE_DIR = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """The templates, partials or static folder: inside the installed package, else at the top of the checkout."""
    packaged = PACKAGE_DIR / name  # a wheel carries them here (setup.py)
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


__all__ = ["create_app", "init_app", "ConfigError"]


class StudioFlask(Flask):
    """Flask, building absolute URLs for a fragment another origin fetched (history.web.cors decides)."""

    def url_for(self, endpoint: str, *, _external: bool | None = None, **values) -> str:
        """Build a URL as Flask does; absolute whenever cors.absolute_urls_wanted() says so."""
        if _external is None and has_app_context() and cors.absolute_urls_wanted():
            _external = True
        return super().url_for(endpoint, _external=_external, **values)


GUNICORN_WORKER_BOOT_ERROR = 3  # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app from STUDIO_* settings (and ``test_config`` overrides); raise ConfigError on a bad one."""
    test_config = dict(test_config or {})
    studio_overrides = {k: v for k, v in test_config.items() if k.startswith("STUDIO_")}
    try:
        settings = load_settings(overrides=studio_overrides)
    except ConfigError as error:
        if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
            # Under gunicorn: the one line saying what to fix, not a traceback, and its boot-failure exit
            # code, on which the master stops instead of forking the worker again.
            print(f"studio-history: {error}", file=sys.stderr, flush=True)
            sys.exit(GUNICORN_WORKER_BOOT_ERROR)
        raise

    app = StudioFlask(
        __name__,
        static_folder=str(asset_dir("static")),
        static_url_path=settings.url_prefix + "/static",  # static files follow STUDIO_URL_PREFIX too
        template_folder=str(asset_dir("templates")),
    )
    # Pages and fragments share one loader, so a page includes exactly the partial an endpoint returns alone.
    app.jinja_loader = ChoiceLoader([
        FileSystemLoader(str(asset_dir("templates"))),
        FileSystemLoader(str(asset_dir("partials"))),
    ])
    app.config.update(
        SECRET_KEY=settings.secret_key,
        DATABASE_URL=settings.database_url,
        STUDIO=settings,
        SOCK_SERVER_OPTIONS={"ping_interval": 25},
        START_RUNNER=True,
    )
    app.config.update({k: v for k, v in test_config.items() if not k.startswith("STUDIO_")})
    app.json.sort_keys = False  # records keep the field order of DESIGN.md

    db.init_app(app)
    cli.init_app(app)
    studio.init_app(app)
    web.init_app(app, settings.url_prefix)
    embed.trust_proxies(app, settings)  # X-Forwarded-* when STUDIO_PROXY_FIX is set

    with db.connection():
        for output_root in settings.output_roots.every():
            jobs.finish_interrupted_deletes(output_root)  # a process killed mid-delete left tombstones
    return app


def init_app(host_app: Flask, url_prefix: str = "/studio", **settings_overrides) -> Flask:
    """Mount the whole studio in ``host_app`` under ``url_prefix``; return the studio app (history/embed.py)."""
    return embed.mount(host_app, url_prefix, **settings_overrides)

"""Studio History: the job-history service of a ComfyUI studio."""
from __future__ import annotations

from pathlib import Path

from flask import Flask
from jinja2 import ChoiceLoader
from jinja2 import FileSystemLoader

from history.config import ConfigError
from history.config import load_settings

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["create_app", "init_app", "ConfigError"]


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app from STUDIO_* settings (and ``test_config`` overrides); raise ConfigError on a bad one."""
    test_config = dict(test_config or {})
    studio_overrides = {k: v for k, v in test_config.items() if k.startswith("STUDIO_")}
    settings = load_settings(overrides=studio_overrides)

    app = Flask(
        __name__,
        static_folder=str(ROOT / "static"),
        static_url_path=settings.url_prefix + "/static",  # static files follow STUDIO_URL_PREFIX too
        template_folder=str(ROOT / "templates"),
    )
    # Pages and fragments share one loader, so a page includes exactly the partial an endpoint returns alone.
    app.jinja_loader = ChoiceLoader([FileSystemLoader(str(ROOT / "templates")), FileSystemLoader(str(ROOT / "partials"))])
    app.config.update(
        SECRET_KEY=settings.secret_key,
        DATABASE_URL=settings.database_url,
        STUDIO=settings,
        SOCK_SERVER_OPTIONS={"ping_interval": 25},
        START_RUNNER=True,
    )
    app.config.update({k: v for k, v in test_config.items() if not k.startswith("STUDIO_")})
    app.json.sort_keys = False  # records keep the field order of DESIGN.md

    from history import db

    db.init_app(app)

    from history import cli

    cli.init_app(app)

    from history import runner

    runner.init_app(app)

    from history.web import register_blueprints

    register_blueprints(app, settings.url_prefix)

    from history.web import auth

    auth.init_app(app)  # login, the guard before every view, CSRF, security headers, body limits

    from history import embed
    from history.web import cors

    cors.init_app(app)  # the fragments answer STUDIO_EMBED_ORIGINS (issue 8)
    embed.trust_proxies(app, settings)  # X-Forwarded-* when STUDIO_PROXY_FIX is set

    from history import jobs

    with db.connection():
        jobs.finish_interrupted_deletes(settings.output_dir)  # a process killed mid-delete left tombstones
    return app


def init_app(host_app: Flask, url_prefix: str = "/studio", **settings_overrides) -> Flask:
    """Mount the whole studio in ``host_app`` under ``url_prefix``; return the studio app (history/embed.py)."""
    from history import embed

    return embed.mount(host_app, url_prefix, **settings_overrides)

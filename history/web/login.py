"""Login and logout, the session cookie, and the ``api-token`` command.

A login is a signed cookie (HttpOnly, SameSite=Lax, Secure over https) valid for a fixed time from the
login, which polling does not extend. history.web.guard checks it on every request.
"""
from __future__ import annotations

import datetime
import secrets
import time

import click
from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import has_request_context
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask.cli import with_appcontext
from flask.sessions import SecureCookieSessionInterface

from history import security
from history.db import database
from history.models import EndedLogin
from history.web import guard

bp = Blueprint("login", __name__)


class StudioSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the Secure flag whenever the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def _settings():
    return current_app.config["STUDIO"]


@bp.route("/login", methods=["GET", "POST"])
@guard.public
def login():
    """Ask for the admin password; on success start a session and go back to ``next``."""
    settings = _settings()
    next_url = security.local_path(request.values.get("next")) or url_for("history.history")
    if not settings.admin_password:
        return render_template("login.html", password_required=False, next_url=next_url, error=None)
    status = 200
    error = None
    headers = {}
    if request.method == "POST":
        address = guard.client_address()
        wait = guard.state().limiter.retry_after(address)
        if wait:
            status, error = 429, f"Too many failed attempts. Try again in {wait} seconds."
            headers["Retry-After"] = str(wait)
        elif security.equals(request.form.get("password"), settings.admin_password):
            guard.state().limiter.reset(address)
            session.clear()  # a fresh session for the new login
            session.permanent = True
            session["login"] = security.password_fingerprint(current_app.secret_key, settings.admin_password)
            session["login_at"] = time.time()
            session["login_id"] = secrets.token_urlsafe(16)  # what a logout ends, wherever the cookie went
            return redirect(next_url, 303)
        else:
            guard.state().limiter.fail(address)
            status, error = 401, "Wrong password."
    page = render_template("login.html", password_required=True, next_url=next_url, error=error)
    return page, status, headers


@bp.post("/logout")
@guard.public
def logout():
    """End this login everywhere its cookie was copied, then the session, and show the login page."""
    login_id, login_at = session.get("login_id"), session.get("login_at")
    if isinstance(login_id, str) and isinstance(login_at, (int, float)):
        until = datetime.datetime.fromtimestamp(login_at + current_app.config["LOGIN_LIFETIME"], datetime.timezone.utc)
        now = datetime.datetime.now(datetime.timezone.utc)
        with database.atomic():
            EndedLogin.delete().where(EndedLogin.until <= now).execute()  # ran out anyway: forget them
            EndedLogin.insert(login_id=login_id[:64], until=until).on_conflict_ignore().execute()
        guard.state().end_login(login_id)
    session.clear()
    return redirect(url_for("login.login"), 303)


@click.command("api-token")
@with_appcontext
def api_token_command():
    """Print the bearer token derived from STUDIO_ADMIN_PASSWORD."""
    settings = current_app.config["STUDIO"]
    if not settings.admin_password:
        raise click.ClickException("STUDIO_ADMIN_PASSWORD is not set: there is no token to derive")
    click.echo(security.derive_api_token(settings.admin_password))


def init_app(app: Flask) -> None:
    """Install the login blueprint, the session cookie's settings and the ``api-token`` command."""
    settings = app.config["STUDIO"]
    app.session_interface = StudioSessionInterface()
    app.config.setdefault("LOGIN_LIFETIME", guard.LOGIN_LIFETIME_SECONDS)
    app.config.update(
        SESSION_COOKIE_NAME=settings.session_cookie,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # The cookie lives as long as a login; polling must not push that out (the login time is checked too).
        PERMANENT_SESSION_LIFETIME=app.config["LOGIN_LIFETIME"],
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    app.register_blueprint(bp, url_prefix=settings.url_prefix or None)
    app.cli.add_command(api_token_command)

"""Blueprints: one per surface (pages and fragments, JSON API, media, websocket, login)."""
from __future__ import annotations

from flask import Flask
from flask import jsonify
from flask import request
from werkzeug.exceptions import HTTPException


def register_blueprints(app: Flask, url_prefix: str = "") -> None:
    """Register every blueprint under ``url_prefix``."""
    from history.web import api
    from history.web import media
    from history.web import pages
    from history.web import ws

    for module in (pages, api, media, ws):
        app.register_blueprint(module.bp, url_prefix=url_prefix or None)
    if hasattr(ws, "sock"):
        ws.sock.init_app(app)

    api_root = (url_prefix or "") + "/api/"

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        # Under /api/ every error is JSON, 404 and 405 of unknown URLs included.
        if request.path.startswith(api_root):
            response = jsonify(error=error.description if isinstance(error.description, str) else error.name)
            response.status_code = error.code or 500
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if error.get_response().headers.get(header):
                    response.headers[header] = error.get_response().headers[header]
            return response
        return error

"""CSRF on every state-changing request, the websocket's Origin check, security headers and body limits."""
from __future__ import annotations

import io

import pytest
from bs4 import BeautifulSoup
from werkzeug.test import EnvironBuilder

from history import create_app
from history.web import guard
from tests.conftest import page_token

pytestmark = pytest.mark.sqlite_only

EVIL = "http://evil.test"
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def bare(app):
    """A client that sends no Origin, Referer or token unless a test says so."""
    return app.test_client()


def delete(client, **kwargs):
    return client.post("/api/admin/history/delete", **kwargs)


def unsafe_routes(app):
    """(method, url) for every route that takes a state-changing method (arguments filled in)."""
    for rule in app.url_map.iter_rules():
        for method in sorted(set(UNSAFE) & rule.methods):
            values = {name: "x" for name in rule.arguments}
            yield method, rule.build(values, append_unknown=False)[1]


def test_every_state_changing_route_refuses_cross_origin_requests(app, bare):
    count = 0
    routes = list(unsafe_routes(app))
    assert ("POST", "/api/admin/history/delete") in routes
    assert ("POST", "/login") in routes and ("POST", "/logout") in routes
    assert any(url.startswith("/api/run/") for _, url in routes)
    for method, url in routes:
        attempts = [
            {"json": {"prompt_ids": []}, "headers": {"Origin": EVIL}},
            {"json": {"prompt_ids": []}, "headers": {"Referer": EVIL + "/page"}},
            {"json": {"prompt_ids": []}},  # no Origin, no Referer, no token
            {"json": {"prompt_ids": []}, "headers": {"Origin": "null"}},
            {"data": {"prompt_ids": "x"}, "headers": {"Origin": "http://localhost"}},  # a form needs the token
            {"data": '{"prompt_ids": []}', "content_type": "text/plain", "headers": {"Origin": "http://localhost"}},
            {"json": {}, "headers": {"Origin": "http://localhost.evil.test"}},
            {"json": {}, "headers": {"Origin": "http://localhost:8080"}},
            {"json": {}, "headers": {"X-CSRF-Token": "guessed", "Origin": EVIL}},
            {"data": {"csrf_token": ""}, "headers": {"Origin": EVIL}},
        ]
        for attempt in attempts:
            response = bare.open(url, method=method, **attempt)
            assert response.status_code == 403, (method, url, attempt, response.status_code)
            if url.startswith("/api/"):
                assert "CSRF" in response.json["error"]
            count += 1
    print(f"\ncross-origin / tokenless state-changing requests refused: {count} over {len(routes)} routes")


def test_same_origin_json_passes(bare, make_job):
    job = make_job()
    response = delete(bare, json={"prompt_ids": [job.prompt_id]}, headers={"Origin": "http://localhost"})
    assert response.status_code == 200
    assert response.json["deleted"] == [job.prompt_id]


def test_same_origin_referer_counts_when_origin_is_absent(bare):
    response = delete(bare, json={"prompt_ids": []}, headers={"Referer": "http://localhost/admin/history"})
    assert response.status_code == 200


def test_https_origin_behind_a_proxy_that_speaks_http_to_us_passes(bare):
    response = delete(bare, json={"prompt_ids": []}, headers={"Origin": "https://localhost"})
    assert response.status_code == 200


def test_the_page_token_passes_as_header_or_form_field(bare):
    token = page_token(bare)
    as_header = delete(bare, data={"prompt_ids": "x"}, headers={"X-CSRF-Token": token})
    assert as_header.status_code == 400  # past CSRF; the body is not the JSON the endpoint wants
    as_field = delete(bare, data={"csrf_token": token})
    assert as_field.status_code == 400
    cross_site_with_token = delete(bare, json={"prompt_ids": []}, headers={"X-CSRF-Token": token, "Origin": EVIL})
    assert cross_site_with_token.status_code == 200  # only this site's pages can read the token


def test_a_token_from_another_session_does_not_pass(app, bare):
    other = app.test_client()
    stolen = page_token(other)
    page_token(bare)
    response = delete(bare, data={"csrf_token": stolen})
    assert response.status_code == 403


def test_htmx_sends_the_token_from_body(bare):
    soup = BeautifulSoup(bare.get("/login").data, "html.parser")
    token = soup.select_one('meta[name="csrf-token"]')["content"]
    assert soup.body["hx-headers:inherited"] == '{"X-CSRF-Token": "%s"}' % token
    config = soup.select_one('meta[name="htmx-config"]')["content"]
    assert '"includeIndicatorCSS": false' in config


def test_refusals_outside_the_api_are_plain_text(bare):
    response = bare.post("/logout", data={})
    assert response.status_code == 403
    assert response.mimetype == "text/plain"
    assert "Reload the page" in response.get_data(as_text=True)


# ---- websocket origin ---------------------------------------------------------------------------------

WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:9999", "https://localhost.evil.test"])
def test_the_websocket_refuses_foreign_origins(bare, origin):
    response = bare.get("/ws", headers={**WS_HEADERS, "Origin": origin})
    assert response.status_code == 403
    assert "Origin" in response.get_data(as_text=True)


def test_the_websocket_accepts_embed_origins(app_config):
    app = create_app({**app_config, "STUDIO_EMBED_ORIGINS": "https://dash.example"})
    try:
        client = app.test_client()
        refused = client.get("/ws", headers={**WS_HEADERS, "Origin": EVIL})
        assert refused.status_code == 403
        # The guard lets the embed origin through to the view; the test client cannot upgrade, so stop there.
        with app.test_request_context("/ws", headers={**WS_HEADERS, "Origin": "https://dash.example"}):
            assert guard.run_steps() is None
    finally:
        app.extensions["studio"].stop()


# ---- headers ------------------------------------------------------------------------------------------

def csp_directives(response) -> dict[str, str]:
    policy = response.headers["Content-Security-Policy"]
    return {part.split()[0]: " ".join(part.split()[1:]) for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", ["/login", "/api/admin/history", "/api/nothing", "/nothing", "/admin/history"])
def test_responses_carry_the_security_headers(bare, path):
    response = bare.get(path)
    csp = csp_directives(response)
    assert csp["default-src"] == "'self'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["img-src"] == "'self' data: blob:"
    assert csp["connect-src"] == "'self' ws://localhost wss://localhost"
    assert csp["frame-ancestors"] == "'self'"
    assert csp["base-uri"] == "'self'"
    assert csp["form-action"] == "'self'"
    assert csp["object-src"] == "'none'"
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert "unsafe-eval" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"


def test_embed_origins_may_frame_the_page(app_config):
    app = create_app({**app_config, "STUDIO_EMBED_ORIGINS": "https://dash.example,http://127.0.0.1:7000"})
    try:
        response = app.test_client().get("/login")
        assert csp_directives(response)["frame-ancestors"] == "'self' https://dash.example http://127.0.0.1:7000"
        assert "X-Frame-Options" not in response.headers
    finally:
        app.extensions["studio"].stop()


def test_a_hostile_host_header_stays_out_of_the_policy(bare):
    response = bare.get("/login", headers={"Host": "evil;script-src *"})
    assert "evil" not in response.headers.get("Content-Security-Policy", "")


def test_media_keeps_its_own_stricter_policy(bare, make_job):
    job = make_job()
    ref = job.outputs[0]
    with bare.get(f"/media/output/{ref['subfolder']}/{ref['filename']}") as response:
        assert response.status_code == 200
        assert "sandbox" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_templates_have_no_inline_script_or_handler():
    """No inline <script>, no on*= handler, no hx-on (htmx would need eval): the CSP forbids them all."""
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in sorted([*root.glob("templates/*.html"), *root.glob("partials/*.html")]):
        text = path.read_text()
        for match in re.finditer(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\shx-on[:-]|=\s*['\"]js:", text):
            offenders.append(f"{path.name}: {match.group(0).strip()}")
    assert offenders == []


# ---- limits -------------------------------------------------------------------------------------------

def test_a_json_body_over_4_mib_gets_413_json(bare):
    body = b'{"prompt_ids": ["' + b"a" * (5 * 1024 * 1024) + b'"]}'
    response = delete(bare, data=body, content_type="application/json", headers={"Origin": "http://localhost"})
    assert response.status_code == 413
    assert "4 MiB" in response.json["error"]


def test_an_upload_over_32_mib_gets_413(bare):
    token = page_token(bare)
    builder = EnvironBuilder(
        path="/api/run/txt2img-example/execute",
        method="POST",
        data={"params": "{}", "input_image": (io.BytesIO(b"\0" * (33 * 1024 * 1024)), "big.png"), "csrf_token": token},
    )
    environ = builder.get_environ()
    builder.close()
    try:
        with bare.open(environ) as response:
            assert response.status_code == 413
            assert "32 MiB" in response.json["error"]
    finally:
        environ["wsgi.input"].close()  # the test client leaves a body this big in a temporary file


def test_a_views_own_413_keeps_its_message(bare):
    response = delete(bare, json={"prompt_ids": [f"id-{n}" for n in range(10_001)]}, headers={"Origin": "http://localhost"})
    assert response.status_code == 413
    assert "10000" in response.json["error"]


def test_an_image_bomb_upload_is_a_400_that_says_why(bare):
    """Pillow reads only the header: a PNG that claims 100000 x 100000 pixels is refused before any decoding."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG")
    png = out.getvalue()
    bomb = png[:16] + (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big") + png[24:]
    token = page_token(bare)
    response = bare.post(
        "/api/run/img2vid-example/execute",
        data={"params": "{}", "input_image": (io.BytesIO(bomb), "bomb.png"), "csrf_token": token},
        content_type="multipart/form-data",
    )
    assert response.status_code in (400, 413)
    assert "input_image" in response.json["error"] or response.json.get("field") == "input_image"


# ---- DNS rebinding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.test", "evil.test:5000", "192.168.1.5:5000", "studio.example"])
def test_an_open_studio_on_loopback_refuses_other_host_names(bare, host):
    """A page whose name was rebound to 127.0.0.1 would be same-origin with a studio that has no password."""
    response = bare.get("/api/admin/history", headers={"Host": host})
    assert response.status_code == 403
    assert "STUDIO_ADMIN_PASSWORD" in response.json["error"]
    page = bare.get("/admin/history", headers={"Host": host})
    assert page.status_code == 403


@pytest.mark.parametrize("host", ["localhost", "localhost:5000", "127.0.0.1:8080", "[::1]:5000", "studio.localhost"])
def test_loopback_names_are_served(bare, host):
    assert bare.get("/api/admin/history", headers={"Host": host}).status_code == 200


def test_other_host_names_are_served_to_other_machines_or_with_a_password(app, app_config):
    remote = app.test_client()
    remote.environ_base["REMOTE_ADDR"] = "192.168.1.20"  # --insecure on a network: a real client elsewhere
    assert remote.get("/api/admin/history", headers={"Host": "studio.lan"}).status_code == 200
    secured = create_app({**app_config, "STUDIO_ADMIN_PASSWORD": "pw"})
    try:
        response = secured.test_client().get("/api/admin/history", headers={"Host": "studio.example"})
        assert response.status_code == 401  # the login decides, whatever the name
    finally:
        secured.extensions["studio"].stop()

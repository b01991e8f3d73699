"""Cross-origin protection of every state-changing request, the websocket's Origin check, security headers and body limits."""
from __future__ import annotations

import io
import json
import urllib.request

import pytest
from bs4 import BeautifulSoup
from werkzeug.test import EnvironBuilder

from history import create_app
from history.models import Job
from history.web import guard

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


CROSS_SITE_ATTEMPTS = [
    {"json": {"prompt_ids": []}, "headers": {"Origin": EVIL}},
    {"json": {"prompt_ids": []}, "headers": {"Referer": EVIL + "/page"}},  # an old browser that sent no Origin
    {"json": {"prompt_ids": []}, "headers": {"Origin": "null"}},  # a sandboxed frame, a file: page
    {"json": {}, "headers": {"Origin": "http://localhost.evil.test"}},
    {"json": {}, "headers": {"Origin": "http://localhost:8080"}},
    {"data": {"prompt_ids": "x"}, "headers": {"Sec-Fetch-Site": "cross-site", "Origin": EVIL}},  # a form post
    {"data": '{"prompt_ids": []}', "content_type": "text/plain", "headers": {"Sec-Fetch-Site": "cross-site", "Origin": EVIL}},
    {"json": {}, "headers": {"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost"}},
    # The browser's Sec-Fetch-Site is what counts: an Origin that names this host does not outweigh it.
    {"json": {}, "headers": {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"}},
    {"json": {}, "headers": {"Sec-Fetch-Site": "cross-site"}},
]


def test_every_state_changing_route_refuses_cross_origin_requests(app, bare):
    count = 0
    routes = list(unsafe_routes(app))
    assert ("POST", "/api/admin/history/delete") in routes
    assert ("POST", "/login") in routes and ("POST", "/logout") in routes
    assert any(url.startswith("/api/run/") for _, url in routes)
    for method, url in routes:
        for attempt in CROSS_SITE_ATTEMPTS:
            response = bare.open(url, method=method, **attempt)
            assert response.status_code == 403, (method, url, attempt, response.status_code)
            if url.startswith("/api/"):
                assert "cross-origin request refused" in response.json["error"]
            count += 1
    print(f"\ncross-origin state-changing requests refused: {count} over {len(routes)} routes")


def test_a_scripts_json_post_with_neither_header_passes(bare, make_job):
    # curl -H 'Content-Type: application/json' -d '{"prompt_ids": [...]}' .../api/admin/history/delete
    job = make_job()
    response = delete(bare, json={"prompt_ids": [job.prompt_id]})
    assert response.status_code == 200
    assert response.json["deleted"] == [job.prompt_id]


def test_a_plain_http_client_deletes_through_the_live_server(live_server, make_job, db):
    """The request curl sends (no Origin, no Sec-Fetch-Site, no cookie) to an open studio is served."""
    job = make_job()
    request = urllib.request.Request(
        live_server.url + "/api/admin/history/delete",
        data=json.dumps({"prompt_ids": [job.prompt_id]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert json.load(response)["deleted"] == [job.prompt_id]
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is None


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    {"Sec-Fetch-Site": "none"},  # the person typed it or opened a bookmark
    {"Referer": "http://localhost/admin/history"},
    {"Origin": "https://localhost"},  # https at a proxy that speaks http to us
])
def test_this_sites_own_requests_pass(bare, make_job, headers):
    job = make_job()
    response = delete(bare, json={"prompt_ids": [job.prompt_id]}, headers=headers)
    assert response.status_code == 200
    assert response.json["deleted"] == [job.prompt_id]


def test_a_same_origin_form_post_needs_no_token(bare):
    response = delete(bare, data={"prompt_ids": "x"}, headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"})
    assert response.status_code == 400  # past the cross-origin check; the body is not the JSON the endpoint wants


def test_pages_carry_no_token(bare):
    soup = BeautifulSoup(bare.get("/login").data, "html.parser")
    assert soup.select_one('meta[name="csrf-token"]') is None
    assert not soup.body.has_attr("hx-headers:inherited")
    config = soup.select_one('meta[name="htmx-config"]')["content"]
    assert '"includeIndicatorCSS": false' in config


def test_refusals_outside_the_api_are_plain_text(bare):
    response = bare.post("/logout", data={}, headers={"Sec-Fetch-Site": "cross-site", "Origin": EVIL})
    assert response.status_code == 403
    assert response.mimetype == "text/plain"
    assert "cross-origin request refused: it came from another site" in response.get_data(as_text=True)


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
    builder = EnvironBuilder(
        path="/api/run/txt2img-example/execute",
        method="POST",
        data={"params": "{}", "input_image": (io.BytesIO(b"\0" * (33 * 1024 * 1024)), "big.png")},
    )
    environ = builder.get_environ()
    builder.close()
    try:
        with bare.open(environ) as response:
            assert response.status_code == 413
            assert "larger than" in response.json["error"]  # said from Content-Length, before the body is read
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
    response = bare.post(
        "/api/run/img2vid-example/execute",
        data={"params": "{}", "input_image": (io.BytesIO(bomb), "bomb.png")},
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
    secured = create_app({**app_config, "STUDIO_ADMIN_PASSWORD": "pw", "START_RUNNER": False})  # the first runs the jobs
    try:
        response = secured.test_client().get("/api/admin/history", headers={"Host": "studio.example"})
        assert response.status_code == 401  # the login decides, whatever the name
    finally:
        secured.extensions["studio"].stop()

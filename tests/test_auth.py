"""Login, sessions, bearer tokens, the guard over every route, and the server's refusal to listen in the open."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from bs4 import BeautifulSoup

import app as app_module
from history import security
from history.models import Job
from history.web import guard
from history.web import login
from tests.conftest import same_origin_client

PASSWORD = "correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent
# The only views open to anonymous visitors. A new public view must be added here on purpose.
PUBLIC_ENDPOINTS = {"static", "login.login", "login.logout", "monitoring.healthz"}

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def app_config(app_config):
    """The test app, with a password."""
    return {**app_config, "STUDIO_ADMIN_PASSWORD": PASSWORD}


@pytest.fixture
def anonymous(app):
    """A client with no session and no token (posting like a same-origin page, so the cross-origin check is not what stops it)."""
    return same_origin_client(app)


def log_in(client, password=PASSWORD, next_path=None, **kwargs):
    """Post the login form as a browser would."""
    data = {"password": password}
    if next_path is not None:
        data["next"] = next_path
    return client.post("/login", data=data, **kwargs)


def sample_urls(rule) -> list[str]:
    """URLs for ``rule`` with plausible values for its arguments (each choice of an ``any`` converter)."""
    choices = [{}]
    for name, converter in rule._converters.items():
        kind = type(converter).__name__
        if kind == "AnyConverter":
            options = sorted(converter.items)
        else:
            options = [{"PathConverter": "comfyui-studio/a/b.png", "IntegerConverter": 1}.get(kind, "some-id")]
        choices = [{**values, name: option} for values in choices for option in options]
    return [rule.build(values, append_unknown=False)[1] for values in choices]


def protected_requests(app):
    """(method, url, endpoint, is_websocket) for every method of every route that is not public."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for url in sample_urls(rule):
                yield method, url, rule.endpoint, rule.websocket


def test_public_views_are_only_login_logout_static_and_healthz(app):
    marked = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if getattr(app.view_functions[rule.endpoint], "_studio_public", False) or rule.endpoint == "static"
    }
    assert marked == PUBLIC_ENDPOINTS


def test_every_protected_route_refuses_anonymous_requests(app, anonymous):
    checked = []
    for method, url, endpoint, websocket in protected_requests(app):
        variants = [{}, {"HX-Request": "true"}]
        if websocket:
            # Werkzeug routes a websocket rule only for an upgrade (anything else is a 400 before any view),
            # and answers an upgrade to any other route with 400 too.
            variants = [{"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}]
        for headers in variants:
            response = anonymous.open(url, method=method, headers=headers, json={} if method != "GET" else None)
            where = f"{method} {url} ({endpoint}) {headers}"
            if url.startswith("/api/") or endpoint.startswith("monitoring."):
                assert response.status_code == 401, where
                assert response.json["error"], where
                assert response.headers["WWW-Authenticate"].startswith("Bearer"), where
                if headers.get("HX-Request"):
                    assert urlsplit(response.headers["HX-Redirect"]).path == "/login", where
            elif headers.get("Upgrade"):
                assert response.status_code == 401, where
            elif headers.get("HX-Request"):
                assert response.status_code == 401, where
                assert urlsplit(response.headers["HX-Redirect"]).path == "/login", where
            else:
                assert response.status_code == 302, where
                assert urlsplit(response.headers["Location"]).path == "/login", where
            checked.append(where)
    paths = {line.split()[1] for line in checked}
    # The surfaces the issue names are all among them (new routes are picked up from the url_map).
    for expected in ("/admin/history", "/api/admin/history", "/api/admin/history/delete", "/api/workflows", "/ws"):
        assert expected in paths
    assert any(path.startswith("/media/") for path in paths)
    assert any(path.startswith("/api/run/") for path in paths)
    print(f"\nanonymous refusals checked: {len(checked)} requests over {len(paths)} URLs")


def test_static_files_and_login_stay_public(anonymous):
    with anonymous.get("/static/placeholder-thumb.svg") as static_file:
        assert static_file.status_code == 200
    login = anonymous.get("/login")
    assert login.status_code == 200
    soup = BeautifulSoup(login.data, "html.parser")
    form = soup.select_one("form.login-form")
    assert form["method"] == "post"
    assert form.select_one('input[type="password"][name="password"]')


def test_a_page_redirects_to_login_with_the_local_path_to_come_back_to(anonymous):
    response = anonymous.get("/admin/history?status=error&q=fox")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query)["next"] == ["/admin/history?status=error&q=fox"]


def test_htmx_requests_get_401_with_hx_redirect_back_to_their_page(anonymous):
    response = anonymous.get(
        "/admin/history", headers={"HX-Request": "true", "HX-Current-URL": "http://localhost/admin/history?q=x"}
    )
    assert response.status_code == 401
    redirect_to = urlsplit(response.headers["HX-Redirect"])
    assert redirect_to.path == "/login"
    assert parse_qs(redirect_to.query)["next"] == ["/admin/history?q=x"]
    foreign = anonymous.get("/admin/history", headers={"HX-Request": "true", "HX-Current-URL": "http://evil.test/x"})
    assert "next" not in parse_qs(urlsplit(foreign.headers["HX-Redirect"]).query)


def test_login_sets_a_hardened_session_cookie_and_goes_back(anonymous):
    response = log_in(anonymous, next_path="/admin/history?q=fox")
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/history?q=fox"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("studio_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http (tests, loopback)
    assert "Expires=" in cookie
    assert anonymous.get("/admin/history").status_code == 200
    assert anonymous.get("/api/admin/history").status_code == 200


def test_the_session_cookie_is_secure_over_https(app):
    client = app.test_client()
    client.environ_base["HTTP_ORIGIN"] = "https://localhost"
    response = client.post("https://localhost/login", data={"password": PASSWORD})
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "next_path",
    ["//evil.test/", "https://evil.test/", "/\\evil.test", "javascript:alert(1)", "evil", "/\x00x", " /admin", "\\\\evil"],
)
def test_login_goes_back_only_to_a_local_path(anonymous, next_path):
    response = log_in(anonymous, next_path=next_path)
    assert response.status_code == 303
    assert response.headers["Location"] == "/admin/history"


def test_a_wrong_password_is_refused_and_keeps_the_form(anonymous):
    response = log_in(anonymous, password="wrong")
    assert response.status_code == 401
    soup = BeautifulSoup(response.data, "html.parser")
    assert soup.select_one(".login-error").get_text(strip=True) == "Wrong password."
    assert anonymous.get("/api/admin/history").status_code == 401


def test_login_is_rate_limited_per_address(app):
    guesser = same_origin_client(app)
    guesser.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    for _ in range(guard.LOGIN_FAILURES_PER_MINUTE):
        assert log_in(guesser, password="guess").status_code == 401
    blocked = log_in(guesser)  # even the right password waits now
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert "Try again in" in BeautifulSoup(blocked.data, "html.parser").select_one(".login-error").get_text()
    neighbour = same_origin_client(app)
    neighbour.environ_base["REMOTE_ADDR"] = "203.0.113.8"
    assert log_in(neighbour).status_code == 303


def test_rate_limiter_forgets_after_its_window():
    now = [1000.0]
    limiter = security.RateLimiter(limit=2, window=60, clock=lambda: now[0])
    limiter.fail("a")
    limiter.fail("a")
    assert limiter.retry_after("a") == 60
    now[0] += 59.5
    assert limiter.retry_after("a") == 1
    now[0] += 1
    assert limiter.retry_after("a") == 0
    limiter.fail("b")
    limiter.reset("b")
    assert limiter.retry_after("b") == 0


def test_a_login_lasts_a_fixed_time_that_polling_does_not_extend(app, anonymous, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(guard.time, "time", lambda: clock[0])
    assert log_in(anonymous).status_code == 303
    lifetime = app.config["LOGIN_LIFETIME"]
    for _ in range(10):  # a poll every so often, right up to the end
        clock[0] += (lifetime - 1) / 10
        assert anonymous.get("/api/admin/history").status_code == 200
    clock[0] += 2
    assert anonymous.get("/api/admin/history").status_code == 401
    assert anonymous.get("/admin/history").status_code == 302


def test_changing_the_password_ends_existing_sessions(app, anonymous):
    assert log_in(anonymous).status_code == 303
    app.config["STUDIO"].admin_password = "a new password"
    assert anonymous.get("/api/admin/history").status_code == 401


def test_logout_ends_the_session(anonymous):
    log_in(anonymous)
    page = anonymous.get("/admin/history")
    soup = BeautifulSoup(page.data, "html.parser")
    form = soup.select_one("form.logout-form")
    assert form is not None and form["action"] == "/logout"
    response = anonymous.post("/logout")
    assert response.status_code == 303
    assert anonymous.get("/api/admin/history").status_code == 401


def test_the_password_derived_token_opens_the_api(app, make_job):
    job = make_job()
    token = security.derive_api_token(PASSWORD)
    assert token == hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), b"studio-history api token v1", 100_000).hex()
    api = app.test_client()  # no cookie, no Origin: a script
    bearer = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/admin/history", headers=bearer).json[0]["prompt_id"] == job.prompt_id
    deleted = api.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]}, headers=bearer)
    assert deleted.status_code == 200
    assert deleted.json["deleted"] == [job.prompt_id]


def test_the_documented_one_liner_computes_the_same_token():
    doc = security.__doc__
    command = re.search(r"python3 -c '(.*?)' 'the password'", doc, re.S).group(1)
    command = " ".join(line.strip() for line in command.splitlines())
    out = subprocess.run([sys.executable, "-c", command, PASSWORD], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == security.derive_api_token(PASSWORD)


def test_the_cli_prints_the_token(runner):
    result = runner.invoke(args=["api-token"])
    assert result.exit_code == 0
    assert result.output.strip() == security.derive_api_token(PASSWORD)


def test_a_configured_api_token_works_too(app_config):
    from history import create_app

    app = create_app({**app_config, "STUDIO_API_TOKEN": "a-long-configured-token-0123456789"})
    try:
        client = app.test_client()
        good = client.get("/api/admin/history", headers={"Authorization": "Bearer a-long-configured-token-0123456789"})
        assert good.status_code == 200
    finally:
        app.extensions["studio"].stop()


@pytest.mark.parametrize("header", ["Bearer wrong", "Bearer ", "Basic dXNlcjpwYXNz", "bearer x" * 300])
def test_wrong_credentials_are_refused(app, header):
    response = app.test_client().get("/api/admin/history", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_bearer_tokens_are_rate_limited_too(app):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "198.51.100.9"
    for _ in range(guard.TOKEN_FAILURES_PER_MINUTE):
        assert client.get("/api/admin/history", headers={"Authorization": "Bearer no"}).status_code == 401
    blocked = client.get("/api/admin/history", headers={"Authorization": "Bearer no"})
    assert blocked.status_code == 429
    assert blocked.headers["Retry-After"]


def test_logout_ends_that_login_wherever_its_cookie_was_copied(app, app_config, anonymous):
    from tests.conftest import another_app

    log_in(anonymous)
    cookie = anonymous.get_cookie(app.config["SESSION_COOKIE_NAME"])
    copy = app.test_client()
    copy.set_cookie(cookie.key, cookie.value)
    assert copy.get("/api/admin/history").status_code == 200
    other = app.test_client()
    log_in(other)  # another login of the same password stays
    assert anonymous.post("/logout").status_code == 303
    assert copy.get("/api/admin/history").status_code == 401
    assert other.get("/api/admin/history").status_code == 200
    # Another process sharing the store refuses it too (one that runs no jobs: on SQLite one process does).
    with another_app({**app_config, "START_RUNNER": False}) as second:
        elsewhere = second.test_client()
        elsewhere.set_cookie(cookie.key, cookie.value)
        assert elsewhere.get("/api/admin/history").status_code == 401


def test_bad_tokens_never_lock_out_valid_tokens_or_the_login(app):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "198.51.100.10"
    for _ in range(guard.TOKEN_FAILURES_PER_MINUTE + 1):
        client.get("/api/admin/history", headers={"Authorization": "Bearer no"})
    assert client.get("/api/admin/history", headers={"Authorization": "Bearer no"}).status_code == 429
    token = security.derive_api_token(PASSWORD)
    assert client.get("/api/admin/history", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert log_in(client).status_code == 303  # failed tokens are not failed logins


def test_failed_logins_never_refuse_a_valid_token(app):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "198.51.100.11"
    for _ in range(guard.LOGIN_FAILURES_PER_MINUTE + 1):
        log_in(client, password="wrong")
    assert log_in(client).status_code == 429
    token = security.derive_api_token(PASSWORD)
    assert client.get("/api/admin/history", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_the_session_cookie_takes_its_name_from_the_setting(app_config):
    from history import create_app

    app = create_app({**app_config, "STUDIO_SESSION_COOKIE": "studio_b"})
    try:
        response = log_in(app.test_client())
        assert response.status_code == 303
        assert response.headers["Set-Cookie"].startswith("studio_b=")
    finally:
        app.extensions["studio"].stop()


def test_a_login_posted_from_another_site_is_refused(app):
    client = app.test_client()
    response = client.post("/login", data={"password": PASSWORD}, headers={"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"})
    assert response.status_code == 403
    assert client.get("/api/admin/history").status_code == 401


def test_a_script_with_a_password_still_needs_a_login_or_a_token(app, make_job):
    job = make_job()
    client = app.test_client()  # no Origin, no Sec-Fetch-Site: passes the cross-origin check, not the login
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.status_code == 401
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is not None


# ---- the dev server does not listen in the open without a password ---------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_password(host):
    assert app_module.exposure_refusal(host, None, False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "studio.example"])
def test_other_addresses_need_a_password_or_insecure(host):
    message = app_module.exposure_refusal(host, None, False)
    assert "STUDIO_ADMIN_PASSWORD" in message and "--insecure" in message and "\n" not in message
    assert app_module.exposure_refusal(host, "pw", False) is None
    assert app_module.exposure_refusal(host, None, True) is None


def test_python_app_py_refuses_0_0_0_0_without_a_password(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "STUDIO_DATA_DIR": str(tmp_path), "STUDIO_DEMO": "0"}
    result = subprocess.run(
        [sys.executable, "app.py", "--host", "0.0.0.0", "--port", "1"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0" in lines[0]


# ---- the websocket on a live server -------------------------------------------------------------------

def test_the_websocket_needs_a_login_and_its_own_origin(live_server, app):
    ws_base = live_server.host
    import websocket

    url = f"ws://{ws_base}/ws"
    own = f"http://{ws_base}"
    with pytest.raises(websocket.WebSocketBadStatusException) as anonymous:
        websocket.create_connection(url, origin=own, timeout=5)
    assert anonymous.value.status_code == 401
    bearer = f"Authorization: Bearer {security.derive_api_token(PASSWORD)}"
    with pytest.raises(websocket.WebSocketBadStatusException) as foreign:
        websocket.create_connection(url, origin="http://evil.test", header=[bearer], timeout=5)
    assert foreign.value.status_code == 403
    socket = websocket.create_connection(url, origin=own, header=[bearer], timeout=5)
    try:
        assert socket.connected
    finally:
        socket.close()
    # A browser's session cookie works too.
    client = same_origin_client(app)
    log_in(client)
    cookie = client.get_cookie("studio_session")
    socket = websocket.create_connection(url, origin=own, cookie=f"studio_session={cookie.value}", timeout=5)
    try:
        assert socket.connected
    finally:
        socket.close()


def test_an_open_websocket_closes_when_its_login_runs_out(live_server, app):
    import websocket

    client = same_origin_client(app)
    log_in(client)
    cookie = client.get_cookie("studio_session")
    app.config["LOGIN_LIFETIME"] = 3  # this login (made just now) ends in under 3 s
    socket = websocket.create_connection(
        f"ws://{live_server.host}/ws", origin=f"http://{live_server.host}",
        cookie=f"studio_session={cookie.value}", timeout=10,
    )
    try:
        opcode, frame = socket.recv_data_frame(control_frame=True)
        while opcode != websocket.ABNF.OPCODE_CLOSE:
            opcode, frame = socket.recv_data_frame(control_frame=True)
        code = int.from_bytes(frame.data[:2], "big")
        assert (code, frame.data[2:].decode()) == (1008, "login expired")
    finally:
        socket.shutdown()
    # A socket opened with the same (now expired) login is refused outright.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://{live_server.host}/ws", origin=f"http://{live_server.host}",
            cookie=f"studio_session={cookie.value}", timeout=5,
        )
    assert refused.value.status_code == 401


def test_under_a_url_prefix(app_config):
    from history import create_app

    app = create_app({**app_config, "STUDIO_URL_PREFIX": "/studio"})
    try:
        client = same_origin_client(app)
        page = client.get("/studio/admin/history")
        assert page.status_code == 302
        assert page.headers["Location"] == "/studio/login?next=/studio/admin/history"
        api = client.get("/studio/api/admin/history")
        assert api.status_code == 401 and api.json["error"]
        login = client.post("/studio/login", data={"password": PASSWORD, "next": "/studio/admin/queue"})
        assert login.headers["Location"] == "/studio/admin/queue"
        assert client.get("/studio/api/admin/history").status_code == 200
        cross_site = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"}
        assert client.post("/studio/api/admin/history/delete", data={"x": "1"}, headers=cross_site).status_code == 403
    finally:
        app.extensions["studio"].stop()


def test_inside_a_host_app_only_the_studio_is_guarded(app_config):
    """With ``blueprints`` given, the guard and the headers leave the host app's own routes alone."""
    from flask import Blueprint
    from flask import Flask

    from history.config import load_settings

    host = Flask("host")
    host.config.update(SECRET_KEY="host-secret", STUDIO=load_settings(overrides={
        k: v for k, v in app_config.items() if k.startswith("STUDIO_")} | {"STUDIO_ADMIN_PASSWORD": PASSWORD}))
    studio_bp = Blueprint("studio_pages", __name__)
    studio_bp.add_url_rule("/studio/page", "page", lambda: "studio")
    host.register_blueprint(studio_bp)
    host.add_url_rule("/", "home", lambda: "host home")
    host.add_url_rule("/form", "form", lambda: "posted", methods=["POST"])
    login.init_app(host)
    guard.init_app(host, blueprints={"studio_pages"})
    client = host.test_client()
    assert client.get("/").data == b"host home"
    assert "Content-Security-Policy" not in client.get("/").headers
    assert client.post("/form").data == b"posted"
    assert client.get("/studio/page").status_code == 302

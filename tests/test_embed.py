"""Embedding (issue 8): CORS on the fragments, the compact list, URL prefixes, proxies and a host app mount."""
from __future__ import annotations

import datetime
import json
import re

import pytest
from bs4 import BeautifulSoup
from flask import Flask
from flask import render_template_string
from flask import url_for
from peewee import CharField
from peewee import Model
from peewee import SqliteDatabase

import history
from history import create_app
from history.config import ConfigError
from history.db import database
from history.models import Job
from history.web import cors
from history.web.history import LIST_ETAG_HEADER

ALLOWED = "http://dashboard.example:8000"
REFUSED = "http://evil.example"
HTMX_HEADERS = ("HX-Request", "HX-Current-URL", "HX-Source", "HX-Target", "HX-Request-Type", LIST_ETAG_HEADER)
# Attributes that hold a URL of ours: links, sources, forms, htmx requests, the websocket, data-*-url hooks.
URL_ATTRIBUTE = re.compile(r"^(href|src|action|hx-(get|post|put|patch|delete)|hx-ws:connect|data-href|data-[a-z-]*url)$")


def urls_in(html: str) -> list[str]:
    """Every URL the markup points at (data: URIs and in-page #anchors aside)."""
    found = []
    for element in BeautifulSoup(html, "html.parser").find_all(True):
        for name, value in element.attrs.items():
            if URL_ATTRIBUTE.match(name) and not value.startswith(("data:", "#")):
                found.append(value)
    return found


def build(app_config, **settings):
    """A studio app with extra settings (STUDIO_* names in lower case without the prefix)."""
    config = {**app_config, **{"STUDIO_" + key.upper(): value for key, value in settings.items()}, "START_RUNNER": False}
    return create_app(config)


@pytest.fixture
def embed_app(app_config):
    """A studio that lets ALLOWED fetch its fragments."""
    app = build(app_config, embed_origins=ALLOWED)
    yield app
    app.extensions["studio"].stop()
    if not database.is_closed():
        database.close()


@pytest.fixture
def embed_jobs(embed_app):
    """Two finished jobs (one failed, so it has a Retry button) with real files, in embed_app's store."""
    from tests.conftest import write_image

    settings = embed_app.config["STUDIO"]
    made = []
    with database.connection_context():
        for number, status in enumerate(("completed", "error")):
            output_dir = f"20261128_12000{number}_embed"
            ref = {"filename": "final_00001_.png", "subfolder": f"comfyui-studio/{output_dir}", "type": "output"}
            write_image(settings.output_dir / ref["subfolder"] / ref["filename"])
            queued = datetime.datetime(2026, 11, 28, 12, number, tzinfo=datetime.timezone.utc)
            Job.insert(
                prompt_id=f"job-{number}-{status}", workflow_id="txt2img-example", workflow_name="Text to image",
                status=status, queued_at=queued, started_at=queued, finished_at=queued + datetime.timedelta(seconds=5),
                duration=5.0, params={"positive_prompt": "a lighthouse"}, seeds={}, outputs=[ref], output=ref,
                output_dir=output_dir, error="boom" if status == "error" else None,
            ).execute()
            made.append(Job.get_by_id(f"job-{number}-{status}"))
    return made


def fragment_urls(prompt_id: str) -> list[str]:
    return ["/admin/history/list", f"/admin/history/jobs/{prompt_id}/card", f"/admin/history/jobs/{prompt_id}"]


# ---- CORS ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", range(3), ids=["list", "card", "overlay"])
def test_allowed_origin_gets_cors_headers_and_absolute_urls(embed_app, embed_jobs, kind):
    url = fragment_urls(embed_jobs[1].prompt_id)[kind]
    response = embed_app.test_client().get(url, headers={"Origin": ALLOWED, "HX-Request": "true"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "Origin" in response.vary
    html = response.get_data(as_text=True)
    assert "<html" not in html
    urls = urls_in(html)
    assert urls and all(u.startswith("http://localhost/") for u in urls), urls  # not the embedding page's site


def test_credentials_only_when_configured(app_config, embed_jobs, embed_app):
    embed_app.config["STUDIO"].embed_credentials = True
    response = embed_app.test_client().get("/admin/history/list", headers={"Origin": ALLOWED})
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED  # never "*" with credentials


@pytest.mark.parametrize("origin", [REFUSED, "null", ALLOWED.replace("8000", "8001"), "https://dashboard.example:8000", None])
@pytest.mark.parametrize("kind", range(3), ids=["list", "card", "overlay"])
def test_other_origins_get_no_cors_headers(embed_app, embed_jobs, origin, kind):
    url = fragment_urls(embed_jobs[0].prompt_id)[kind]
    headers = {"HX-Request": "true", **({"Origin": origin} if origin else {})}
    response = embed_app.test_client().get(url, headers=headers)
    assert not [name for name in response.headers.keys() if name.startswith("Access-Control-")]
    assert "Origin" in response.vary
    assert all(u.startswith("/") for u in urls_in(response.get_data(as_text=True)))


@pytest.mark.parametrize("kind", range(3), ids=["list", "card", "overlay"])
def test_preflight_from_allowed_origin_lists_the_htmx_headers(embed_app, embed_jobs, kind):
    url = fragment_urls(embed_jobs[0].prompt_id)[kind]
    response = embed_app.test_client().options(url, headers={
        "Origin": ALLOWED,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "hx-request,hx-current-url,x-list-etag",
    })
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    allowed = {name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {name.lower() for name in HTMX_HEADERS} <= allowed
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD"
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.vary


@pytest.mark.parametrize(
    ("origin", "method"), [(REFUSED, "GET"), ("null", "GET"), (ALLOWED, "DELETE"), (ALLOWED, "POST")]
)
def test_preflight_refused(embed_app, embed_jobs, origin, method):
    response = embed_app.test_client().options(
        "/admin/history/list", headers={"Origin": origin, "Access-Control-Request-Method": method}
    )
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.vary


@pytest.mark.parametrize("url", ["/api/admin/history", "/api/admin/history/delete", "/admin/history", "/admin/queue"])
def test_only_the_fragments_answer_other_origins(embed_app, url):
    client = embed_app.test_client()
    preflight = client.options(url, headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"})
    plain = client.get(url, headers={"Origin": ALLOWED})
    for response in (preflight, plain):
        assert "Access-Control-Allow-Origin" not in response.headers


def test_writes_from_another_site_are_refused_unless_it_is_an_embed_origin(embed_app, embed_jobs):
    client = embed_app.test_client()
    ids = {"prompt_ids": [embed_jobs[0].prompt_id]}
    refused = client.post("/api/admin/history/delete", json=ids, headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://other.example"})
    assert refused.status_code == 403
    # An embed origin is trusted the way Go's CrossOriginProtection trusts an added origin; its page still
    # reads no answer (no CORS headers outside the fragments), and a JSON post needs a preflight it never gets.
    allowed = client.post("/api/admin/history/delete", json=ids, headers={"Sec-Fetch-Site": "cross-site", "Origin": ALLOWED})
    assert allowed.status_code == 200 and allowed.json["deleted"] == ids["prompt_ids"]
    assert "Access-Control-Allow-Origin" not in allowed.headers


def test_frame_ancestors_name_the_embed_origins(embed_app):
    response = embed_app.test_client().get("/admin/history")
    assert f"frame-ancestors 'self' {ALLOWED}" in response.headers["Content-Security-Policy"]


def test_cors_module_lists_the_pages_etag_header():
    assert LIST_ETAG_HEADER in cors.ALLOWED_REQUEST_HEADERS


# ---- the compact list ------------------------------------------------------------------------------------

def test_compact_list_shows_thumbnail_name_and_status_and_keeps_the_flag(embed_app, embed_jobs):
    client = embed_app.test_client()
    html = client.get("/admin/history/list?compact=1&status=error&status=completed", headers={"HX-Request": "true"}).get_data(as_text=True)
    soup = BeautifulSoup(html, "html.parser")
    listing = soup.select_one("#job-list")
    assert "job-list-compact" in listing["class"]
    assert "compact=1" in listing["hx-get"] and "status=error" in listing["hx-get"]
    assert not listing.has_attr("hx-indicator")  # the embedding page has no LIVE pill
    cards = soup.select(".job-card[data-prompt-id][data-status]")
    assert [card["data-prompt-id"] for card in cards] == [embed_jobs[1].prompt_id, embed_jobs[0].prompt_id]
    for card in cards:
        assert card.select_one("img.job-thumb")["src"].startswith("/media/")
        assert card.select_one(".job-workflow").get_text(strip=True) == "Text to image"
        assert card.select_one(".status-badge").get_text(strip=True) == card["data-status"]
        assert not card.select(".job-times, .job-id, .job-excerpt, input.job-select, .job-select-placeholder, .retry-btn")
        assert not card.select_one(".job-workflow").has_attr("hx-get")  # no overlay to open on another page


def test_full_list_keeps_its_info_lines(embed_app, embed_jobs):
    html = embed_app.test_client().get("/admin/history/list", headers={"HX-Request": "true"}).get_data(as_text=True)
    soup = BeautifulSoup(html, "html.parser")
    assert "job-list-compact" not in soup.select_one("#job-list")["class"]
    assert "compact" not in soup.select_one("#job-list")["hx-get"]
    assert len(soup.select(".job-card .job-times")) == 2
    assert len(soup.select(".job-card .retry-btn")) == 1


def test_compact_further_pages_and_card_stay_compact(app_config):
    app = build(app_config, page_size=1)
    try:
        with database.connection_context():
            for minute in range(3):
                Job.insert(
                    prompt_id=f"p{minute}", workflow_id="w", workflow_name="W", status="completed",
                    queued_at=datetime.datetime(2026, 11, 28, 12, minute, tzinfo=datetime.timezone.utc),
                    params={}, seeds={}, outputs=[],
                ).execute()
        client = app.test_client()
        soup = BeautifulSoup(client.get("/admin/history/list?compact=1").get_data(as_text=True), "html.parser")
        more = soup.select_one(".list-sentinel")["hx-get"]
        assert "compact=1" in more
        page = BeautifulSoup(client.get(more).get_data(as_text=True), "html.parser")
        assert page.select(".job-card") and not page.select(".job-times")
        assert "compact=1" in page.select_one(".list-sentinel")["hx-get"]
        card = BeautifulSoup(client.get("/admin/history/jobs/p0/card?compact=1").get_data(as_text=True), "html.parser")
        assert card.select(".status-badge") and not card.select(".job-times, input.job-select")
    finally:
        app.extensions["studio"].stop()
        if not database.is_closed():
            database.close()


# ---- URL prefix, proxies ------------------------------------------------------------------------------------

def all_urls_follow(client, root: str, job_id: str, base: str = "") -> list[str]:
    """Fetch the page, list, card, overlay and job page under ``root``; return every URL they hold."""
    urls = []
    for path, headers in [
        ("/admin/history", {}),
        ("/admin/history/list", {"HX-Request": "true"}),
        (f"/admin/history/jobs/{job_id}/card", {}),
        (f"/admin/history/jobs/{job_id}", {"HX-Request": "true"}),
        (f"/admin/history/jobs/{job_id}", {}),
        ("/admin/queue", {}),
        (f"/admin/assets?dir={job_id}", {}),
    ]:
        response = client.get(base + root + path, headers=headers)
        assert response.status_code in (200, 404), (path, response.status_code)
        urls += urls_in(response.get_data(as_text=True))
    return urls


@pytest.fixture
def prefixed_app(app_config):
    app = build(app_config, url_prefix="/pre/")
    yield app
    app.extensions["studio"].stop()
    if not database.is_closed():
        database.close()


def add_job(settings, prompt_id="j1"):
    """A completed job with one real output file."""
    from tests.conftest import write_image

    ref = {"filename": "final_00001_.png", "subfolder": "comfyui-studio/out1", "type": "output"}
    write_image(settings.output_dir / ref["subfolder"] / ref["filename"])
    with database.connection_context():
        Job.insert(
            prompt_id=prompt_id, workflow_id="txt2img-example", workflow_name="T", status="error",
            queued_at=datetime.datetime(2026, 11, 28, 12, tzinfo=datetime.timezone.utc),
            params={"positive_prompt": "x"}, seeds={}, outputs=[ref], output=ref, output_dir="out1", input_image="in.png",
        ).execute()
    return prompt_id


def test_url_prefix_reaches_every_url(prefixed_app):
    client = prefixed_app.test_client()
    empty = client.get("/pre/admin/history/list").get_data(as_text=True)
    assert "<code>POST /pre/api/run/&lt;workflow_id&gt;/execute</code>" in empty
    assert "<p>" not in client.get("/pre/admin/history/list?compact=1").get_data(as_text=True)
    job_id = add_job(prefixed_app.config["STUDIO"])
    urls = all_urls_follow(client, "/pre", job_id)
    wrong = [u for u in urls if not (u.startswith("/pre/") or u.startswith("ws://localhost/pre/"))]
    assert not wrong
    assert "ws://localhost/pre/ws" in urls
    with client.get("/pre/static/htmx.min.js") as response:
        assert response.status_code == 200
    assert client.get("/admin/history").status_code == 404
    assert client.get("/static/htmx.min.js").status_code == 404
    add_job(prefixed_app.config["STUDIO"], "j2")
    link = client.get("/pre/api/admin/history?limit=1").headers.get("Link", "")
    assert link.startswith("</pre/api/admin/history?")


def test_url_prefix_login_redirect(app_config):
    app = build(app_config, url_prefix="/pre", admin_password="hunter2")
    try:
        client = app.test_client()
        response = client.get("/pre/admin/history?status=error")
        assert response.status_code == 302
        assert response.location == "/pre/login?next=/pre/admin/history?status%3Derror"
        assert client.get(response.location).status_code == 200
        login = client.post(response.location, data={"password": "hunter2"})
        assert login.status_code == 303 and login.location == "/pre/admin/history?status=error"
    finally:
        app.extensions["studio"].stop()


def test_proxy_fix_reads_forwarded_headers_only_when_set(app_config):
    forwarded = {
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "studio.example", "X-Forwarded-Prefix": "/tools",
        "X-Forwarded-For": "203.0.113.9", "Origin": "https://dash.example", "HX-Request": "true",
    }
    app = build(app_config, proxy_fix=1, embed_origins="https://dash.example")
    try:
        client = app.test_client()
        page = client.get("/admin/history", headers=forwarded).get_data(as_text=True)
        assert set(u[:7] for u in urls_in(page)) <= {"/tools/", "wss://s"}
        assert 'hx-ws:connect="wss://studio.example/tools/ws?events=' in page  # the list's events only
        fragment = client.get("/admin/history/list", headers=forwarded).get_data(as_text=True)
        assert re.search(r'hx-get="https://studio\.example/tools/admin/history/list"', fragment)
    finally:
        app.extensions["studio"].stop()
    app = build(app_config)
    try:
        page = app.test_client().get("/admin/history", headers=forwarded).get_data(as_text=True)
        assert "/tools/" not in page and "studio.example" not in page
    finally:
        app.extensions["studio"].stop()
        if not database.is_closed():
            database.close()


# ---- mounting in a host app -----------------------------------------------------------------------------------

class HostNote(Model):
    """A host app's own peewee model in its own database."""

    text = CharField()


@pytest.fixture
def host(app_config, tmp_path):
    """A host Flask app with its own database, config, templates and routes, and the studio under /studio."""
    host = Flask("host_app")
    own_db = SqliteDatabase(str(tmp_path / "host.db"))
    HostNote.bind(own_db)
    own_db.create_tables([HostNote])
    host.config.update(SECRET_KEY="host secret", DATABASE_URL=f"sqlite:///{tmp_path / 'host.db'}", MAX_CONTENT_LENGTH=None)

    @host.get("/")
    def home():
        with own_db.connection_context():
            notes = [note.text for note in HostNote.select()]
        return render_template_string(
            "{{ notes|tojson }} <a href=\"{{ url_for('studio.history.history', status='error') }}\">jobs</a>", notes=notes
        )

    @host.post("/notes")
    def add_note():
        with own_db.connection_context():
            HostNote.create(text="kept")
        return "", 204

    before = {key: host.config.get(key) for key in ("SECRET_KEY", "SESSION_COOKIE_NAME", "MAX_CONTENT_LENGTH", "DATABASE_URL")}
    host.test_config_before = before
    host.studio = history.init_app(host, "/studio", **app_config, START_RUNNER=False)
    yield host
    host.studio.extensions["studio"].stop()
    if not database.is_closed():
        database.close()


def test_mount_serves_the_studio_under_its_prefix(host):
    job_id = add_job(host.studio.config["STUDIO"])
    client = host.test_client()
    urls = all_urls_follow(client, "/studio", job_id)
    assert urls and not [u for u in urls if not (u.startswith("/studio/") or u.startswith("ws://localhost/studio/"))]
    with client.get("/studio/static/history.js") as response:
        assert response.status_code == 200
    media = [u for u in urls if u.startswith("/studio/media/")]
    for url in set(media):
        with client.get(url) as response:
            assert response.status_code == 200, url
    assert media
    assert client.get("/studio/api/admin/history").json[0]["prompt_id"] == job_id
    assert client.get("/studio/").location == "/studio/admin/history"
    assert client.get("/studio/api/nope").status_code == 404


def test_mount_leaves_the_host_alone(host):
    client = host.test_client()
    assert client.post("/notes").status_code == 204  # no CSRF guard on the host's own routes
    response = client.get("/")
    assert response.get_data(as_text=True).startswith('["kept"] <a href="/studio/admin/history?status=error">')
    assert "Content-Security-Policy" not in response.headers  # the studio's headers stay on the studio
    assert {key: host.config.get(key) for key in host.test_config_before} == host.test_config_before
    assert "local_time" not in host.jinja_env.filters and "csrf_token" not in host.jinja_env.globals
    assert client.get("/admin/history").status_code == 404
    assert host.extensions["studio_history"] is host.studio
    with pytest.raises(ConfigError):
        history.init_app(host, "/again")


def test_mount_url_for_outside_a_request(host):
    host.config["SERVER_NAME"] = "host.example"
    with host.app_context():
        assert url_for("studio.history.history_job", prompt_id="abc") == "http://host.example/studio/admin/history/jobs/abc"


def test_mount_login_redirect_and_cli(app_config):
    host = Flask("host_app")
    studio = history.init_app(host, "/studio", **app_config, admin_password="hunter2", START_RUNNER=False)
    try:
        client = host.test_client()
        response = client.get("/studio/admin/history")
        assert response.status_code == 302 and response.location == "/studio/login?next=/studio/admin/history"
        assert client.get("/studio/api/admin/history").status_code == 401
        add_job(studio.config["STUDIO"], "exported-job")
        result = host.test_cli_runner().invoke(args=["studio", "history", "export"])
        assert result.exit_code == 0, result.output
        assert [record["prompt_id"] for record in json.loads(result.output)] == ["exported-job"]
    finally:
        studio.extensions["studio"].stop()
        if not database.is_closed():
            database.close()


def test_mount_behind_a_proxy_prefix(app_config):
    host = Flask("host_app")
    studio = history.init_app(host, "/studio", **app_config, proxy_fix="1", START_RUNNER=False)
    try:
        page = host.test_client().get("/studio/admin/history", headers={"X-Forwarded-Prefix": "/edge"}).get_data(as_text=True)
        assert 'data-page-url="/edge/studio/admin/history"' in page
    finally:
        studio.extensions["studio"].stop()
        if not database.is_closed():
            database.close()

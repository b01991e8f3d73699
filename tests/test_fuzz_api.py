"""Hypothesis throws malformed requests at every route: never a 5xx, never a file touched outside the output folder.

Routes come from the app's url_map, so a new endpoint is fuzzed without a change here. Each route gets
STUDIO_TEST_FUZZ_EXAMPLES requests (default 25, so a run throws over 500 in all and stays quick; set
500 for the issue's every-endpoint figure) and STUDIO_TEST_FUZZ_EXAMPLES_PG on PostgreSQL (default 15):
odd path arguments (traversals, encodings, NUL, look-alike dots, lone surrogates, real ids), query
strings with the known keys and junk (digits that are not ASCII: '²', '①', 5,000 of them), htmx/fetch-metadata/conditional headers, and bodies of every kind (random JSON, near-valid
delete and execute payloads, forms, multipart uploads of random bytes and broken images, raw bytes under
any content type, JSON nested from 33 to 5,000 deep). Refusals under /api/ must be JSON with an ``error``;
afterwards every page (the history page, its list, a search, each job's card and overlay) still renders. A sentinel tree beside the data
folder (with symlinks into it from the output and input folders) and the data folder's own files are
hashed before and after. The counts are printed in the terminal summary.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from urllib.parse import quote
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

EXAMPLES = int(os.environ.get("STUDIO_TEST_FUZZ_EXAMPLES", "25"))
EXAMPLES_PG = int(os.environ.get("STUDIO_TEST_FUZZ_EXAMPLES_PG", "15"))
SECRET = b"SENTINEL-fuzz"
TOTALS: Counter = Counter()
PER_ROUTE: dict[str, Counter] = {}

NASTY = [
    "..", "../..", "../../outside/secret.txt", "%2e%2e%2f", "..%2f..%2f", "..%252f", "/etc/passwd", "\x00", "a\x00b",
    "..\\..\\x", "C:\\Windows\\win.ini", "\uff0e\uff0e/x", "\u2024\u2024/x", "comfyui-studio/linked/secret.txt",
    "linked/secret.txt", "comfyui-studio/../../outside/secret.txt", "' OR 1=1 --", "<script>alert(1)</script>",
    "x" * 5000, "", " ", "%", "%%", "%00", "\ud800", "a\udfffb", "😀", "\u202e", "-1", "0", "99999999999999999999",
    "²", "①", "٣", "9" * 5000,
]
QUERY_KEYS = ["status", "workflow_id", "q", "limit", "before", "since", "dir", "v", "next", "compact", "page", "kind"]
# What a client can put in a header at all (no line breaks; latin-1, as WSGI carries headers).
header_text = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)
HEADER_CHOICES = {
    "HX-Request": st.sampled_from(["true", "false", ""]),
    "HX-Current-URL": st.sampled_from(["http://localhost/admin/history", "http://evil.test/", "not a url", "//x"]),
    "X-List-ETag": header_text,
    "If-None-Match": st.sampled_from(['"abc"', "*", "W/\"x\"", "garbage", ""]),
    "If-Modified-Since": st.sampled_from(["Sat, 28 Nov 2026 12:00:00 GMT", "yesterday", ""]),
    "Range": st.sampled_from(["bytes=0-10", "bytes=-5", "bytes=100-1", "bytes=0-0,5-6", "lines=1-2", "bytes=99999999-"]),
    "Origin": st.sampled_from(["http://localhost", "http://evil.test", "null"]),
    "Sec-Fetch-Site": st.sampled_from(["same-origin", "same-site", "cross-site", "none", "", "junk"]),
    "Accept": st.sampled_from(["text/html", "application/json", "*/*", "image/webp", ""]),
    "Authorization": st.sampled_from(["Bearer x", "Basic Zm9vOmJhcg==", "Bearer", ""]),
}


def png_bytes(size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


PNG = png_bytes()
# A PNG header that claims 100000 x 100000 pixels (a decompression bomb by its size), and a cut-off PNG.
BOMB = PNG[:16] + (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big") + PNG[24:]
UPLOADS = st.one_of(st.binary(max_size=300), st.sampled_from([PNG, PNG[: len(PNG) // 2], BOMB, b"GIF89a" + b"\0" * 20]))

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30), st.sampled_from(NASTY),
    ),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12) | st.sampled_from(
        ["prompt_ids", "params", "input_image", "retry_of", "seed", "scenes", "positive_prompt", "width"]), children, max_size=5),
    max_leaves=12,
)
delete_bodies = st.fixed_dictionaries({"prompt_ids": st.one_of(json_values, st.lists(st.sampled_from(NASTY) | st.text(max_size=70), max_size=30))})
execute_bodies = st.fixed_dictionaries(
    {"params": st.one_of(json_values, st.dictionaries(st.sampled_from(
        ["positive_prompt", "negative_prompt", "seed", "width", "height", "batch_size", "scenes", "frames", "strength", "x"]),
        json_values, max_size=6))},
    optional={"input_image": json_values, "retry_of": json_values, "extra": json_values},
)


@st.composite
def bodies(draw):
    """(kwargs for the test client) for a body of some kind."""
    kind = draw(st.sampled_from(["none", "json", "delete", "execute", "form", "multipart", "raw", "deep"]))
    if kind == "none":
        return {}
    if kind == "deep":
        # Nested past any record's depth, up to past Python's recursion limit (a RecursionError once escaped).
        depth = draw(st.sampled_from([33, 200, 1000, 5000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"params": ', "}"), ('{"prompt_ids": [', "]}")]))
        return {"data": opener * depth + "1" + closer * depth, "content_type": "application/json"}
    if kind in ("json", "delete", "execute"):
        value = draw({"json": json_values, "delete": delete_bodies, "execute": execute_bodies}[kind])
        return {"data": json.dumps(value), "content_type": "application/json"}
    if kind == "form":
        fields = draw(st.dictionaries(st.sampled_from(["password", "next", "csrf_token", "params", "prompt_ids", "x"]),
                                      st.text(max_size=50) | st.sampled_from(NASTY), max_size=4))
        # Encoded here: the test client cannot encode a lone surrogate, which a raw client can still send.
        encoded = urlencode([(k, v.encode("utf-8", "surrogatepass")) for k, v in fields.items()])
        return {"data": encoded, "content_type": "application/x-www-form-urlencoded"}
    if kind == "multipart":
        fields = draw(st.dictionaries(st.sampled_from(["params", "retry_of", "input_image", "csrf_token"]),
                                      st.text(max_size=40) | st.just(json.dumps({"width": 64})), max_size=3))
        upload = draw(UPLOADS)
        name = draw(st.sampled_from(["in.png", "../../x.png", "a\x00.png", "", "x.svg", "😀.webp"]))
        fields["input_image"] = (io.BytesIO(upload), name)
        return {"data": fields, "content_type": "multipart/form-data"}
    raw = draw(st.binary(max_size=400))
    content_type = draw(st.sampled_from(["application/json", "text/plain", "application/octet-stream",
                                         "multipart/form-data; boundary=zz", "application/x-www-form-urlencoded",
                                         "image/png", "application/json; charset=utf-16"]))
    return {"data": raw, "content_type": content_type}


def route_id(rule) -> str:
    return f"{rule.rule} [{','.join(sorted(rule.methods - {'HEAD', 'OPTIONS'}))}]"


def fuzzable_rules(app):
    # The websocket needs a real socket (the test client cannot upgrade): tests/test_csrf_headers.py and
    # the websocket tests cover it over a live server.
    return [rule for rule in app.url_map.iter_rules() if not rule.websocket]


def rule_ids():
    from history import create_app
    import tempfile

    app = create_app({"TESTING": True, "STUDIO_DATA_DIR": tempfile.mkdtemp(prefix="fuzz-ids-"), "STUDIO_DEMO": "0",
                      "START_RUNNER": False})
    try:
        return [route_id(rule) for rule in fuzzable_rules(app)]
    finally:
        app.extensions["studio"].stop()


ROUTES = rule_ids()


@pytest.fixture
def sentinel(tmp_path, settings):
    """Files that no request may touch, and symlinks inside the served folders leading to them."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    studio = settings.output_dir / "comfyui-studio"
    studio.mkdir(parents=True, exist_ok=True)
    (studio / "linked").symlink_to(outside, target_is_directory=True)
    (settings.input_dir / "linked.png").symlink_to(outside / "secret.txt")
    # The data dir's own files too, but not what requests may legitimately change: the database, the
    # thumbnail cache, the input folder (uploads) and the output folder. (The checkout itself is left out:
    # people edit it while tests run.)
    changing = {settings.output_dir, settings.input_dir, settings.thumbnail_dir}

    def digest():
        found = {}
        for path in sorted(outside.rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(settings.data_dir.rglob("*")):
            if any(path == root or root in path.parents for root in changing) or path.name.startswith("studio.db"):
                continue
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        return found

    return digest


class CountsReport:
    """Prints the fuzz counts in the terminal summary (output written during a test would be captured)."""

    def pytest_terminal_summary(self, terminalreporter):
        if not TOTALS:
            return
        statuses = dict(sorted((k, v) for k, v in TOTALS.items() if isinstance(k, int)))
        terminalreporter.write_sep("-", "fuzz counts")
        terminalreporter.write_line(
            f"fuzz: {TOTALS['requests']} malformed requests over {len(PER_ROUTE)} routes, "
            f"5xx: {TOTALS['5xx']}, statuses: {statuses}"
        )
        for route, counts in sorted(PER_ROUTE.items()):
            terminalreporter.write_line(f"  {counts['requests']:>6}  {route}")


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """Register the counts report once per session."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("studio-fuzz-counts"):
        manager.register(CountsReport(), "studio-fuzz-counts")
    yield


@pytest.mark.parametrize("route", ROUTES)
def test_malformed_requests_never_get_a_5xx(app, make_job, settings, sentinel, database_kind, route):
    job = make_job(status="error")
    client = app.test_client()  # no Origin of its own: each example picks one
    real_ids = [job.prompt_id, job.output_dir, f"comfyui-studio/{job.output_dir}/{job.outputs[0]['filename']}", "txt2img-example"]
    rule = next(rule for rule in fuzzable_rules(app) if route_id(rule) == route)
    methods = sorted(rule.methods - {"OPTIONS"})
    before = sentinel()
    counts = PER_ROUTE.setdefault(f"{route} ({database_kind})", Counter())
    arguments = st.fixed_dictionaries({
        name: st.one_of(st.sampled_from(NASTY + real_ids), st.text(min_size=1, max_size=60))
        for name in rule.arguments
    })
    examples = EXAMPLES if database_kind == "sqlite" else EXAMPLES_PG

    @hypothesis_settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))
    @given(
        # Mostly the route's own methods (a wrong one only reaches the 405), mostly from this site's origin
        # (a cross-site one only reaches the cross-origin refusal).
        method=st.sampled_from(methods * 8 + ["POST", "PUT", "DELETE", "PATCH"]),
        same_origin=st.sampled_from([True, True, True, False]),
        values=arguments,
        query=st.lists(st.tuples(st.sampled_from(QUERY_KEYS) | st.text(max_size=8), st.sampled_from(NASTY) | st.text(max_size=30)), max_size=5),
        headers=st.dictionaries(st.sampled_from(sorted(HEADER_CHOICES)), st.just(None), max_size=5).flatmap(
            lambda chosen: st.fixed_dictionaries({key: HEADER_CHOICES[key] for key in chosen})),
        body=bodies(),
    )
    def throw(method, same_origin, values, query, headers, body):
        if same_origin:
            headers.setdefault("Origin", "http://localhost")
        path = rule.rule
        for name, value in values.items():
            safe = "/" if type(rule._converters[name]).__name__ == "PathConverter" else ""
            path = path.replace(f"<{name}>", quote(str(value).encode("utf-8", "surrogatepass"), safe=safe))
            for converter in ("path", "int", "string"):
                path = path.replace(f"<{converter}:{name}>", quote(str(value).encode("utf-8", "surrogatepass"), safe=safe))
        if "<any(" in path:
            path = path.replace(path[path.index("<any("):path.index(">", path.index("<any(")) + 1], "output")
        url = path + ("?" + urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                                       for k, v in query]) if query else "")
        with client.open(url, method=method, headers={k: v for k, v in headers.items() if v is not None}, **body) as response:
            status = response.status_code
            data = response.get_data()
        counts["requests"] += 1
        TOTALS["requests"] += 1
        TOTALS[status] += 1
        if status >= 500:
            TOTALS["5xx"] += 1
        assert status < 500, (method, url, headers, body, status, data[:500])
        assert SECRET not in data
        if status >= 400 and path.startswith("/api/") and method != "HEAD":
            assert json.loads(data)["error"], (method, url, status, data[:200])

    throw()
    assert counts["requests"] >= examples
    assert sentinel() == before
    assert_every_page_renders(client)


def assert_every_page_renders(client):
    """No page is broken by what the requests stored: the history page, its list, a search, and each job's
    card, overlay and record (a stored value that UTF-8 cannot encode once made all of them 500)."""
    records = client.get("/api/admin/history?limit=1000", headers={"Origin": "http://localhost"})
    assert records.status_code == 200
    urls = ["/admin/history", "/admin/history/list", "/admin/history?q=a", "/admin/queue"]
    for record in records.json:
        prompt_id = record["prompt_id"]
        urls += [f"/admin/history/jobs/{quote(prompt_id)}", f"/admin/history/jobs/{quote(prompt_id)}/card"]
    for url in urls:
        with client.get(url) as response:
            assert response.status_code == 200, (url, response.status_code)


NUL_BODIES = [
    ("/api/admin/history/delete", {"prompt_ids": ["\x00"]}),
    ("/api/admin/history/usage", {"prompt_ids": ["a\x00b"]}),
    ("/api/admin/history/export", {"prompt_ids": ["\x00"]}),
    ("/api/run/txt2img-example/execute", {"retry_of": "a\x00"}),
    ("/api/run/txt2img-example/execute", {"input_image": "a\x00.png"}),
    ("/api/run/txt2img-example/execute", {"params": {"positive_prompt": "a\x00b"}}),
]
NUL_URLS = [
    "/api/admin/history?q=%00", "/api/admin/history?workflow_id=%00", "/api/admin/history?before=%00",
    "/api/admin/history/%00", "/api/admin/history/%00/package", "/admin/history/jobs/%00", "/admin/history/jobs/%00/card",
    "/admin/assets?dir=%00", "/admin/history?workflow_id=%00", "/admin/history/list?since=%00",
]


def test_nul_bytes_never_reach_the_database(client):
    """PostgreSQL refuses a NUL in text with an exception: each place a string meets a query says 4xx first."""
    for path, body in NUL_BODIES:
        response = client.post(path, json=body)
        assert 400 <= response.status_code < 500, (path, body, response.status_code)
        assert response.json["error"]
    for url in NUL_URLS:
        with client.get(url) as response:
            assert 400 <= response.status_code < 500, (url, response.status_code)

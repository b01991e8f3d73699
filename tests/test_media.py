"""/media: output and input files and thumbnails, served only from inside their folders, never as pages."""
from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pytest
from flask import render_template_string
from flask.testing import FlaskClient
from PIL import Image

from history import thumbnails
from history.web import media
from tests.conftest import png_header

SECRET = "top secret: outside every served folder"
# The media views and their template globals read files only, never the store: a test of them that makes no
# job would be the same run on PostgreSQL, so it runs once.
FILES_ONLY = pytest.mark.sqlite_only
IMMUTABLE = "public, max-age=31536000, immutable"


def write_png(path: Path, size=(640, 480), color=(255, 136, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.new("RGB", size, color) as image:
        image.save(path)
    return path


def ref_path(ref: dict) -> str:
    return f"{ref['subfolder']}/{ref['filename']}"


class BufferedClient(FlaskClient):
    """A test client that reads each answer in full and closes it, as a WSGI server would.

    send_file hands over an open file; a 304 or a partial answer that nobody closes would leak it
    (and filterwarnings=error turns that ResourceWarning into a failure).
    """

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture
def client(app):
    """The app's test client, buffered (see BufferedClient)."""
    app.test_client_class = BufferedClient
    return app.test_client()


@pytest.fixture
def job(make_job):
    """A completed job with two real PNG outputs."""
    return make_job(files=2)


@pytest.fixture
def secret(settings) -> Path:
    """A file beside the output and input folders that no URL may reach."""
    path = settings.data_dir / "secret.txt"
    path.write_text(SECRET)
    return path


@pytest.fixture
def reads(monkeypatch, settings) -> list:
    """Every file the media views send or thumbnail; the test asserts none is outside the folders."""
    seen = []
    send_file = media.send_file
    make_thumbnail = thumbnails.make_thumbnail

    def spy_send(path, *args, **kwargs):
        seen.append(Path(path))
        return send_file(path, *args, **kwargs)

    def spy_thumbnail(source, cache_dir, *recipe):
        seen.append(Path(source))
        return make_thumbnail(source, cache_dir, *recipe)

    monkeypatch.setattr(media, "send_file", spy_send)
    monkeypatch.setattr(thumbnails, "make_thumbnail", spy_thumbnail)
    return seen


def inside_served_folders(path: Path, app) -> bool:
    settings = app.config["STUDIO"]
    resolved = path.resolve()
    roots = (settings.output_dir, settings.input_dir, settings.thumbnail_dir, Path(app.static_folder))
    return any(resolved == root.resolve() or root.resolve() in resolved.parents for root in roots)


# ---- Output and input files ---------------------------------------------------------------------

def test_output_file_is_served_with_validators(client, job):
    ref = job.outputs[0]
    response = client.get(f"/media/output/{ref_path(ref)}")
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["ETag"] and response.headers["Last-Modified"]
    with Image.open(BytesIO(response.data)) as image:
        assert image.size == (256, 256)

    again = client.get(f"/media/output/{ref_path(ref)}", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304
    since = client.get(
        f"/media/output/{ref_path(ref)}", headers={"If-Modified-Since": response.headers["Last-Modified"]}
    )
    assert since.status_code == 304


def test_output_file_supports_ranges(client, job):
    response = client.get(f"/media/output/{ref_path(job.outputs[0])}", headers={"Range": "bytes=0-7"})
    assert response.status_code == 206
    assert response.data == b"\x89PNG\r\n\x1a\n"


@FILES_ONLY
def test_video_is_served_inline(client, settings):
    video = settings.output_dir / "comfyui-studio" / "job1" / "clip_00001.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    response = client.get("/media/output/comfyui-studio/job1/clip_00001.mp4")
    assert response.status_code == 200
    assert response.mimetype == "video/mp4"
    assert "attachment" not in response.headers.get("Content-Disposition", "")


@FILES_ONLY
@pytest.mark.parametrize("name", [
    "page.html", "page.htm", "page.xhtml", "vector.svg", "script.js", "data.xml", "no-extension", "thing.unknownext",
])
def test_risky_and_unknown_types_are_downloads(client, settings, name):
    path = settings.output_dir / "comfyui-studio" / "job1" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html><script>alert(1)</script></html>")
    response = client.get(f"/media/output/comfyui-studio/job1/{name}")
    assert response.status_code == 200
    assert response.mimetype == "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("attachment")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@FILES_ONLY
def test_input_file_is_served(client, settings):
    write_png(settings.input_dir / "portrait.png", size=(90, 60))
    response = client.get("/media/input/portrait.png")
    assert response.status_code == 200
    assert response.mimetype == "image/png"


@FILES_ONLY
@pytest.mark.parametrize("url", [
    "/media/output/comfyui-studio/nope/final_00001_.png",
    "/media/output/comfyui-studio",
    "/media/input/missing.png",
    "/media/thumb/video/comfyui-studio/x.png",
])
def test_missing_or_not_a_file_is_404(client, settings, url):
    (settings.output_dir / "comfyui-studio").mkdir(parents=True, exist_ok=True)
    assert client.get(url).status_code == 404


# ---- Path escapes -------------------------------------------------------------------------------

ESCAPES = [
    "../secret.txt",
    "%2e%2e/secret.txt",
    "%2E%2E/secret.txt",
    "..%2fsecret.txt",
    "%2e%2e%2fsecret.txt",
    "comfyui-studio/../../secret.txt",
    "comfyui-studio/%2e%2e/%2e%2e/secret.txt",
    "/" + "{data_dir}/secret.txt",  # an absolute path: //data/... (merged to a relative one, still inside)
    "%2F{data_dir}/secret.txt",
    "secret.txt%00.png",
    "..%5csecret.txt",
    "..\\secret.txt",
    "comfyui-studio/leak/secret.txt",  # a symlinked folder that leads out
    "comfyui-studio/job1/link.png",  # a symlinked file that leads out
]
PREFIXES = ["/media/output/", "/media/input/", "/media/thumb/output/", "/media/thumb/input/", "/media/preview/output/"]


@pytest.fixture
def escape_links(settings, secret):
    """Symlinks inside both folders that point outside them."""
    for root in (settings.output_dir, settings.input_dir):
        studio = root / "comfyui-studio"
        (studio / "job1").mkdir(parents=True, exist_ok=True)
        (studio / "leak").symlink_to(settings.data_dir, target_is_directory=True)
        (studio / "job1" / "link.png").symlink_to(secret)
    (settings.input_dir / "link.png").symlink_to(secret)


@FILES_ONLY
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("bad", ESCAPES)
def test_path_escapes_are_404_and_read_nothing(app, client, settings, escape_links, reads, prefix, bad):
    url = prefix + bad.format(data_dir=str(settings.data_dir).lstrip("/"))
    response = client.get(url, follow_redirects=True)
    if response.history:
        # Werkzeug merges the slashes of an absolute path (308), which makes it relative to the folder:
        # a missing file there, so a 404 (or, for a thumbnail, the placeholder).
        assert response.request.path.startswith(prefix)
        assert response.status_code == 404 or response.headers.get("X-Thumbnail") == "placeholder"
    else:
        assert response.status_code == 404
    assert SECRET.encode() not in response.data
    assert all(inside_served_folders(path, app) for path in reads), reads
    assert not any(path.resolve() == settings.data_dir / "secret.txt" for path in reads)


@pytest.mark.parametrize("setting", ["STUDIO_INPUT_DIR", "STUDIO_OUTPUT_DIR"])
def test_a_media_folder_above_the_data_dir_stops_start_up(tmp_path, setting):
    from history import ConfigError
    from history import create_app

    # A folder set above the data dir (say STUDIO_INPUT_DIR=. beside ./data) would serve the key and database.
    with pytest.raises(ConfigError, match="must not contain STUDIO_DATA_DIR"):
        create_app({"TESTING": True, "STUDIO_DATA_DIR": str(tmp_path / "data"), "STUDIO_DEMO": "0", setting: str(tmp_path)})


@FILES_ONLY
def test_a_symlink_that_stays_inside_is_served(client, settings):
    target = write_png(settings.output_dir / "comfyui-studio" / "job1" / "real.png")
    (target.parent / "alias.png").symlink_to(target)
    assert client.get("/media/output/comfyui-studio/job1/alias.png").status_code == 200


# ---- Thumbnails ---------------------------------------------------------------------------------

def test_versioned_thumbnail_is_immutable(app, client, job):
    ref = job.outputs[0]
    with app.test_request_context():
        url = media.thumbnail_url(ref)
    assert url.startswith(f"/media/thumb/output/{ref_path(ref)}?v=")
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "image/webp"
    assert response.headers["Cache-Control"] == IMMUTABLE
    assert "X-Thumbnail" not in response.headers
    with Image.open(BytesIO(response.data)) as thumbnail:
        assert thumbnail.format == "WEBP" and thumbnail.size == (120, 120)
    assert len(response.data) < 2_000
    again = client.get(url, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


def test_the_overlays_preview_is_larger_keeps_the_aspect_and_is_immutable(app, client, settings, make_job):
    job = make_job(files=0, outputs=[{"filename": "wide_00001_.png", "subfolder": "comfyui-studio/wide", "type": "output"}])
    write_png(settings.output_dir / "comfyui-studio" / "wide" / "wide_00001_.png", size=(1280, 768))
    with app.test_request_context():
        url = media.preview_url(job.outputs[0])
    assert url.startswith("/media/preview/output/comfyui-studio/wide/wide_00001_.png?v=")
    response = client.get(url)
    assert response.mimetype == "image/webp" and response.headers["Cache-Control"] == IMMUTABLE
    with Image.open(BytesIO(response.data)) as preview:
        assert preview.size == (720, 432)


@pytest.mark.parametrize("query", ["", "?v=", "?v=1.0.0", "?v=stale"])
def test_unversioned_or_stale_thumbnail_is_revalidated(client, job, query):
    response = client.get(f"/media/thumb/output/{ref_path(job.outputs[0])}{query}")
    assert response.status_code == 200
    assert response.mimetype == "image/webp"
    assert response.headers["Cache-Control"] == "no-cache"


def test_thumbnail_made_once_and_remade_when_the_source_changes(app, client, settings, job, monkeypatch):
    renders = []
    render = thumbnails.render
    monkeypatch.setattr(thumbnails, "render", lambda handle, *recipe: renders.append(1) or render(handle, *recipe))
    ref = job.outputs[0]
    with app.test_request_context():
        first_url = media.thumbnail_url(ref)
    client.get(first_url)
    client.get(first_url)
    assert len(renders) == 1

    source = settings.output_dir / ref["subfolder"] / ref["filename"]
    write_png(source, size=(300, 200), color=(0, 0, 255))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    with app.test_request_context():
        second_url = media.thumbnail_url(ref)
    assert second_url != first_url
    stale = client.get(first_url)
    assert stale.headers["Cache-Control"] == "no-cache"  # the old URL no longer names this content
    fresh = client.get(second_url)
    assert fresh.headers["Cache-Control"] == IMMUTABLE
    assert len(renders) == 2
    with Image.open(BytesIO(fresh.data)) as thumbnail:
        assert thumbnail.convert("RGB").getpixel((60, 60))[2] > 200


def test_thumbnails_behind_a_login_are_private(tmp_path):
    from history import create_app

    guarded = create_app({"TESTING": True, "STUDIO_DATA_DIR": str(tmp_path / "g"), "STUDIO_DEMO": "0",
                          "STUDIO_ADMIN_PASSWORD": "correct horse", "STUDIO_API_TOKEN": "bench-token-123"})
    try:
        write_png(guarded.config["STUDIO"].output_dir / "comfyui-studio" / "d" / "a.png")
        ref = {"filename": "a.png", "subfolder": "comfyui-studio/d", "type": "output"}
        url = media_url(guarded, "thumbnail_url", ref)
        guarded.test_client_class = BufferedClient
        client = guarded.test_client()
        bearer = {"Authorization": "Bearer bench-token-123"}
        response = client.get(url, headers=bearer)
        assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
        placeholder = client.get("/media/thumb/output/comfyui-studio/d/missing.png", headers=bearer)
        assert placeholder.headers["Cache-Control"] == "private, max-age=60"
    finally:
        guarded.extensions["studio"].stop()


@FILES_ONLY
def test_input_thumbnail(app, client, settings):
    write_png(settings.input_dir / "portrait.png", size=(90, 160))
    with app.test_request_context():
        url = media.input_thumbnail_url("portrait.png")
    assert url.startswith("/media/thumb/input/portrait.png?v=")
    response = client.get(url)
    assert response.mimetype == "image/webp"
    assert response.headers["Cache-Control"] == IMMUTABLE


BAD_SOURCES = {
    "corrupt": b"\x89PNG\r\n\x1a\n" + b"\x13" * 300,
    "truncated": None,  # filled from a real PNG below
    "bomb": png_header(100_000, 100_000),
    "over the pixel limit": png_header(8_500, 8_500),
    "not an image": b"hello, I am text",
    "empty": b"",
}


@FILES_ONLY
@pytest.mark.parametrize("case", [*BAD_SOURCES, "missing", "video"])
def test_unthumbnailable_sources_get_the_placeholder(client, settings, case):
    folder = settings.output_dir / "comfyui-studio" / "job1"
    folder.mkdir(parents=True)
    name = "clip.mp4" if case == "video" else "final_00001_.png"
    if case == "truncated":
        with Image.effect_noise((300, 300), 50) as noise:
            buffer = BytesIO()
            noise.save(buffer, format="PNG")
        (folder / name).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif case == "video":
        (folder / name).write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    elif case != "missing":
        (folder / name).write_bytes(BAD_SOURCES[case])
    response = client.get(f"/media/thumb/output/comfyui-studio/job1/{name}?v=1.0.0")
    assert response.status_code == 200
    assert response.headers["X-Thumbnail"] == "placeholder"
    assert response.mimetype == "image/svg+xml"
    assert "immutable" not in response.headers["Cache-Control"]
    assert "max-age=60" in response.headers["Cache-Control"]
    assert response.data.startswith(b"<svg")
    assert not list(settings.thumbnail_dir.rglob("*.webp")) if settings.thumbnail_dir.exists() else True


# ---- Template globals ---------------------------------------------------------------------------

def render(app, source: str, **context) -> str:
    with app.test_request_context():
        return render_template_string(source, **context).strip()


def media_url(app, build, ref) -> str:
    """A media URL as the view-models build it (history.web.media), inside a request."""
    from history.web import media

    with app.test_request_context():
        return getattr(media, build)(ref)


def test_media_urls_are_built_for_the_view_models(app, job):
    ref = job.outputs[0]
    assert media_url(app, "output_url", ref) == f"/media/output/{ref_path(ref)}"
    assert media_url(app, "thumbnail_url", ref).startswith(f"/media/thumb/output/{ref_path(ref)}?v=1.")
    html = render(app, '<img class="job-thumb" src="{{ url }}">', url=media_url(app, "thumbnail_url", job.output))
    assert "?v=" in html and "&amp;" not in html


def test_url_prefix_is_respected(tmp_path):
    from history import create_app

    prefixed = create_app({"TESTING": True, "STUDIO_DATA_DIR": str(tmp_path / "p"), "STUDIO_DEMO": "0",
                           "STUDIO_URL_PREFIX": "/studio"})
    try:
        write_png(prefixed.config["STUDIO"].output_dir / "comfyui-studio" / "d" / "a.png")
        ref = {"filename": "a.png", "subfolder": "comfyui-studio/d", "type": "output"}
        url = media_url(prefixed, "thumbnail_url", ref)
        assert url.startswith("/studio/media/thumb/output/comfyui-studio/d/a.png?v=")
        prefixed.test_client_class = BufferedClient
        assert prefixed.test_client().get(url).mimetype == "image/webp"
    finally:
        prefixed.extensions["studio"].stop()


@FILES_ONLY
@pytest.mark.parametrize("ref", [
    None,
    "final.png",
    {},
    {"filename": None},
    {"filename": "missing.png", "subfolder": "comfyui-studio/x", "type": "output"},
    {"filename": "../secret.txt", "subfolder": "", "type": "output"},
    {"filename": "secret.txt", "subfolder": "..", "type": "output"},
    {"filename": "secret.txt", "subfolder": "/etc", "type": "output"},
    {"filename": "a\x00.png", "subfolder": "", "type": "output"},
    {"filename": "a.png", "subfolder": "comfyui-studio\\..\\..", "type": "output"},
    {"filename": "final_00001_.png", "subfolder": "", "type": "temp"},
])
def test_globals_give_none_for_missing_or_unsafe_refs(app, secret, ref):
    with app.test_request_context():
        assert media.output_url(ref) is None
        assert media.thumbnail_url(ref) is None


@FILES_ONLY
def test_no_thumbnail_url_for_videos(app, settings):
    video = settings.output_dir / "comfyui-studio" / "job1" / "clip.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"\x00" * 32)
    ref = {"filename": "clip.mp4", "subfolder": "comfyui-studio/job1", "type": "output"}
    with app.test_request_context():
        assert media.thumbnail_url(ref) is None
        assert media.output_url(ref) == "/media/output/comfyui-studio/job1/clip.mp4"


@FILES_ONLY
@pytest.mark.parametrize("name", [None, "", "missing.png", "../secret.txt", "/etc/passwd", "a\x00.png", "..\\x.png"])
def test_input_globals_give_none(app, secret, name):
    with app.test_request_context():
        assert media.input_url(name) is None
        assert media.input_thumbnail_url(name) is None


@FILES_ONLY
def test_input_globals_allow_subfolders(app, settings):
    write_png(settings.input_dir / "pasted" / "image.png")
    with app.test_request_context():
        assert media.input_url("pasted/image.png") == "/media/input/pasted/image.png"
        assert media.input_thumbnail_url("pasted/image.png").startswith("/media/thumb/input/pasted/image.png?v=")


@FILES_ONLY
@pytest.mark.parametrize("size, text", [
    (None, ""), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (1536, "1.5 KB"),
    (5 * 1024**2, "5.0 MB"), (250 * 1024**2, "250 MB"), (3 * 1024**3, "3.0 GB"), (2 * 1024**5, "2048 TB"),
])
def test_human_size(app, size, text):
    assert render(app, "{{ human_size(size) }}", size=size) == text


def test_output_views_draw_each_kind_as_it_plays(app, settings, make_job):
    folder = "comfyui-studio/mixed"
    names = ["still_00001_.png", "clip_00001_.webp", "clip_00001_.mp4", "notes.txt", "gone.png"]
    refs = [{"filename": name, "subfolder": folder, "type": "output"} for name in names]
    refs[1]["animated"] = True
    write_png(settings.output_dir / folder / names[0], size=(1440, 960))
    frames = [Image.new("RGB", (320, 192), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(settings.output_dir / folder / names[1], save_all=True, append_images=frames[1:], duration=100)
    (settings.output_dir / folder / names[2]).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (settings.output_dir / folder / names[3]).write_text("x")
    job = make_job(files=0, outputs=refs)
    with app.test_request_context():
        views = media.output_views(job)
    assert [view.kind for view in views] == ["image", "animated", "video", "file", "missing"]
    still, animated, video = views[:3]
    assert still.src.startswith("/media/preview/output/") and (still.width, still.height) == (720, 480)
    assert animated.src == animated.url == f"/media/output/{folder}/{names[1]}" and (animated.width, animated.height) == (320, 192)
    assert video.src == video.url and video.media_type == "video/mp4"

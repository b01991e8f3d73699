"""The assets page: one job folder's files with previews and sizes, the recent folders, and bad folders refused."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from history.web import media
from history.web import templating
from tests.conftest import soup

# The assets page reads folders only, never the store: a test of it that makes no job would be the same run on
# PostgreSQL, so it runs once.
FOLDERS_ONLY = pytest.mark.sqlite_only


def job_folder(settings, output_dir: str) -> Path:
    folder = settings.output_dir / "comfyui-studio" / output_dir
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_lists_a_job_folder_with_previews_sizes_and_links(client, settings, make_job):
    job = make_job(files=3)
    folder = job_folder(settings, job.output_dir)
    (folder / "clip_00001.mp4").write_bytes(b"\x00" * 2048)
    page = client.get(f"/admin/assets?dir={job.output_dir}")
    assert page.status_code == 200
    html = soup(page)
    assert html.select_one("html") is not None  # a full page, extending base.html
    assert html.select_one("link[href$='assets.css']") is not None
    assert html.select_one(".assets-dir").get_text() == job.output_dir

    items = html.select(".asset-grid .asset")
    assert [item["data-name"] for item in items] == [
        "clip_00001.mp4", "final_00001_.png", "final_00002_.png", "final_00003_.png",
    ]
    for item in items:
        path = folder / item["data-name"]
        size = path.stat().st_size
        assert item.select_one(".asset-size")["data-bytes"] == str(size)
        assert item.select_one(".asset-size").get_text() == templating.human_size(size)
        assert item.select_one("a.asset-name")["href"] == f"/media/output/comfyui-studio/{job.output_dir}/{path.name}"

    image = items[1]
    assert "asset-image" in image["class"]
    thumb = image.select_one("img.asset-thumb")
    assert thumb["src"].startswith(f"/media/thumb/output/comfyui-studio/{job.output_dir}/final_00001_.png?v=")
    assert thumb["loading"] == "lazy"
    assert image.select_one(".asset-dims").get_text() == "256×256"

    video = items[0]
    assert "asset-video" in video["class"]
    assert video.select_one("img") is None  # no thumbnail Pillow cannot make
    assert video.select_one(".asset-dims") is None

    total = sum(path.stat().st_size for path in folder.iterdir())
    assert html.select_one(".assets-count").get_text() == "4 files"
    assert html.select_one(".assets-total").get_text() == templating.human_size(total)

    # The links on the page lead to the files and their thumbnails (buffered: send_file's file is closed).
    assert client.get(thumb["src"], buffered=True).mimetype == "image/webp"
    assert client.get(image.select_one("a.asset-name")["href"], buffered=True).mimetype == "image/png"


@FOLDERS_ONLY
def test_file_names_are_text(client, settings):
    name = '<img src=x onerror=alert(1)>.png'
    folder = job_folder(settings, "20261128_120000_evil")
    with Image.new("RGB", (10, 10)) as image:
        image.save(folder / name, format="PNG")
    html = soup(client.get("/admin/assets?dir=20261128_120000_evil"))
    assert html.select_one(".asset-grid img[onerror]") is None
    assert html.select_one(".asset-name").get_text() == name


@FOLDERS_ONLY
def test_hidden_files_and_links_leading_out_are_not_listed(client, settings):
    folder = job_folder(settings, "20261128_120000_links")
    (folder / "kept.txt").write_text("kept")
    (folder / ".deleting-x").write_text("hidden")
    outside = settings.data_dir / "outside.txt"
    outside.write_text("outside")
    (folder / "escape.txt").symlink_to(outside)
    (folder / "sub").mkdir()
    html = soup(client.get("/admin/assets?dir=20261128_120000_links"))
    assert [item["data-name"] for item in html.select(".asset")] == ["kept.txt"]
    assert "asset-file" in html.select_one(".asset")["class"]


@FOLDERS_ONLY
@pytest.mark.parametrize("bad", [
    "..", "../output", "comfyui-studio/../..", "a/b", "/etc", ".hidden", "-leading-dash",
    "x\x00y", "a\\b", "x" * 200, "%2e%2e",
])
def test_a_bad_dir_is_a_400_page(client, settings, bad):
    page = client.get("/admin/assets", query_string={"dir": bad})
    assert page.status_code == 400
    html = soup(page)
    assert html.select_one(".assets-error[role=alert]") is not None
    assert "output_dir" in html.select_one(".assets-error").get_text()
    assert html.select_one(".asset-grid") is None


@FOLDERS_ONLY
def test_a_missing_folder_shows_the_empty_state(client, settings):
    page = client.get("/admin/assets?dir=20261128_999999_gone")
    assert page.status_code == 404
    html = soup(page)
    assert "does not exist" in html.select_one(".assets-empty").get_text()
    assert html.select_one(".asset-grid") is None


@FOLDERS_ONLY
def test_an_empty_folder_shows_the_empty_state(client, settings):
    job_folder(settings, "20261128_120000_empty")
    page = client.get("/admin/assets?dir=20261128_120000_empty")
    assert page.status_code == 200
    assert "is empty" in soup(page).select_one(".assets-empty").get_text()


def test_without_dir_lists_the_newest_folders(client, settings, make_job):
    older = make_job(files=1, minutes_ago=30)
    newer = make_job(files=2, minutes_ago=5)
    (settings.output_dir / "comfyui-studio" / ".deleting-old").mkdir()
    html = soup(client.get("/admin/assets"))
    rows = html.select(".assets-folders .assets-folder")
    assert [row["data-output-dir"] for row in rows] == [newer.output_dir, older.output_dir]
    first = rows[0]
    assert first.select_one("a")["href"] == f"/admin/assets?dir={newer.output_dir}"
    assert first.select_one(".assets-folder-files").get_text() == "2"


@FOLDERS_ONLY
def test_folder_list_is_bounded(client, settings, monkeypatch):
    for index in range(12):
        job_folder(settings, f"20261128_{index:06d}")
    monkeypatch.setattr(media, "recent_folders", lambda limit=100, original=media.recent_folders: original(5))
    rows = soup(client.get("/admin/assets")).select(".assets-folder")
    assert [row["data-output-dir"] for row in rows] == [f"20261128_{index:06d}" for index in (11, 10, 9, 8, 7)]


@FOLDERS_ONLY
def test_no_folders_yet(client):
    page = client.get("/admin/assets")
    assert page.status_code == 200
    assert "No job folders yet" in soup(page).select_one(".assets-empty").get_text()

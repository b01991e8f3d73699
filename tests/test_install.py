"""The built distribution works anywhere: sdist and wheel carry the templates, partials, static files and workflows.

The sdist is built from this checkout and the wheel from that sdist (python -m build), the wheel is installed
into a fresh virtual environment (its dependencies from the package index, as a user's `pip install` gets
them), and `studio-history serve` runs from a folder outside the checkout: the page, a fragment, a vendored
script and a thumbnail come over HTTP from the installed package alone.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from urllib.parse import urlsplit
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from tests.conftest import wait_for
from tests.test_studio_history_command import serving

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ("templates/history.html", "partials/job_list.html", "static/htmx.min.js", "static/history.css")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel of this checkout, the wheel built from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return out


def test_sdist_and_wheel_carry_the_assets_and_workflows(dist):
    (sdist,) = dist.glob("studio_history-*.tar.gz")
    (wheel,) = dist.glob("studio_history-*.whl")
    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = set(archive.namelist())
        entry_points = archive.read(next(n for n in wheel_names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for asset in ASSETS:
        assert asset in sdist_names
        assert f"history/{asset}" in wheel_names
    assert "history/workflows/txt2img-example/manifest.json" in wheel_names
    migrations = ROOT / "history" / "migrations"
    for step in migrations.glob("*.py"):
        assert f"history/migrations/{step.name}" in wheel_names
    assert not any(name.startswith(("tests/", "templates/", "static/")) for name in wheel_names), "stray top-level folders"
    assert "studio-history = history.cli:main" in entry_points


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed: its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (wheel,) = dist.glob("studio_history-*.whl")
    # This environment's pip installs into the new one (--python): no pip bootstrap in the new venv.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return venv / "bin"


def test_installed_package_runs_without_the_checkout(installed, tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", "import history; print(history.__file__)"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where
    help_text = subprocess.run(
        [str(installed / "studio-history"), "--help"], cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout
    for name in ("serve", "init-db", "import", "export", "prune-thumbnails", "STUDIO_DATA_DIR", "STUDIO_ADMIN_PASSWORD"):
        assert name in help_text


def test_studio_history_serve_from_another_folder_serves_page_fragment_script_and_thumbnail(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STUDIO_DATA_DIR": str(tmp_path / "data")}
    # Port 0: the OS picks a free port and Werkzeug's start-up line says which.
    command = [str(installed / "studio-history"), "serve", "--port", "0"]
    with serving(command, elsewhere, env, r"Running on (http://127\.0\.0\.1:\d+)", "the server") as (base, _):

        def get(path: str) -> tuple[int, str, bytes]:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()

        # A fresh store runs the shipped example workflows once (STUDIO_DEMO): real jobs with real images.
        def completed_jobs():
            return json.loads(get("/api/admin/history?status=completed")[2])

        wait_for(completed_jobs, timeout=60, what="a demo job completed")

        status, kind, body = get("/admin/history")
        assert status == 200 and kind.startswith("text/html")
        page = BeautifulSoup(body, "html.parser")
        assert page.select_one("#job-list .job-card[data-status=completed]") is not None
        stylesheets = [link["href"] for link in page.select("link[rel=stylesheet]")]
        scripts = [script["src"] for script in page.select("script[src]")]
        htmx = next(src for src in scripts if urlsplit(src).path.endswith("/htmx.min.js"))

        status, kind, body = get("/admin/history/list")
        assert status == 200 and b"<html" not in body and b"job-card" in body

        for url in [*stylesheets, *scripts]:
            status, kind, body = get(url)
            assert status == 200 and body, url
        status, kind, body = get(htmx)
        assert "javascript" in kind and b"htmx" in body

        thumbnail = page.select_one("img.job-thumb")["src"]
        status, kind, body = get(thumbnail)
        assert status == 200 and kind.startswith("image/") and len(body) > 100

"""`studio-history` (and `python -m history`): serve with its refusals, and the store commands under one name."""
from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def studio_history(*args: str, data_dir: Path, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m history ARGS` from outside the checkout on a data folder of its own."""
    return subprocess.run(
        [sys.executable, "-m", "history", *args],
        cwd=data_dir.parent, input=stdin, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0", **env},
    )


@contextlib.contextmanager
def serving(command: list[str], cwd: Path, env: dict, listening: str, who: str):
    """Run a server command; yield (its base URL, its output lines) once its start-up line matches ``listening``."""
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)  # keeps the pipe drained
    reader.start()
    try:

        def listening_at():
            assert server.poll() is None, f"{who} exited:\n" + "".join(lines)
            found = re.search(listening, "".join(lines))
            return found and found.group(1)

        yield wait_for(listening_at, timeout=60, what=f"{who} says where it listens"), lines
    finally:
        server.terminate()
        server.wait(timeout=30)
        reader.join(timeout=10)
        server.stdout.close()


def test_help_lists_every_command_and_setting(tmp_path):
    result = studio_history("--help", data_dir=tmp_path / "data")
    assert result.returncode == 0
    listed = set(re.findall(r"^  ([a-z][a-z-]+)  ", result.stdout.split("Commands:")[1], flags=re.M))
    # The `flask history` group's commands (prune among them) are studio-history's too.
    assert {"serve", "init-db", "import", "export", "prune", "prune-thumbnails", "api-token"} <= listed
    for name in ("STUDIO_DATABASE_URL", "STUDIO_COMFYUI_URL", "STUDIO_ADMIN_PASSWORD"):
        assert name in result.stdout
    serve_help = studio_history("serve", "--help", data_dir=tmp_path / "data").stdout
    for name in ("--host", "--port", "--insecure", "STUDIO_ADMIN_PASSWORD"):
        assert name in serve_help
    assert not (tmp_path / "data").exists(), "--help made no store"


def test_export_then_import_on_another_store_gives_the_same_records(tmp_path):
    record = {
        "prompt_id": "a1b2c3d4-0000-4000-8000-000000000001", "workflow_id": "txt2img-example",
        "workflow_name": "Text to image", "status": "failed", "queued_at": "2026-11-28T15:30:12+00:00",
        "started_at": None, "finished_at": None, "duration": None, "params": {"positive_prompt": "a lighthouse"},
        "seeds": {}, "input_image": None, "output": None, "outputs": [], "output_dir": None,
        "error": "boom", "retry_of": None,
    }
    imported = studio_history("import", "-", data_dir=tmp_path / "one", stdin=json.dumps([record]))
    assert imported.returncode == 0, imported.stderr
    exported = studio_history("export", data_dir=tmp_path / "one")
    assert exported.returncode == 0
    (only,) = json.loads(exported.stdout)
    assert {name: only[name] for name in record} == {**record, "status": "error"}
    again = studio_history("import", "-", data_dir=tmp_path / "two", stdin=exported.stdout)
    assert again.returncode == 0
    assert json.loads(studio_history("export", data_dir=tmp_path / "two").stdout) == [only]


@pytest.mark.parametrize("args", [["serve", "--host", "0.0.0.0", "--port", "1"]])
def test_serve_refuses_an_open_address_without_a_password(tmp_path, args):
    result = studio_history(*args, data_dir=tmp_path / "data")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("studio-history: refusing to listen on") and "--insecure" in line


def test_a_bad_setting_stops_any_command_with_one_line(tmp_path):
    result = studio_history("init-db", data_dir=tmp_path / "data", STUDIO_POLL_SECONDS="often")
    assert result.returncode == 2
    assert result.stderr.strip() == "studio-history: STUDIO_POLL_SECONDS must be a number, got 'often'"


def test_init_db_makes_the_store(tmp_path):
    result = studio_history("init-db", data_dir=tmp_path / "data")
    assert result.returncode == 0 and "schema version" in result.stdout
    assert (tmp_path / "data" / "studio.db").is_file()


def test_serve_with_gunicorn_answers_healthz(tmp_path):
    command = [sys.executable, "-m", "history", "serve", "--gunicorn", "--port", "0", "--threads", "4"]
    env = {"PATH": "/usr/bin:/bin", "STUDIO_DATA_DIR": str(tmp_path / "data"), "STUDIO_DEMO": "0"}
    with serving(command, tmp_path, env, r"Listening at: (http://127\.0\.0\.1:\d+)", "gunicorn") as (base, lines):
        with urllib.request.urlopen(base + "/healthz", timeout=10) as response:
            assert response.status == 200
            assert json.load(response)["status"] == "ok"
        assert "gthread" in "".join(lines)

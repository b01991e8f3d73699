"""A table of path escapes against delete, media, import and execute: each refused, nothing outside touched.

A sentinel tree beside the data folder (and the app's own database and secret key) is hashed before and
after; every refusal must leave it byte for byte, and no response may carry a sentinel's content.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from history.db import database
from history.models import Job

SECRET = b"SENTINEL-do-not-serve-or-delete"

# name -> a payload template; {abs} is the absolute path of the sentinel file, {absdir} its folder.
ESCAPES = {
    "dotdot": "../../outside/secret.txt",
    "dotdot-deep": "../../../../../../../../etc/passwd",
    "inner-dotdot": "sub/../../../outside/secret.txt",
    "encoded-dots": "%2e%2e/%2e%2e/outside/secret.txt",
    "encoded-slash": "..%2f..%2foutside%2fsecret.txt",
    "double-encoded": "..%252f..%252foutside%252fsecret.txt",
    "overlong-utf8": "%c0%ae%c0%ae/%c0%ae%c0%ae/outside/secret.txt",
    "absolute": "{abs}",
    "absolute-dir": "{absdir}",
    "nul": "secret.txt\x00.png",
    "nul-dotdot": "..\x00/../outside/secret.txt",
    "backslashes": "..\\..\\outside\\secret.txt",
    "windows-drive": "C:\\Windows\\win.ini",
    "unc": "\\\\server\\share\\secret.txt",
    "dot-only": "..",
    "dots-and-slashes": "....//....//outside/secret.txt",
    "fullwidth-dots": "\uff0e\uff0e/\uff0e\uff0e/outside/secret.txt",
    "one-dot-leaders": "\u2024\u2024/\u2024\u2024/outside/secret.txt",
    "symlink-out": "linked/secret.txt",
}


@pytest.fixture
def sentinel(tmp_path):
    """A tree outside every served folder; returns a function that hashes it (and the data dir's own files)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "keep" / "deep").mkdir(parents=True)
    (outside / "keep" / "deep" / "file.bin").write_bytes(SECRET * 3)

    def digest() -> dict[str, str]:
        tree = {}
        for root in (outside, tmp_path / "data"):
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink() and root == outside or path.name in ("secret_key",):
                    tree[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        return tree

    return outside, digest


def payload(template: str, outside: Path) -> str:
    return template.format(abs=outside / "secret.txt", absdir=outside)


def plant_symlinks(settings, outside: Path) -> None:
    """Links inside the served folders that lead out: a job folder, a file in a job folder, an input file."""
    studio = settings.output_dir / "comfyui-studio"
    (studio / "linked").parent.mkdir(parents=True, exist_ok=True)
    if not (studio / "linked").exists():
        (studio / "linked").symlink_to(outside, target_is_directory=True)
    (settings.output_dir / "linked").mkdir(exist_ok=True)
    if not (settings.output_dir / "linked" / "secret.txt").exists():
        (settings.output_dir / "linked" / "secret.txt").symlink_to(outside / "secret.txt")
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    if not (settings.input_dir / "linked").exists():
        (settings.input_dir / "linked").symlink_to(outside, target_is_directory=True)


def test_media_refuses_every_escape(client, settings, sentinel):
    outside, digest = sentinel
    plant_symlinks(settings, outside)
    before = digest()
    for name in sorted(ESCAPES):
        media_refuses(client, outside, name)
    assert digest() == before


def media_refuses(client, outside, name):
    raw = payload(ESCAPES[name], outside).lstrip("/")  # an absolute path becomes //... in the URL otherwise
    for prefix in ("/media/output/", "/media/input/", "/media/thumb/output/", "/media/thumb/input/",
                   "/media/output/comfyui-studio/"):
        with client.get(prefix + raw) as response:
            body = response.get_data()
            assert SECRET not in body, (prefix, name)
            if "thumb" in prefix:
                # A thumbnail that cannot be made is the placeholder (never the file, never a 500).
                assert response.status_code in (200, 400, 404), (prefix, name, response.status_code)
                assert response.mimetype != "text/plain"
            else:
                assert response.status_code in (400, 404), (prefix, name, response.status_code)


def test_delete_refuses_every_escaping_output_dir(client, settings, sentinel, make_job, database_kind):
    outside, digest = sentinel
    plant_symlinks(settings, outside)
    before = digest()
    for name in sorted(ESCAPES):
        if database_kind == "postgres" and "\x00" in ESCAPES[name]:
            continue  # PostgreSQL cannot hold a NUL in text, so no record can name such a folder there
        delete_refuses(client, outside, make_job, name)
        assert digest() == before, name


def delete_refuses(client, outside, make_job, name):
    job = make_job(files=0, output_dir=payload(ESCAPES[name], outside).split("/")[0] if name == "symlink-out" else payload(ESCAPES[name], outside))
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.status_code == 200
    report = response.json
    # Either refused outright, or (a name that is merely odd, with no folder) deleted without touching files.
    if report["deleted"]:
        assert report["files_removed"] == 0, name
    else:
        assert report["failed"][0]["status"] in (400, 409), report
    assert (outside / "secret.txt").read_bytes() == SECRET


def test_delete_removes_a_link_inside_a_job_folder_but_not_its_target(client, settings, sentinel, make_job):
    outside, digest = sentinel
    before = digest()
    job = make_job(files=1)
    folder = settings.output_dir / "comfyui-studio" / job.output_dir
    (folder / "escape.png").symlink_to(outside / "secret.txt")
    (folder / "escape-dir").symlink_to(outside, target_is_directory=True)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["deleted"] == [job.prompt_id]
    assert not folder.exists()
    assert digest() == before


# Escapes that must be refused outright wherever a path goes; the percent-encoded and look-alike dots are
# inert names to a file system (no decoding happens after routing), so a record may keep one as long as
# it resolves inside its folder.
MUST_REFUSE = {
    "dotdot", "dotdot-deep", "inner-dotdot", "absolute", "absolute-dir", "nul", "nul-dotdot", "backslashes",
    "windows-drive", "unc", "dot-only", "symlink-out",
}
IMPORT_FIELDS = ("output_dir", "output.filename", "output.subfolder", "outputs.subfolder", "input_image")


def escaping_record(field: str, value: str) -> dict:
    record = {
        "prompt_id": "escape-1", "workflow_id": "txt2img-example", "status": "completed",
        "queued_at": "2026-11-28T12:00:00+00:00", "output_dir": "20261128_120000_aaaaaa",
        "outputs": [{"filename": "a.png", "subfolder": "comfyui-studio/20261128_120000_aaaaaa", "type": "output"}],
    }
    if field == "output_dir":
        record["output_dir"] = value
    elif field == "input_image":
        record["input_image"] = value
    elif field == "output.filename":
        record["output"] = {"filename": value, "subfolder": "", "type": "output"}
    elif field == "output.subfolder":
        record["output"] = {"filename": "secret.txt", "subfolder": value, "type": "output"}
    else:
        record["outputs"] = [{"filename": "secret.txt", "subfolder": value, "type": "output"}]
    return record


def test_import_refuses_every_escape(runner, settings, sentinel, tmp_path, db):
    outside, digest = sentinel
    plant_symlinks(settings, outside)
    before = digest()
    for name in sorted(ESCAPES):
        import_refuses(runner, settings, outside, tmp_path, name)
    assert digest() == before


def import_refuses(runner, settings, outside, tmp_path, name):
    from history import files

    value = payload(ESCAPES[name], outside)
    for field in IMPORT_FIELDS:
        source = tmp_path / "import.json"
        source.write_text(json.dumps([escaping_record(field, value)]))
        result = runner.invoke(args=["history", "import", str(source)])
        taken = Job.get_or_none(Job.prompt_id == "escape-1")
        if taken is None:
            assert "refused 1" in result.output, (field, name, result.output)
            continue
        assert name not in MUST_REFUSE, (field, name, result.output)
        # Taken as an odd but plain name: it must resolve inside its folder.
        if field == "output_dir":
            files.job_folder(settings.output_dir, taken.output_dir)
        elif field == "input_image":
            assert files.input_file(settings.input_dir, taken.input_image).is_relative_to(settings.input_dir.resolve())
        else:
            for ref in [taken.output, *taken.outputs]:
                assert files.output_file(settings.output_dir, ref).is_relative_to(settings.output_dir.resolve())
        Job.delete().execute()


def test_execute_refuses_every_escaping_input_image(client, settings, sentinel, db):
    outside, digest = sentinel
    plant_symlinks(settings, outside)
    (settings.input_dir / "in-link.png").symlink_to(outside / "secret.txt")
    before = digest()
    for name in sorted(ESCAPES):
        value = payload(ESCAPES[name], outside)
        response = client.post("/api/run/img2vid-example/execute", json={"input_image": value, "params": {}})
        assert response.status_code == 400, (name, response.status_code, response.json)
        assert "input_image" in response.json.get("field", "") + response.json["error"]
    link = client.post("/api/run/img2vid-example/execute", json={"input_image": "in-link.png", "params": {}})
    assert link.status_code == 400
    database.connect(reuse_if_open=True)
    assert Job.select().count() == 0
    assert digest() == before


def test_the_sentinel_digest_sees_a_change(sentinel):
    """The guard of every test above can fail: a touched sentinel changes the digest."""
    outside, digest = sentinel
    before = digest()
    (outside / "keep" / "deep" / "file.bin").write_bytes(b"changed")
    assert digest() != before
    os.utime(outside / "secret.txt")

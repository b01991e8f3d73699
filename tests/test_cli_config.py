"""The CLI's import/export and the start-up checks of the settings."""
from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pytest

from history import config
from history import create_app
from history.config import ConfigError
from history.config import load_settings
from history.db import migration_steps
from history.models import HISTORY_STATUSES
from history.models import Job

ROOT = Path(__file__).resolve().parent.parent


def record(number: int, status: str) -> dict:
    queued = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=number)
    ended = status in ("completed", "error", "stalled")
    return {
        "prompt_id": f"job-{number:04d}",
        "workflow_id": ["txt2img-example", "img2vid-example", "scenes-example"][number % 3],
        "workflow_name": f"Workflow {number % 3} (example)",
        "status": status,
        "queued_at": queued.isoformat(),
        "started_at": (queued + datetime.timedelta(seconds=3)).isoformat() if status != "queued" else None,
        "finished_at": (queued + datetime.timedelta(seconds=33.5)).isoformat() if ended else None,
        "duration": 30.5 if ended else None,
        "params": {"positive_prompt": f"prompt {number} ünïcödé", "seed": -1, "scenes": [{"prompt": "x", "duration": 2, "seed": 3}]},
        "seeds": {"seed": 1000 + number},
        "input_image": f"input_{number}.png" if number % 5 == 0 else None,
        "output": {"filename": f"f_{number}.png", "subfolder": f"comfyui-studio/d{number}", "type": "output"} if status == "completed" else None,
        "outputs": [{"filename": f"f_{number}.png", "subfolder": f"comfyui-studio/d{number}", "type": "output"}] if status == "completed" else [],
        "starred": number % 11 == 0,
        "bytes": 2048 + number if ended else None,  # its files are not on this disk: the size it came with stays
        "output_dir": f"d{number}",
        "error": "boom" if status in ("error", "stalled") else None,
        "retry_of": f"job-{number - 1:04d}" if number % 7 == 0 and number else None,
        "source": "a script on http://127.0.0.1:8188" if number % 13 == 0 else None,
        "comfyui_server": "http://127.0.0.1:8189" if number % 17 == 0 else None,
    }


def test_export_of_300_imported_records_equals_the_import(runner, tmp_path, db):
    records = [record(number, HISTORY_STATUSES[number % len(HISTORY_STATUSES)]) for number in range(300)]
    source = tmp_path / "in.json"
    source.write_text(json.dumps(records))
    result = runner.invoke(args=["history", "import", str(source)])
    assert result.exit_code == 0, result.output
    assert "imported 300 (300 new, 0 updated), refused 0" in result.output
    exported = runner.invoke(args=["history", "export"])
    assert exported.exit_code == 0
    newest_first = sorted(records, key=lambda r: r["queued_at"], reverse=True)
    assert json.loads(exported.stdout) == [
        {**r, "queued_at": r["queued_at"]} for r in newest_first
    ]
    again = runner.invoke(args=["history", "import", str(source)])
    assert "(0 new, 300 updated)" in again.output
    assert Job.select().count() == 300


def test_export_by_status_and_failed_read_as_error(runner, tmp_path, db):
    records = [record(1, "failed"), record(2, "completed"), record(3, "stalled")]
    source = tmp_path / "in.json"
    source.write_text(json.dumps(records))
    runner.invoke(args=["history", "import", str(source)])
    assert Job.get_by_id("job-0001").status == "error"
    exported = runner.invoke(args=["history", "export", "--status", "error", "--status", "stalled"])
    assert [r["prompt_id"] for r in json.loads(exported.stdout)] == ["job-0003", "job-0001"]
    bad = runner.invoke(args=["history", "export", "--status", "done"])
    assert bad.exit_code != 0 and "unknown status" in bad.output


def test_an_id_twice_in_one_import_keeps_the_later_record(runner, tmp_path, db):
    first, later = record(5, "error"), record(5, "completed")
    later["workflow_name"] = "the later one"
    source = tmp_path / "twice.json"
    source.write_text(json.dumps([first, later, record(6, "completed")]))
    result = runner.invoke(args=["history", "import", str(source)])
    assert result.exit_code == 0, result.output
    assert "imported 3 (2 new, 1 updated), refused 0" in result.output
    job = Job.get_by_id("job-0005")
    assert job.status == "completed" and job.workflow_name == "the later one"
    assert Job.select().count() == 2


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_import_refuses_queued_and_running_records(runner, tmp_path, db, status):
    """No executor of this store holds them: imported, they would stay active (and undeletable) until a restart."""
    source = tmp_path / "in.json"
    source.write_text(json.dumps([record(1, "completed"), record(2, status)]))
    result = runner.invoke(args=["history", "import", str(source)])
    assert result.exit_code == 1
    assert "refused 1" in result.output and f"status {status}: only ended jobs" in result.output
    assert [job.prompt_id for job in Job.select()] == ["job-0001"]


def test_import_from_stdin(runner, db):
    result = runner.invoke(args=["history", "import", "-"], input=json.dumps([record(9, "completed")]))
    assert result.exit_code == 0
    assert Job.get_by_id("job-0009").workflow_name == "Workflow 0 (example)"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"output_dir": "../../etc"}, "output_dir"),
        ({"output_dir": "/tmp/x"}, "output_dir"),
        ({"output_dir": "a/b"}, "output_dir"),
        ({"outputs": [{"filename": "x.png", "subfolder": "../../..", "type": "output"}]}, "outputs[0]"),
        ({"outputs": [{"filename": "../x.png", "subfolder": "", "type": "output"}]}, "outputs[0]"),
        ({"output": {"filename": "x.png", "subfolder": "/etc", "type": "output"}}, "output"),
        ({"input_image": "../secret.png"}, "input_image"),
        ({"status": "done"}, "status"),
        ({"status": ["completed"]}, "status"),
        ({"prompt_id": ""}, "prompt_id"),
        ({"prompt_id": "a/b"}, "prompt_id"),
        ({"queued_at": "yesterday"}, "queued_at"),
        ({"queued_at": None}, "queued_at"),
        ({"duration": "long"}, "duration"),
        ({"params": []}, "params"),
        ({"surprise": 1}, "unknown fields"),
    ],
)
def test_import_refuses_bad_records_one_by_one(runner, tmp_path, db, change, message):
    good = record(1, "completed")
    bad = {**record(2, "completed"), **change}
    source = tmp_path / "in.json"
    source.write_text(json.dumps([good, bad]))
    result = runner.invoke(args=["history", "import", str(source)])
    assert result.exit_code == 1
    assert "imported 1 (1 new, 0 updated), refused 1" in result.output
    assert message in result.output
    assert Job.select().count() == 1


@pytest.mark.parametrize("content, message", [("{not json", "is not JSON"), ('{"a": 1}', "JSON array")])
def test_import_refuses_a_file_that_is_not_an_array(runner, tmp_path, content, message):
    source = tmp_path / "in.json"
    source.write_text(content)
    result = runner.invoke(args=["history", "import", str(source)])
    assert result.exit_code != 0
    assert message in result.output


def test_prune_thumbnails_trims_the_cache_to_a_size(runner, make_job, settings):
    from history import thumbnails

    job = make_job(files=3)
    for ref in job.outputs:
        assert thumbnails.make_thumbnail(settings.output_dir / ref["subfolder"] / ref["filename"], settings.thumbnail_dir)
    assert len(list(settings.thumbnail_dir.rglob("*.webp"))) == 3
    kept = runner.invoke(args=["history", "prune-thumbnails"])
    assert kept.exit_code == 0 and "removed 0 thumbnails" in kept.output
    trimmed = runner.invoke(args=["history", "prune-thumbnails", "--max-mb", "0"])
    assert trimmed.exit_code == 0 and "removed 3 thumbnails" in trimmed.output
    assert list(settings.thumbnail_dir.rglob("*.webp")) == []
    refused = runner.invoke(args=["history", "prune-thumbnails", "--max-age-days", "-1"])
    assert refused.exit_code != 0


def test_init_db_reports_schema_version(runner):
    result = runner.invoke(args=["history", "init-db"])
    assert result.exit_code == 0
    assert f"schema version {len(migration_steps())}" in result.output


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"STUDIO_POLL_SECONDS": "soon"}, "STUDIO_POLL_SECONDS must be a number"),
        ({"STUDIO_POLL_SECONDS": "0"}, "STUDIO_POLL_SECONDS"),
        ({"STUDIO_STALL_SECONDS": "-1"}, "STUDIO_STALL_SECONDS"),
        ({"STUDIO_DATABASE_URL": "mongodb://x/y"}, "STUDIO_DATABASE_URL must start with sqlite:// or postgresql://"),
        ({"STUDIO_COMFYUI_URL": "ftp://box"}, "STUDIO_COMFYUI_URL"),
        ({"STUDIO_DEMO": "maybe"}, "STUDIO_DEMO must be 1 or 0"),
        ({"STUDIO_URL_PREFIX": "studio"}, "STUDIO_URL_PREFIX must start with /"),
        ({"STUDIO_SESSION_COOKIE": "studio session;"}, "STUDIO_SESSION_COOKIE must be letters"),
    ],
)
def test_bad_settings_raise_one_clear_error(tmp_path, environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"STUDIO_DATA_DIR": str(tmp_path), **environ})


@pytest.mark.parametrize("variable", ["STUDIO_OUTPUT_DIR", "STUDIO_INPUT_DIR"])
def test_a_media_folder_may_not_contain_the_data_dir(tmp_path, variable):
    with pytest.raises(ConfigError, match=f"{variable} .* must not contain STUDIO_DATA_DIR"):
        load_settings({"STUDIO_DATA_DIR": str(tmp_path / "data"), variable: str(tmp_path)})


def test_unwritable_data_dir_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="STUDIO_DATA_DIR .* cannot be created"):
        load_settings({"STUDIO_DATA_DIR": str(blocker / "data")})


def test_app_py_stops_with_one_line_on_a_bad_setting(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        env={"STUDIO_DATA_DIR": str(tmp_path), "STUDIO_POLL_SECONDS": "often", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "studio-history: STUDIO_POLL_SECONDS must be a number, got 'often'"
    assert "Traceback" not in result.stderr


def test_app_py_help_lists_every_variable():
    result = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "--host" in result.stdout and "--port" in result.stdout
    for variable in config.VARIABLES:
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(variable.name + " "))
        assert variable.default in line, line


def test_the_readmes_configuration_table_is_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    table = section[section.index("| variable |"):].split("\n\n", 1)[0]
    assert table == config.markdown_table()


def test_every_setting_is_a_field_of_settings(tmp_path):
    settings = load_settings({"STUDIO_DATA_DIR": str(tmp_path)})
    assert [field.name for field in dataclasses.fields(settings)] == [variable.field for variable in config.VARIABLES]


@pytest.mark.parametrize("key", ["STUDIO_POLL_SECOND", "STUDIO_SESSION_COOKIES"])
def test_an_unknown_setting_given_to_create_app_is_an_error(tmp_path, key):
    with pytest.raises(ConfigError, match="is not a setting"):
        create_app({"STUDIO_DATA_DIR": str(tmp_path), key: "1"})

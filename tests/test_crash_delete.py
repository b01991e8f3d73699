"""A batch delete killed with SIGKILL at random points leaves every job whole or gone, once the app starts again.

A subprocess deletes 300 jobs through the API and is killed either at its N-th file-system or database
step (before or after the step: every boundary of the record's BEGIN/DELETE/COMMIT and of the folder's
move to its tombstone and removal can be hit) or after a random delay. The same runs again (100 jobs)
with read-only subfolders in some jobs, and on SQLite with another writer taking the write lock at a
random step and holding it past the busy timeout (STUDIO_BUSY_SECONDS, 0.2 s here): that delete answers
503 with Retry-After and what it did, and stops. Then each job's record is checked against its folder:
before recovery only the documented states appear (whole, gone, the record beside its tombstone, or a
tombstone left after its record); after a start-up (create_app runs jobs.finish_interrupted_deletes)
each job is whole or gone; a later delete of the same ids removes the rest. Rounds and seed:
STUDIO_TEST_CRASH_ROUNDS (default 4), STUDIO_TEST_CRASH_FAULT_ROUNDS (default 2; each halved on
PostgreSQL, at least 2) and STUDIO_TEST_CRASH_SEED.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from history import files
from history.db import database
from history.models import Job
from tests.conftest import another_app

ROOT = Path(__file__).resolve().parent.parent
JOBS_PER_ROUND = 300
FAULT_JOBS_PER_ROUND = 100
ROUNDS = int(os.environ.get("STUDIO_TEST_CRASH_ROUNDS", "4"))
FAULT_ROUNDS = int(os.environ.get("STUDIO_TEST_CRASH_FAULT_ROUNDS", "2"))
SEED = int(os.environ.get("STUDIO_TEST_CRASH_SEED", "20261128"))

WORKER = r"""
import json, os, signal, sys, time
import peewee

kill_after = int(sys.argv[1])
config = json.loads(sys.argv[2])
prompt_ids = json.loads(sys.argv[3])
lock_at = int(sys.argv[4])  # at this step another connection takes the write lock and keeps it
import history.jobs
history.jobs.DELETE_BATCH = int(sys.argv[5])  # several batches, so a lock can be met between two

from history import create_app

app = create_app(config)
client = app.test_client()
steps = [0]


held = []


def step():
    steps[0] += 1
    if steps[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    if lock_at and steps[0] >= lock_at and not held:
        import sqlite3

        writer = sqlite3.connect(config["STUDIO_DATA_DIR"] + "/studio.db", isolation_level=None, timeout=0)
        try:
            writer.execute("BEGIN IMMEDIATE")  # held past the busy timeout: every later write must wait and fail
        except sqlite3.OperationalError:
            writer.close()  # the delete holds the lock in this step: take it at the next one
        else:
            held.append(writer)


def counted(function):
    def wrapper(*args, **kwargs):
        step()  # killed before the step
        result = function(*args, **kwargs)
        step()  # killed after it
        return result
    return wrapper


for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
    setattr(os, name, counted(getattr(os, name)))
from history.db import database

# The bound database's own methods (history/changes.py wraps them per instance, so the class is not enough).
database.obj.execute_sql = counted(database.obj.execute_sql)
database.obj.commit = counted(database.obj.commit)

print("ready", flush=True)
started = time.monotonic()
response = client.post("/api/admin/history/delete", json={"prompt_ids": prompt_ids}, headers={"Origin": "http://localhost"})
print(json.dumps({"steps": steps[0], "status": response.status_code, "seconds": time.monotonic() - started,
                  "deleted": response.json.get("deleted"), "failed": response.json.get("failed"),
                  "retry_after": response.headers.get("Retry-After")}), flush=True)
app.extensions["studio"].stop()
"""

CONTENTS = {"final_00001_.png": b"\x89PNG first", "final_00002_.png": b"\x89PNG second" * 50, "sub/mask.bin": b"\0" * 700}


def make_jobs(settings, round_number: int, read_only_every: int = 0, count: int = JOBS_PER_ROUND) -> dict[str, str]:
    """Insert ``count`` completed jobs with real files; return {prompt_id: output_dir}.

    With ``read_only_every``, the ``sub/`` folder of every so many jobs cannot be emptied (tests.conftest.unremovable).
    """
    base = datetime.datetime(2026, 11, 28, 12, tzinfo=datetime.timezone.utc)
    rows = {}
    records = []
    for index in range(count):
        prompt_id = f"crash-{round_number}-{index:04d}"
        output_dir = f"20261128_{round_number:02d}{index:04d}_crash"
        folder = settings.output_dir / files.STUDIO_FOLDER / output_dir
        for name, content in CONTENTS.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        refs = [{"filename": n, "subfolder": f"comfyui-studio/{output_dir}", "type": "output"} for n in CONTENTS if "/" not in n]
        records.append({
            "prompt_id": prompt_id, "workflow_id": "txt2img-example", "workflow_name": "crash", "status": "completed",
            "queued_at": base - datetime.timedelta(seconds=index), "params": {}, "seeds": {}, "output": refs[0],
            "outputs": refs, "output_dir": output_dir,
        })
        rows[prompt_id] = output_dir
        if read_only_every and index % read_only_every == 0:
            lock_folder(folder / "sub")
    with database.atomic():
        for start in range(0, len(records), 100):
            Job.insert_many(records[start:start + 100]).execute()
    return rows


def lock_folder(folder: Path) -> None:
    """Make ``folder``'s entries unremovable (see tests.conftest.unremovable, whose block undoes it)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)


def folder_state(folder: Path) -> str:
    """"whole" when every file is there with its content, "missing" when there is no folder, else "partial"."""
    if not folder.exists():
        return "missing"
    for name, content in CONTENTS.items():
        path = folder / name
        if not path.is_file() or path.read_bytes() != content:
            return "partial"
    return "whole"


def job_states(settings, rows: dict[str, str]) -> dict[str, str]:
    """Each job's state: whole, gone, tombstoned (record beside its tombstone), or what is wrong with it."""
    studio = settings.output_dir / files.STUDIO_FOLDER
    with database.connection_context():
        present = {prompt_id for (prompt_id,) in Job.select(Job.prompt_id).where(Job.prompt_id.in_(list(rows))).tuples()}
    states = {}
    for prompt_id, output_dir in rows.items():
        folder = folder_state(studio / output_dir)
        tombstone = studio / f"{files.TOMBSTONE_PREFIX}{output_dir}"
        has_record = prompt_id in present
        if has_record and folder == "whole":
            states[prompt_id] = "whole" if not (tombstone / output_dir).exists() else "whole+stray-tombstone"
        elif not has_record and folder == "missing":
            states[prompt_id] = "gone" if not (tombstone / output_dir).exists() else "gone+tombstone"
        elif has_record and folder == "missing" and tombstone.is_dir():
            states[prompt_id] = "tombstoned"
        else:
            states[prompt_id] = f"BROKEN record={has_record} folder={folder} tombstone={tombstone.exists()}"
    return states


def run_worker(app_config, prompt_ids, kill_after: int, delay: float | None, lock_at: int = 0, batch: int = 500):
    """Run the deleting subprocess; kill it at its ``kill_after``-th step or after ``delay`` seconds; from its
    ``lock_at``-th step on, another connection holds the SQLite write lock."""
    config = {k: v for k, v in app_config.items() if k.startswith("STUDIO_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(kill_after), json.dumps(config), json.dumps(prompt_ids), str(lock_at), str(batch)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    if delay is not None:
        try:
            proc.wait(timeout=delay)  # the random moment of the kill (it may finish first)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.fixture
def app_config(app_config):
    """The test app's settings, with a busy timeout short enough that a held lock is met at once."""
    return {**app_config, "STUDIO_BUSY_SECONDS": "0.2"}


@pytest.mark.parametrize("fault", ["none", "read-only"])
def test_a_killed_batch_delete_leaves_each_job_whole_or_gone(app, app_config, database_kind, fault):
    """Kill -9 at random steps, plainly and with read-only subfolders in some jobs."""
    run_rounds(app, app_config, database_kind, fault)


@pytest.mark.sqlite_only  # a write lock held past the busy timeout is SQLite's way of being busy
def test_a_killed_batch_delete_under_a_held_write_lock_leaves_each_job_whole_or_gone(app, app_config, database_kind):
    """Another writer takes the lock partway and holds it: the delete answers 503 and stops, or is killed."""
    run_rounds(app, app_config, database_kind, "locked")


def run_rounds(app, app_config, database_kind, fault):
    settings = app.config["STUDIO"]
    rng = random.Random(f"{SEED}-{fault}")
    rounds = ROUNDS if fault == "none" else FAULT_ROUNDS
    rounds = rounds if database_kind == "sqlite" else max(2, rounds // 2)
    read_only_every = 7 if fault == "read-only" else 0
    count = JOBS_PER_ROUND if fault == "none" else FAULT_JOBS_PER_ROUND
    batch = 10 if fault == "locked" else 500
    # A first, unkilled run measures how many steps and seconds a delete of these jobs takes here.
    database.connect(reuse_if_open=True)
    rows = make_jobs(settings, 0, count=count)
    database.close()
    code, out, err = run_worker(app_config, list(rows), kill_after=0, delay=None, batch=batch)
    assert code == 0, err
    measured = json.loads(out.splitlines()[-1])
    assert len(measured["deleted"]) == count and measured["failed"] == []
    assert set(job_states(settings, rows).values()) == {"gone"}

    summary = Counter()
    with unremovable_tree(settings.output_dir) as release_locks:
        for round_number in range(1, rounds + 1):
            database.connect(reuse_if_open=True)
            rows = make_jobs(settings, round_number, read_only_every, count)
            database.close()
            lock_at = rng.randint(1, measured["steps"]) if fault == "locked" else 0
            if lock_at:
                # Killed just around the moment the lock is met, or let run into it and answer 503.
                kill_after, delay = (lock_at + rng.randint(0, 4), None) if round_number % 2 else (0, None)
            elif round_number % 2:
                kill_after, delay = rng.randint(1, measured["steps"]), None
            else:
                kill_after, delay = 0, rng.uniform(0, measured["seconds"])
            code, out, err = run_worker(app_config, list(rows), kill_after, delay, lock_at, batch)
            summary["rounds"] += 1
            summary["killed"] += code == -signal.SIGKILL
            assert code in (0, -signal.SIGKILL), err

            before = job_states(settings, rows)
            broken = {k: v for k, v in before.items() if v.startswith("BROKEN") or v == "whole+stray-tombstone"}
            assert not broken, (fault, kill_after, delay, lock_at, list(broken.items())[:5])
            summary["tombstoned_before_restart"] += sum(v in ("tombstoned", "gone+tombstone") for v in before.values())
            if code == 0:
                answer = json.loads(out.splitlines()[-1])
                gone = {k for k, v in before.items() if v.startswith("gone")}
                assert set(answer["deleted"] or ()) == gone, (fault, lock_at, answer)  # what it says is what happened
                if answer["status"] == 503:
                    summary["busy"] += 1
                    assert answer["retry_after"] and answer["failed"] == []
                    assert len(gone) < count  # it stopped at the lock: the rest are whole
                else:
                    assert answer["status"] == 200, answer

            release_locks()  # the permission is fixed; the next start-up sweep finishes what was left
            with another_app(app_config) as restarted:  # its start-up sweep finishes interrupted deletes
                after = job_states(settings, rows)
                assert set(after.values()) <= {"whole", "gone"}, (fault, kill_after, delay, sorted(set(after.values())))
                # Nothing but whole job folders is left: no tombstone, no orphan folder of this round.
                studio = settings.output_dir / files.STUDIO_FOLDER
                assert not [entry.name for entry in studio.iterdir() if entry.name.startswith(files.TOMBSTONE_PREFIX)]
                assert {p.name for p in studio.iterdir() if p.name.endswith("_crash")} == {
                    rows[k] for k, v in after.items() if v == "whole"
                }
                summary["whole"] += sum(v == "whole" for v in after.values())
                summary["gone"] += sum(v == "gone" for v in after.values())

                # A later delete of the same ids finishes the work.
                client = restarted.test_client()
                response = client.post(
                    "/api/admin/history/delete", json={"prompt_ids": list(rows)}, headers={"Origin": "http://localhost"}
                )
                assert response.status_code == 200 and response.json["failed"] == []
                assert set(job_states(settings, rows).values()) == {"gone"}
    print(f"\ncrash-delete ({database_kind}, {fault}): {measured['steps']} steps per {count}-job delete; {dict(summary)}")
    assert summary["killed"] >= rounds // 2
    if fault == "locked":
        assert summary["busy"] + summary["killed"] == rounds and summary["busy"] >= 1


@contextlib.contextmanager
def unremovable_tree(root: Path):
    """Yield a function that makes everything under ``root`` removable again (undoing lock_folder)."""

    def release():
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-R", "-i", str(root)], check=True, capture_output=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)

    try:
        yield release
    finally:
        release()


# ---- each state a killed delete can leave, finished by the start-up sweep ------------------------------

def test_the_sweep_finishes_each_state_a_killed_delete_can_leave(app, make_job, settings, db):
    from history import jobs

    studio = settings.output_dir / files.STUDIO_FOLDER
    never_moved = make_job(files=2)  # step 1 done: an empty tombstone beside the whole folder
    (studio / f"{files.TOMBSTONE_PREFIX}{never_moved.output_dir}").mkdir()
    half_removed = make_job(files=2)  # steps 2-3: the folder inside its tombstone, partly removed
    tombstone = studio / f"{files.TOMBSTONE_PREFIX}{half_removed.output_dir}"
    tombstone.mkdir()
    (studio / half_removed.output_dir).rename(tombstone / half_removed.output_dir)
    next(iter((tombstone / half_removed.output_dir).iterdir())).unlink()
    files_gone = make_job(files=1)  # step 3 done, the record not yet removed: an empty tombstone
    for path in (studio / files_gone.output_dir).iterdir():
        path.unlink()
    (studio / files_gone.output_dir).rename(studio / f"{files.TOMBSTONE_PREFIX}{files_gone.output_dir}")
    (studio / ".deleting-20261128_000000_orphan").mkdir()  # step 4 done: the record is gone

    assert jobs.finish_interrupted_deletes(settings.output_dir) == 3
    assert Job.get_or_none(Job.prompt_id == never_moved.prompt_id) is not None
    assert folder_state(studio / never_moved.output_dir) != "missing"
    assert Job.get_or_none(Job.prompt_id == half_removed.prompt_id) is None
    assert Job.get_or_none(Job.prompt_id == files_gone.prompt_id) is None
    assert sorted(p.name for p in studio.iterdir()) == [never_moved.output_dir]


def test_a_failed_commit_puts_the_folder_back_and_keeps_the_record(app, make_job, settings, monkeypatch):
    import peewee

    job = make_job(files=2)
    folder = settings.output_dir / files.STUDIO_FOLDER / job.output_dir

    def fail(self):
        raise peewee.OperationalError("disk I/O error")

    monkeypatch.setattr(database.obj, "commit", fail.__get__(database.obj))
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]},
                                      headers={"Origin": "http://localhost"})
    monkeypatch.undo()
    assert response.status_code == 500  # a broken disk is a server fault, not a busy store
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is not None
    assert len(list(folder.iterdir())) == 2
    assert not (folder.parent / f"{files.TOMBSTONE_PREFIX}{job.output_dir}").exists()


def test_a_tombstone_swept_away_by_another_process_is_made_again(client, make_job, settings, monkeypatch):
    job = make_job(files=1)
    real_replace = files.os.replace
    calls = []

    def swept_first(source, target):
        if not calls:  # another process's start-up sweep drops the empty tombstone just now
            Path(target).parent.rmdir()
        calls.append(target)
        return real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", swept_first)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["deleted"] == [job.prompt_id]
    assert len(calls) == 2

"""A batch delete killed with SIGKILL at random points leaves every job whole or gone, once the app starts again.

A subprocess deletes 300 jobs through the API and is killed either at its N-th file-system or database
step (before or after the step: every boundary of files.remove_folder and the record's DELETE/COMMIT can
be hit) or after a random delay. Then each job's record is checked against its folder: before recovery
only the documented states appear (whole, gone, or the record beside its tombstone); after a start-up
(create_app runs jobs.finish_interrupted_deletes) each job is whole or gone; a later delete of the same
ids removes the rest. Rounds and seed: STUDIO_TEST_CRASH_ROUNDS (default 4; halved on PostgreSQL) and
STUDIO_TEST_CRASH_SEED.
"""
from __future__ import annotations

import datetime
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path


from history import files
from history.db import database
from history.models import Job
from tests.conftest import another_app

ROOT = Path(__file__).resolve().parent.parent
JOBS_PER_ROUND = 300
ROUNDS = int(os.environ.get("STUDIO_TEST_CRASH_ROUNDS", "4"))
SEED = int(os.environ.get("STUDIO_TEST_CRASH_SEED", "20261128"))

WORKER = r"""
import json, os, signal, sys, time
import peewee

kill_after = int(sys.argv[1])
config = json.loads(sys.argv[2])
prompt_ids = json.loads(sys.argv[3])

from history import create_app

app = create_app(config)
client = app.test_client()
steps = [0]


def step():
    steps[0] += 1
    if steps[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)


def counted(function):
    def wrapper(*args, **kwargs):
        step()  # killed before the step
        result = function(*args, **kwargs)
        step()  # killed after it
        return result
    return wrapper


for name in ("mkdir", "replace", "rename", "unlink", "rmdir"):
    setattr(os, name, counted(getattr(os, name)))
peewee.Database.execute_sql = counted(peewee.Database.execute_sql)
peewee.Database.commit = counted(peewee.Database.commit)

print("ready", flush=True)
started = time.monotonic()
response = client.post("/api/admin/history/delete", json={"prompt_ids": prompt_ids}, headers={"Origin": "http://localhost"})
print(json.dumps({"steps": steps[0], "status": response.status_code, "seconds": time.monotonic() - started,
                  "deleted": len(response.json["deleted"]), "failed": response.json["failed"]}), flush=True)
app.extensions["studio"].stop()
"""

CONTENTS = {"final_00001_.png": b"\x89PNG first", "final_00002_.png": b"\x89PNG second" * 50, "sub/mask.bin": b"\0" * 700}


def make_jobs(settings, round_number: int) -> dict[str, str]:
    """Insert JOBS_PER_ROUND completed jobs with real files; return {prompt_id: output_dir}."""
    base = datetime.datetime(2026, 11, 28, 12, tzinfo=datetime.timezone.utc)
    rows = {}
    records = []
    for index in range(JOBS_PER_ROUND):
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
    with database.atomic():
        for start in range(0, len(records), 100):
            Job.insert_many(records[start:start + 100]).execute()
    return rows


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


def run_worker(app_config, prompt_ids, kill_after: int, delay: float | None):
    """Run the deleting subprocess; kill it at its ``kill_after``-th step or after ``delay`` seconds."""
    config = {k: v for k, v in app_config.items() if k.startswith("STUDIO_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(kill_after), json.dumps(config), json.dumps(prompt_ids)],
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


def test_a_killed_batch_delete_leaves_each_job_whole_or_gone(app, app_config, settings, database_kind, db):
    rng = random.Random(SEED)
    rounds = ROUNDS if database_kind == "sqlite" else max(2, ROUNDS // 2)
    # A first, unkilled run measures how many steps and seconds a delete of 300 jobs takes here.
    rows = make_jobs(settings, 0)
    db.close()
    code, out, err = run_worker(app_config, list(rows), kill_after=0, delay=None)
    assert code == 0, err
    measured = json.loads(out.splitlines()[-1])
    assert measured["deleted"] == JOBS_PER_ROUND and measured["failed"] == []
    assert set(job_states(settings, rows).values()) == {"gone"}

    summary = {"rounds": 0, "killed": 0, "whole": 0, "gone": 0, "tombstoned_before_restart": 0}
    for round_number in range(1, rounds + 1):
        database.connect(reuse_if_open=True)
        rows = make_jobs(settings, round_number)
        database.close()
        if round_number % 2:
            kill_after, delay = rng.randint(1, measured["steps"]), None
        else:
            kill_after, delay = 0, rng.uniform(0, measured["seconds"])
        code, out, err = run_worker(app_config, list(rows), kill_after, delay)
        summary["rounds"] += 1
        summary["killed"] += code == -signal.SIGKILL
        assert code in (0, -signal.SIGKILL), err

        before = job_states(settings, rows)
        broken = {k: v for k, v in before.items() if v.startswith("BROKEN") or v == "whole+stray-tombstone"}
        assert not broken, (kill_after, delay, list(broken.items())[:5])
        summary["tombstoned_before_restart"] += sum(v == "tombstoned" for v in before.values())

        with another_app(app_config) as restarted:  # its start-up sweep finishes interrupted deletes
            after = job_states(settings, rows)
            assert set(after.values()) <= {"whole", "gone"}, (kill_after, delay, sorted(set(after.values())))
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
    print(f"\ncrash-delete ({database_kind}): {measured['steps']} steps per 300-job delete; {summary}")
    assert summary["killed"] >= rounds // 2


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


def test_a_failed_removal_puts_the_folder_back_and_keeps_the_record(client, make_job, settings, monkeypatch):
    job = make_job(files=2)
    folder = settings.output_dir / files.STUDIO_FOLDER / job.output_dir

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("history.files.shutil.rmtree", refuse)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["failed"][0]["prompt_id"] == job.prompt_id
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

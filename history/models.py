"""The job record: one row per ComfyUI prompt."""
from __future__ import annotations

import datetime

from peewee import BigIntegerField
from peewee import BooleanField
from peewee import CharField
from peewee import CompositeKey
from peewee import DateField
from peewee import DateTimeField
from peewee import FloatField
from peewee import IntegerField
from peewee import JSONField
from peewee import SQL
from peewee import TextField

from history.db import BaseModel
from history.thumbnails import can_thumbnail

QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
ERROR = "error"
STALLED = "stalled"
STATUSES = (QUEUED, RUNNING, COMPLETED, ERROR, STALLED)
HISTORY_STATUSES = (COMPLETED, ERROR, STALLED)
ACTIVE_STATUSES = (QUEUED, RUNNING)
RETRYABLE_STATUSES = (ERROR, STALLED)
# Older exports and the original studio wrote "failed"; it means the same as "error".
STATUS_ALIASES = {"failed": ERROR}


def known_status(raw) -> str | None:
    """A status as the store keeps it (an alias such as "failed" read as its status), or None if not one."""
    if not isinstance(raw, str):
        return None
    status = STATUS_ALIASES.get(raw, raw)
    return status if status in STATUSES else None

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


def utcnow() -> datetime.datetime:
    """Now in UTC, as an aware datetime."""
    return datetime.datetime.now(datetime.timezone.utc)


class UTCDateTimeField(DateTimeField):
    """A timestamp stored as naive UTC and read back as aware UTC."""

    def db_value(self, value):
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return super().db_value(value)

    def python_value(self, value):
        value = super().python_value(value)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=datetime.timezone.utc)
            return value.astimezone(datetime.timezone.utc)
        return value


class Job(BaseModel):
    """One job: a workflow run with its parameters, status, times and output files."""

    prompt_id = CharField(primary_key=True, max_length=64)
    workflow_id = CharField(max_length=128)
    workflow_name = TextField(default="")
    status = CharField(max_length=16, default=QUEUED)
    queued_at = UTCDateTimeField(default=utcnow)
    started_at = UTCDateTimeField(null=True)
    finished_at = UTCDateTimeField(null=True)
    duration = FloatField(null=True)
    params = JSONField(default=dict)
    seeds = JSONField(default=dict)
    input_image = TextField(null=True)
    output = JSONField(null=True)
    outputs = JSONField(default=list)
    output_dir = CharField(max_length=128, null=True, index=True)
    error = TextField(null=True)
    retry_of = CharField(max_length=64, null=True, index=True)
    starred = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])  # bulk writers (bench/fill) name no starred
    # The size of the job's files, measured when it ends or is imported (None until then), so totals
    # are a sum over the store and never a walk of the disk.
    bytes = BigIntegerField(null=True)
    # Where a prompt another client queued came from ("ComfyUI's page on http://..."); None for the studio's own.
    source = TextField(null=True)
    # The ComfyUI server (its STUDIO_COMFYUI_URL address) that ran the job; None for the built-in executor's.
    comfyui_server = TextField(null=True)
    # The worker process (Worker.worker_id) that holds a queued or running job: only it reports on the job
    # until its heartbeat expires and another takes it over (history/workers.py). None while a job waits
    # for a worker (it is in job_waiting then), and for records from before workers had ids.
    owner = CharField(max_length=128, null=True, index=True)

    class Meta:
        table_name = "job"
        indexes = (
            # The history list pages by (queued_at, prompt_id) newest first, within a status or a workflow.
            (("queued_at", "prompt_id"), False),
            (("status", "queued_at", "prompt_id"), False),
            (("workflow_id", "queued_at", "prompt_id"), False),
            (("starred", "queued_at", "prompt_id"), False),
            # The storage figures (jobs.storage_stats) sum bytes by status and workflow, and by status and day.
            (("status", "workflow_id", "bytes"), False),
            (("status", "queued_at", "bytes"), False),
        )

    @property
    def is_selectable(self) -> bool:
        """Whether the job may be selected for a batch delete (it has ended)."""
        return self.status in HISTORY_STATUSES

    @property
    def is_retryable(self) -> bool:
        """Whether the job failed or stalled, so Retry makes sense."""
        return self.status in RETRYABLE_STATUSES

    @property
    def prompt_excerpt(self) -> str:
        """The first 80 characters of the positive prompt (or of the first scene's), cut at a word."""
        return excerpt(prompt_text(self.params or {}))

    def to_dict(self) -> dict:
        """The record in the API's shape."""
        return {
            "prompt_id": self.prompt_id,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "status": self.status,
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "duration": self.duration,
            "params": self.params or {},
            "seeds": self.seeds or {},
            "input_image": self.input_image,
            "output": self.output,
            "outputs": self.outputs or [],
            "starred": bool(self.starred),
            "bytes": self.bytes,
            "output_dir": self.output_dir,
            "error": self.error,
            "retry_of": self.retry_of,
            "source": self.source,
            "comfyui_server": self.comfyui_server,
        }



class JobGraph(BaseModel):
    """A job's API-format graph (what ComfyUI's /prompt takes) and its UI workflow, where one came along."""

    prompt_id = CharField(primary_key=True, max_length=64)
    graph = JSONField(null=True)
    ui_workflow = JSONField(null=True)

    class Meta:
        table_name = "job_graph"


class JobTally(BaseModel):
    """How many jobs, and how many bytes, of one status and workflow were queued on one UTC day (history/tallies.py keeps them)."""

    day = DateField()
    status = CharField(max_length=16)
    workflow_id = CharField(max_length=128)
    jobs = BigIntegerField()
    bytes = BigIntegerField()
    measured = BigIntegerField()  # jobs whose bytes are known

    class Meta:
        table_name = "job_tally"
        primary_key = CompositeKey("day", "status", "workflow_id")


class JobDeleted(BaseModel):
    """The id of a deleted job: an observer reading ComfyUI's history (which still lists it) skips it."""

    prompt_id = CharField(primary_key=True, max_length=64)
    deleted_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "job_deleted"


def iso(value: datetime.datetime | None) -> str | None:
    """ISO 8601 with offset, or None."""
    return value.isoformat() if value is not None else None


def prompt_text(params: dict) -> str:
    """The positive prompt of a job's parameters, or its first scene's prompt."""
    prompt = params.get("positive_prompt") or params.get("prompt")
    if isinstance(prompt, str) and prompt:
        return prompt
    scenes = params.get("scenes")
    if isinstance(scenes, list) and scenes and isinstance(scenes[0], dict):
        first = scenes[0].get("prompt")
        if isinstance(first, str):
            return first
    return ""


EXCERPT_LENGTH = 80


def excerpt(text: str, length: int = EXCERPT_LENGTH) -> str:
    """``text`` on one line, cut to ``length`` characters at the last word that fits, with an ellipsis.

    A text with no space in its second half (a long token, a URL) is cut at ``length`` itself.
    """
    line = " ".join(text.split())
    if len(line) <= length:
        return line
    cut = line[:length + 1].rsplit(" ", 1)[0] if " " in line[length // 2:length + 1] else line[:length]
    return cut.rstrip(" ,;:.-") + "\u2026"


def is_video(ref: dict) -> bool:
    """Whether an output reference is a video (by extension, or ComfyUI's animated flag)."""
    name = str(ref.get("filename", "")).lower()
    return bool(ref.get("animated")) or name.endswith(VIDEO_EXTENSIONS)


def is_image(ref: dict) -> bool:
    """Whether an output reference is a still image Pillow can thumbnail."""
    return can_thumbnail(str(ref.get("filename", ""))) and not is_video(ref)


def card_images(outputs: list[dict]) -> list[dict]:
    """A job's output images for its card: saved files first, temp previews only when nothing is saved."""
    images = [ref for ref in (outputs or []) if isinstance(ref, dict) and is_image(ref)]
    saved = [ref for ref in images if ref.get("type", "output") == "output"]
    return saved or images


def best_output(outputs: list[dict]) -> dict | None:
    """The first video, else the first saved image, else the first file (never a temp preview if a saved one exists)."""
    if not outputs:
        return None
    saved = [ref for ref in outputs if ref.get("type", "output") == "output"]
    for candidates in (saved, outputs):
        for ref in candidates:
            if is_video(ref):
                return clean_ref(ref)
        for ref in candidates:
            if is_image(ref):
                return clean_ref(ref)
    return clean_ref((saved or outputs)[0])


def clean_ref(ref: dict) -> dict:
    """An output reference as stored: just ComfyUI's {filename, subfolder, type}."""
    return {"filename": ref.get("filename"), "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}


class Worker(BaseModel):
    """A process that runs jobs (STUDIO_ROLE all or worker), alive while its heartbeat is fresh."""

    worker_id = CharField(primary_key=True, max_length=128)
    role = CharField(max_length=16)
    host = TextField()
    pid = IntegerField()
    started = UTCDateTimeField(default=utcnow)
    heartbeat_at = UTCDateTimeField(default=utcnow, index=True)
    # Each ComfyUI server as this worker sees it ([{url, up, queue_remaining}]), for the web processes' queue page.
    servers = JSONField(null=True)

    class Meta:
        table_name = "worker"


class WaitingJob(BaseModel):
    """A queued job that no worker holds yet (posted to a web process): the first free worker claims it."""

    prompt_id = CharField(primary_key=True, max_length=64)
    queued_at = UTCDateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "job_waiting"


class EndedLogin(BaseModel):
    """A session login ended by a logout (history.web.login), kept until it would have run out anyway."""

    login_id = CharField(primary_key=True, max_length=64)
    until = UTCDateTimeField(index=True)

    class Meta:
        table_name = "ended_login"

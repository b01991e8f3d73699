"""What a job's card and its overlay show, built before rendering: the partials only lay it out.

A newcomer changing what a card shows edits ``job_cards``/``Card`` here and ``partials/job_card.html``;
every URL, file lookup and retry state is decided here, so templates do no filesystem work.
"""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from flask import current_app
from flask import url_for

from history import jobs
from history.models import ACTIVE_STATUSES
from history.models import COMPLETED
from history.models import Job
from history.models import card_images
from history.studio import studio
from history.web import media


@dataclass(frozen=True)
class RetryState:
    """Retry on a failed or stalled job: whether it can run now, and what became of its newest retry."""

    prompt_id: str
    workflow_id: str
    url: str | None  # where the Retry form posts; None when it cannot run
    reason: str | None = None  # why it cannot run (its workflow is not installed)
    notes: tuple[str, ...] = ()  # what a retry would fit to the workflow as installed now
    latest_id: str | None = None  # the newest retry of this job, from the store
    latest_status: str | None = None
    error: str | None = None  # what the server refused on the last click (only in that answer)

    @property
    def queued(self) -> bool:
        """Whether the newest retry is still on the queue."""
        return self.latest_status in ACTIVE_STATUSES

    @property
    def failed(self) -> bool:
        """Whether the newest retry ended without completing."""
        return self.latest_id is not None and not self.queued and self.latest_status != COMPLETED


@dataclass(frozen=True)
class Card:
    """One card: the job and everything its partial shows, with every URL made."""

    job: Job
    url: str
    title: str
    excerpt: str
    selectable: bool
    thumbnail_url: str | None
    image_count: int
    retry: RetryState | None
    source: str | None = None  # where a prompt another ComfyUI client queued came from
    server: str | None = None  # the ComfyUI server that ran it, when the studio has more than that one


def shown_server(job: Job) -> str | None:
    """The ComfyUI server a card names: the job's, unless it is the studio's only server (then it says nothing)."""
    if not job.comfyui_server:
        return None
    return None if current_app.config["STUDIO"].comfyui_urls == (job.comfyui_server,) else job.comfyui_server


@dataclass(frozen=True)
class GraphDownload:
    """A graph to take back to ComfyUI: prompt.json (API format) or workflow.json (its page's UI workflow)."""

    name: str
    url: str
    what: str


@dataclass(frozen=True)
class InputImage:
    """A job's input image: its name, the file's URL and a small preview (None when missing)."""

    name: str
    url: str | None
    preview_url: str | None


@dataclass(frozen=True)
class JobDetail:
    """The overlay: the job, its retry state, the jobs that retried it, its outputs and its input image."""

    job: Job
    url: str
    title: str
    retry: RetryState | None
    retried_as: list[Job] = field(default_factory=list)
    outputs: list = field(default_factory=list)  # media.OutputView, in node order
    input_image: InputImage | None = None
    downloads: list[GraphDownload] = field(default_factory=list)


def graph_downloads(job: Job) -> list[GraphDownload]:
    """The graphs kept for a job that ComfyUI can take back."""
    kept = jobs.graph_of(job.prompt_id)
    downloads = []
    if kept is not None and kept.graph:
        downloads.append(GraphDownload("prompt.json", url_for("api.history_prompt_json", prompt_id=job.prompt_id),
                                       "the API-format graph, what ComfyUI's /prompt takes"))
    if kept is not None and kept.ui_workflow:
        downloads.append(GraphDownload("workflow.json", url_for("api.history_workflow_json", prompt_id=job.prompt_id),
                                       "the UI workflow: drop it on ComfyUI's page to open it"))
    return downloads


def retry_state(job: Job, latest_retry: str | None, error: str | None = None) -> RetryState | None:
    """The Retry of a failed or stalled job; ``latest_retry`` is ``"prompt_id status"`` of its newest retry."""
    if not job.is_retryable:
        return None
    plan = studio().retry_plan(job)
    latest_id, _, latest_status = (latest_retry or "").partition(" ")
    return RetryState(
        prompt_id=job.prompt_id,
        workflow_id=job.workflow_id,
        url=url_for("history.history_retry", prompt_id=job.prompt_id) if plan.available else None,
        reason=plan.reason,
        notes=tuple(plan.notes),
        latest_id=latest_id or None,
        latest_status=latest_status or None,
        error=error,
    )


def _thumbnail(job: Job, images: list[dict]) -> str | None:
    """The card's thumbnail: the first output image, else the input image (an image-to-video job), else None."""
    if images:
        return media.thumbnail_url(images[0], job.comfyui_server)
    if job.input_image:
        return media.input_thumbnail_url(job.input_image)
    return None


def job_card(job: Job, latest_retry: str | None = None, compact: bool = False) -> Card:
    """Build what one card shows; ``latest_retry`` as the history page reads it (jobs.latest_retry_key)."""
    images = card_images(job.outputs)
    return Card(
        job=job,
        url=url_for("history.history_job", prompt_id=job.prompt_id),
        title=job.workflow_name or job.workflow_id,
        excerpt=job.prompt_excerpt,
        selectable=job.is_selectable and not compact,
        thumbnail_url=_thumbnail(job, images),
        image_count=len(images),
        retry=None if compact else retry_state(job, latest_retry),
        source=job.source,
        server=shown_server(job),
    )


def job_cards(page_jobs: list[Job], compact: bool = False) -> list[Card]:
    """Build the cards of a list page (its jobs carry ``latest_retry`` from jobs.history_page)."""
    return [job_card(job, getattr(job, "latest_retry", None), compact) for job in page_jobs]


def card_of(job: Job, compact: bool = False) -> Card:
    """Build one job's card on its own (the card endpoint, a retry's answer)."""
    return job_card(job, jobs.latest_retry(job.prompt_id), compact)


def job_detail(job: Job, error: str | None = None) -> JobDetail:
    """Build what a job's overlay shows."""
    retried_as = list(jobs.retries_of(job.prompt_id))
    latest = f"{retried_as[0].prompt_id} {retried_as[0].status}" if retried_as else None
    input_image = None
    if job.input_image:
        input_image = InputImage(job.input_image, media.input_url(job.input_image), media.input_thumbnail_url(job.input_image))
    return JobDetail(
        job=job,
        url=url_for("history.history_job", prompt_id=job.prompt_id),
        title=job.workflow_name or job.workflow_id,
        retry=retry_state(job, latest, error),
        retried_as=retried_as,
        outputs=media.output_views(job),
        input_image=input_image,
        downloads=graph_downloads(job),
    )

"""Compare two jobs: the rows of the side-by-side view, each value of both jobs, and whether they differ.

A view-model for templates/compare.html (built before rendering: no queries or files in the template).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from history.models import Job
from history.models import iso


@dataclass
class Row:
    """One compared value: its label, what each job has, and whether they differ."""

    section: str
    label: str
    a: str
    b: str

    @property
    def differs(self) -> bool:
        """Whether the two jobs have different values here."""
        return self.a != self.b


def shown(value) -> str:
    """A value as the view prints it: text as it is, numbers plainly, anything else as JSON; nothing as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _keyed(section: str, a: dict, b: dict) -> list[Row]:
    """A row per key of either mapping, in the first one's order, then the second's."""
    keys = list(dict.fromkeys([*(a or {}), *(b or {})]))
    return [Row(section, key, shown((a or {}).get(key)), shown((b or {}).get(key))) for key in keys]


def compare_rows(a: Job, b: Job) -> list[Row]:
    """Every row of the comparison: the job, its times, its params, its seeds and its outputs."""
    rows = [
        Row("job", "workflow", f"{a.workflow_name} ({a.workflow_id})", f"{b.workflow_name} ({b.workflow_id})"),
        Row("job", "status", a.status, b.status),
        Row("job", "retry_of", a.retry_of or "", b.retry_of or ""),
        Row("job", "input_image", a.input_image or "", b.input_image or ""),
        Row("job", "output_dir", a.output_dir or "", b.output_dir or ""),
        Row("job", "error", a.error or "", b.error or ""),
        Row("times", "queued_at", iso(a.queued_at) or "", iso(b.queued_at) or ""),
        Row("times", "started_at", iso(a.started_at) or "", iso(b.started_at) or ""),
        Row("times", "finished_at", iso(a.finished_at) or "", iso(b.finished_at) or ""),
        Row("times", "duration", shown(a.duration), shown(b.duration)),
    ]
    rows += _keyed("params", a.params, b.params)
    rows += _keyed("seeds", a.seeds, b.seeds)
    rows.append(Row("outputs", "files", str(len(a.outputs or [])), str(len(b.outputs or []))))
    return rows

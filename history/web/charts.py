"""The Storage panel's charts as view-models: every bar's box, colour, label and the filter it links to.

The templates draw them as inline SVG (partials/storage_panel.html), so they read without JavaScript and
each bar is a plain link to the History page filtered to what it counts. No queries here: the figures
come from jobs.storage_stats.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from dataclasses import field

from history import jobs
from history.models import HISTORY_STATUSES
from history.web.templating import human_size

DAY_CHART = {"width": 600, "height": 140, "top": 14, "bottom": 20}
WORKFLOW_ROW = 22
WORKFLOW_LABEL = 180
WORKFLOW_WIDTH = 600
MAX_WORKFLOWS = 10


@dataclass
class Bar:
    """One bar (or one segment of a stacked bar) of a chart."""

    x: float
    y: float
    width: float
    height: float
    status: str | None
    href: str
    title: str


@dataclass
class Chart:
    """A chart's size, its bars and its text labels ((x, y, text, anchor))."""

    width: int
    height: int
    bars: list[Bar] = field(default_factory=list)
    labels: list[tuple[float, float, str, str]] = field(default_factory=list)


def _day_window(day: str) -> tuple[datetime.datetime, datetime.datetime]:
    start = datetime.datetime.combine(datetime.date.fromisoformat(day), datetime.time(), tzinfo=datetime.timezone.utc)
    return start, start + datetime.timedelta(days=1)


def day_chart(stats: dict, link) -> Chart:
    """Jobs per day (UTC) stacked by status; each segment links to that day's jobs of that status."""
    days = stats["by_day"]
    chart = Chart(DAY_CHART["width"], DAY_CHART["height"])
    plot = DAY_CHART["height"] - DAY_CHART["top"] - DAY_CHART["bottom"]
    peak = max([sum(day["jobs"].get(status, 0) for status in HISTORY_STATUSES) for day in days] + [1])
    slot = DAY_CHART["width"] / max(len(days), 1)
    for index, day in enumerate(days):
        start, end = _day_window(day["day"])
        bottom = DAY_CHART["top"] + plot
        for status in HISTORY_STATUSES:
            count = day["jobs"].get(status, 0)
            if not count:
                continue
            height = max(plot * count / peak, 1.5)
            bottom -= height
            history_filter = jobs.HistoryFilter(statuses=(status,), queued_after=start, queued_before=end)
            chart.bars.append(Bar(
                round(index * slot + 1, 1), round(bottom, 1), round(slot - 2, 1), round(height, 1), status,
                link(history_filter), f"{day['day']}: {count} {status}",
            ))
    chart.labels.append((0, DAY_CHART["height"] - 4, days[0]["day"] if days else "", "start"))
    chart.labels.append((DAY_CHART["width"], DAY_CHART["height"] - 4, days[-1]["day"] if days else "", "end"))
    chart.labels.append((0, 10, f"{peak} jobs", "start"))
    return chart


def workflow_chart(stats: dict, link) -> Chart:
    """Bytes by workflow, largest first; each bar links to that workflow's jobs."""
    rows = stats["by_workflow"][:MAX_WORKFLOWS]
    chart = Chart(WORKFLOW_WIDTH, max(len(rows), 1) * WORKFLOW_ROW)
    peak = max([row["bytes"] for row in rows] + [1])
    span = WORKFLOW_WIDTH - WORKFLOW_LABEL - 90
    for index, row in enumerate(rows):
        y = index * WORKFLOW_ROW
        width = max(span * row["bytes"] / peak, 1.5)
        history_filter = jobs.HistoryFilter(workflow_id=row["workflow_id"])
        title = f"{row['workflow_name']}: {human_size(row['bytes'])} in {row['jobs']} jobs"
        chart.bars.append(Bar(WORKFLOW_LABEL, y + 3, round(width, 1), WORKFLOW_ROW - 6, None, link(history_filter), title))
        chart.labels.append((WORKFLOW_LABEL - 6, y + WORKFLOW_ROW - 7, row["workflow_name"][:28], "end"))
        chart.labels.append((WORKFLOW_LABEL + width + 6, y + WORKFLOW_ROW - 7, human_size(row["bytes"]), "start"))
    return chart


def storage_panel(stats: dict, link) -> dict:
    """Everything the Storage panel shows: totals, the two charts, the oldest job."""
    return {
        "stats": stats,
        "days": day_chart(stats, link),
        "workflows": workflow_chart(stats, link),
        "total_size": human_size(stats["total"]["bytes"]),
        "by_status": [
            {**entry, "size": human_size(entry["bytes"]), "href": link(jobs.HistoryFilter(statuses=(entry["status"],)))}
            for entry in stats["by_status"]
            if entry["status"] in HISTORY_STATUSES
        ],
    }

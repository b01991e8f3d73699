"""Every template filter and global, registered on the app in one place.

Formatting (times in the reader's zone, durations, sizes, JSON) and how the overlay shows a parameter.
No global looks at the filesystem: what a card or the overlay shows (media URLs, retry state) is built
before rendering by history.web.cards. The login state comes from the request pipeline.
"""
from __future__ import annotations

import datetime
import json
import urllib.parse
from zoneinfo import ZoneInfo

from flask import Flask
from flask import current_app
from flask import g
from flask import request

from history import text
from history.web import guard

PROMPT_KEYS = ("positive_prompt", "negative_prompt", "prompt")
TZ_COOKIE = "studio_tz"


def reader_timezone():
    """The reader's time zone (the cookie history.js sets from the browser), UTC until it is known."""
    if "history_tz" not in g:
        name = request.cookies.get(TZ_COOKIE, "")
        zone = datetime.timezone.utc
        if name and len(name) < 64:
            try:
                zone = ZoneInfo(name)
            except (ValueError, OSError, KeyError):
                zone = datetime.timezone.utc
        g.history_tz = zone
    return g.history_tz


def tz_name() -> str:
    """The name of the reader's time zone (``UTC`` until the browser has said)."""
    return getattr(reader_timezone(), "key", "UTC")


def endpoint_for(rule_suffix: str) -> str | None:
    """The endpoint registered for a URL rule ending in ``rule_suffix`` (another blueprint's), or None."""
    for rule in current_app.url_map.iter_rules():
        if rule.rule.endswith(rule_suffix):
            return rule.endpoint
    return None


def local_time(value, style: str = "time") -> str:
    """A UTC timestamp in the reader's zone: ``time`` (14:03:12), ``date`` (Nov 28) or ``full``."""
    if value is None:
        return ""
    local = value.astimezone(reader_timezone())
    if style == "date":
        return f"{local:%b} {local.day}"
    if style == "full":
        offset = local.strftime("%z")
        if offset == "+0000" and local.tzname() in ("UTC", "GMT"):
            return f"{local:%Y-%m-%d %H:%M:%S} UTC"
        return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} (UTC{offset[:3]}:{offset[3:]})"
    return f"{local:%H:%M:%S}"


def same_local_day(first, second) -> bool:
    """Whether two timestamps fall on the same day in the reader's zone."""
    if first is None or second is None:
        return True
    zone = reader_timezone()
    return first.astimezone(zone).date() == second.astimezone(zone).date()


def format_duration(seconds) -> str:
    """Seconds as a person reads them: 350ms, 42s, 3m 12s, 1h 4m (never "0s" for a job that ran)."""
    if seconds is None:
        return ""
    if float(seconds) < 0.9995:
        milliseconds = int(round(float(seconds) * 1000))
        return f"{milliseconds}ms" if milliseconds >= 1 else "<1ms"
    total = int(round(float(seconds)))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60}s"
    return f"{total // 3600}h {total % 3600 // 60}m"


def pretty_json(value) -> str:
    """Arrays and objects as indented JSON (plain text: the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def human_size(size) -> str:
    """A byte count as a person reads it: 512 B, 1.5 KB, 12 MB, 3.1 GB."""
    if size is None:
        return ""
    size = float(size)
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"
    return ""  # unreachable


def server_name(url) -> str:
    """A ComfyUI server's address as a card names it: host and port (``127.0.0.1:8189``), its path if it has one."""
    try:
        parts = urllib.parse.urlsplit(str(url or ""))
    except ValueError:  # a stored value that is no address (an import) is shown as it is
        return str(url)
    return (parts.netloc + parts.path.rstrip("/")) or str(url or "")


def param_kind(job, key: str, value) -> str:
    """How the overlay shows a parameter: prompt, scenes, image, seed, json or text."""
    if key in PROMPT_KEYS and isinstance(value, str):
        return "prompt"
    if key == "scenes" and isinstance(value, list) and all(isinstance(scene, dict) for scene in value):
        return "scenes"
    if isinstance(value, str) and value and value == job.input_image:
        return "image"
    if isinstance(value, (dict, list)):
        return "json"
    if key in (job.seeds or {}) and not isinstance(value, bool):
        return "seed"
    return "text"


def used_seed(job, key: str, value, scene_index: int | None = None):
    """The seed a job actually used for a parameter when it differs from the submitted one (a -1), else None."""
    used = (job.seeds or {}).get(key)
    if scene_index is not None:
        used = used[scene_index] if isinstance(used, list) and scene_index < len(used) else None
    if used is None or isinstance(used, (dict, list)) or used == value:
        return None
    return used


FILTERS = {
    "local_time": local_time,
    "same_local_day": same_local_day,
    "duration": format_duration,
    "pretty_json": pretty_json,
    "server_name": server_name,
}

GLOBALS = {
    "param_kind": param_kind,
    "used_seed": used_seed,
    "human_size": human_size,
    "current_login": guard.current_login,
}


def init_app(app: Flask) -> None:
    """Register every filter and global the templates use."""
    app.jinja_env.filters.update(FILTERS)
    app.jinja_env.globals.update(GLOBALS)
    # Everything a template prints passes here: text a store holds that UTF-8 cannot encode is repaired.
    app.jinja_env.finalize = text.printable

"""Settings from the STUDIO_* environment variables, validated once at start-up.

VARIABLES is the one table of every setting: its variable, the Settings field it fills, the parser that reads
it, its default as a person reads it, and what it means. It makes the Settings dataclass, load_settings(),
``--help`` (history/cli.py) and the README's configuration table (a test holds the README to it). Rows are
read in order, so a default can build on an earlier field (the output folder on the data folder).
"""
from __future__ import annotations

import dataclasses
import os
import re
import secrets
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from history.files import OutputRoots
from history.models import HISTORY_STATUSES
from history.models import known_status

PACKAGE_DIR = Path(__file__).resolve().parent
DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql", "psycopg3", "postgresext", "postgresqlext")
COOKIE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConfigError(Exception):
    """A setting that cannot work; the message is one line a person can act on."""


@dataclasses.dataclass(frozen=True)
class Variable:
    """One STUDIO_* setting."""

    name: str
    field: str
    type: object  # the Settings field's annotation
    parse: Callable[[str, str | None, dict], object]  # (variable, raw value or None when unset, fields so far)
    default: str  # as a person reads it: README and --help
    help: str


def _number(name: str, raw: str, kind=float, minimum: float = 0.0):
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value < minimum or value in (float("inf"),):
        raise ConfigError(f"{name} must be a number of at least {minimum}, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")


def _check_writable(name: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{name} {path} cannot be created: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{name} {path} is not writable")


def _secret_key(data_dir: Path) -> str:
    """Read the secret key kept in the data dir, making one the first time."""
    key_file = data_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    key = secrets.token_hex(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


# ---- parsers: (variable, raw or None, fields so far) -> value ------------------------------------

def number(default: str, minimum: float = 0.0, kind=float):
    """A number of at least ``minimum`` (``kind`` int or float), ``default`` when unset."""
    return lambda name, raw, seen: _number(name, raw or default, kind=kind, minimum=minimum)


def flag(default: str):
    """1 or 0 (true/false, yes/no, on/off), ``default`` when unset."""
    return lambda name, raw, seen: _flag(name, raw or default)


def text(name: str, raw: str | None, seen: dict) -> str | None:
    """Any text, or None when unset."""
    return raw


def data_dir(name: str, raw: str | None, seen: dict) -> Path:
    """The data folder, made when missing; it must be writable."""
    folder = Path(raw or "./data").expanduser().resolve()
    _check_writable(name, folder)
    return folder


def media_dir(subfolder: str):
    """A folder the media routes serve (``subfolder`` of the data folder by default); it must not hold the data."""

    def parse(name: str, raw: str | None, seen: dict) -> Path:
        folder = Path(raw or seen["data_dir"] / subfolder).expanduser().resolve()
        _check_writable(name, folder)
        data = seen["data_dir"]
        # Media routes serve what is under these folders; the data dir holds the database and secret key.
        if folder == data or folder in data.parents:
            raise ConfigError(f"{name} {folder} must not contain STUDIO_DATA_DIR {data}")
        return folder

    return parse


def workflows_dir(name: str, raw: str | None, seen: dict) -> Path:
    """The folder of workflow definitions (the examples shipped in history/ by default)."""
    return Path(raw or PACKAGE_DIR / "workflows").expanduser().resolve()


def database_url(name: str, raw: str | None, seen: dict) -> str:
    """A peewee db_url of SQLite or PostgreSQL (a SQLite file in the data folder by default)."""
    url = raw or f"sqlite:///{seen['data_dir'] / 'studio.db'}"
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(f"{name} must start with sqlite:// or postgresql://, got {url.split('://')[0]!r}")
    return url


def _comfyui_address(name: str, url: str) -> str:
    """One ComfyUI address, checked: http(s) with a host, no query or fragment, without its trailing slash."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name} entries must be http:// or https:// addresses, got {url[:200]!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as error:
        raise ConfigError(f"{name}: {url[:200]!r} is not an address ({error})") from None
    if not parts.hostname or parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigError(f"{name}: {url[:200]!r} must be scheme://host[:port][/path], with no query or login")
    return url


def comfyui_urls(name: str, raw: str | None, seen: dict) -> tuple[str, ...]:
    """Comma-separated ComfyUI addresses (each http(s), no trailing slash, none twice), or () when unset."""
    if raw is None:
        return ()
    urls = tuple(_comfyui_address(name, part) for part in raw.split(","))
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{name} names a server twice: {raw[:200]!r}")
    return urls


def comfyui_output_dirs(name: str, raw: str | None, seen: dict) -> tuple[Path, ...]:
    """One output folder per ComfyUI server, in STUDIO_COMFYUI_URL's order; () to share STUDIO_OUTPUT_DIR."""
    if raw is None:
        return ()
    urls = seen["comfyui_urls"]
    parts = [part.strip() for part in raw.split(",")]
    if not urls:
        raise ConfigError(f"{name} is set but STUDIO_COMFYUI_URL is not: it names each ComfyUI server's output folder")
    if len(parts) != len(urls) or not all(parts):
        raise ConfigError(
            f"{name} must name {len(urls)} folder(s), one per STUDIO_COMFYUI_URL server in the same order; "
            f"got {len(parts)}: {raw[:200]!r}"
        )
    folders = tuple(media_dir("output")(name, part, seen) for part in parts)
    if len(set(folders)) != len(folders):
        raise ConfigError(f"{name} names one folder twice; servers sharing a folder leave it unset (STUDIO_OUTPUT_DIR)")
    return folders


ROLES = ("all", "web", "worker")


def role(name: str, raw: str | None, seen: dict) -> str:
    """all, web or worker; web and worker need PostgreSQL (on SQLite one ``all`` process is the only layout)."""
    value = (raw or "all").strip().lower()
    if value not in ROLES:
        raise ConfigError(f"{name} must be one of {', '.join(ROLES)}, got {raw!r}")
    if value != "all" and seen["database_url"].startswith("sqlite"):
        raise ConfigError(
            f"{name}={value} needs PostgreSQL (STUDIO_DATABASE_URL=postgresql://...): on SQLite one process "
            f"does everything, so leave {name} unset (all)"
        )
    return value


def secret_key(name: str, raw: str | None, seen: dict) -> str:
    """The given key, or the one kept in the data folder (made the first time)."""
    return raw or _secret_key(seen["data_dir"])


def cookie_name(name: str, raw: str | None, seen: dict) -> str:
    """A cookie name of letters, digits, - and _."""
    value = raw or "studio_session"
    if not COOKIE_NAME.match(value):
        raise ConfigError(f"{name} must be letters, digits, - or _ (at most 64), got {value[:80]!r}")
    return value


def url_prefix(name: str, raw: str | None, seen: dict) -> str:
    """A path such as /studio (no trailing slash), or "" for none."""
    prefix = (raw or "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ConfigError(f"{name} must start with /, got {prefix!r}")
    return prefix


def origins(name: str, raw: str | None, seen: dict) -> tuple[str, ...]:
    """Comma-separated http(s) origins."""
    found = tuple(origin.strip().rstrip("/") for origin in (raw or "").split(",") if origin.strip())
    for origin in found:
        if not origin.startswith(("http://", "https://")):
            raise ConfigError(f"{name} entries must be http(s) origins, got {origin!r}")
    return found


def retention(name: str, raw: str | None, seen: dict) -> tuple[tuple[str, float], ...]:
    """Retention rules (parse_retention)."""
    return parse_retention(raw or "")


VARIABLES = (
    Variable("STUDIO_DATA_DIR", "data_dir", Path, data_dir, "./data", "root for the defaults below"),
    Variable("STUDIO_DATABASE_URL", "database_url", str, database_url, "sqlite:///$STUDIO_DATA_DIR/studio.db",
             "any peewee db_url; postgresql://... for several workers or hosts"),
    Variable("STUDIO_OUTPUT_DIR", "output_dir", Path, media_dir("output"), "$STUDIO_DATA_DIR/output",
             "the output folder; job files live in comfyui-studio/<output_dir>/ under it"),
    Variable("STUDIO_INPUT_DIR", "input_dir", Path, media_dir("input"), "$STUDIO_DATA_DIR/input",
             "uploaded input images (ComfyUI's input/)"),
    Variable("STUDIO_COMFYUI_URL", "comfyui_urls", "tuple[str, ...]", comfyui_urls, "unset",
             "one or more ComfyUI servers, comma-separated (http://127.0.0.1:8188,http://127.0.0.1:8189); each job "
             "goes to the one with the shortest queue; unset means the built-in executor"),
    Variable("STUDIO_COMFYUI_OUTPUT_DIRS", "comfyui_output_dirs", "tuple[Path, ...]", comfyui_output_dirs, "unset",
             "each ComfyUI server's own output folder, comma-separated in STUDIO_COMFYUI_URL's order; unset, they all "
             "write to STUDIO_OUTPUT_DIR"),
    Variable("STUDIO_COMFYUI_OBSERVE", "comfyui_observe", bool, flag("1"), "1",
             "also record the prompts other clients queue on those ComfyUI servers, and import their history on the "
             "first connection; 0 turns it off"),
    Variable("STUDIO_ROLE", "role", str, role, "all",
             "`web` serves pages, API and websockets and runs nothing; `worker` runs jobs and serves only /healthz "
             "and /metrics; `all` does both in one process (web and worker need PostgreSQL)"),
    Variable("STUDIO_HEARTBEAT_SECONDS", "heartbeat_seconds", float, number("10", minimum=0.05), "10",
             "how often a process that runs jobs says it is alive; another takes its jobs over after three "
             "silent intervals"),
    Variable("STUDIO_WORKFLOWS_DIR", "workflows_dir", Path, workflows_dir, "history/workflows", "folder of workflow definitions"),
    Variable("STUDIO_BUSY_SECONDS", "busy_seconds", float, number("15", minimum=0.0), "15",
             "how long a write waits for another process's SQLite write lock before answering 503"),
    Variable("STUDIO_POLL_SECONDS", "poll_seconds", float, number("5", minimum=0.05), "5",
             "the list's poll interval (fractions allowed)"),
    Variable("STUDIO_STALL_SECONDS", "stall_seconds", float, number("600", minimum=0.05), "600",
             "a running job with no progress for this long becomes stalled"),
    Variable("STUDIO_PAGE_SIZE", "page_size", int, number("50", minimum=1, kind=int), "50",
             "cards on the first page; more load on scroll"),
    Variable("STUDIO_ADMIN_PASSWORD", "admin_password", "str | None", text, "unset",
             "when set, every admin page, API, media file and the websocket need a login or a bearer token"),
    Variable("STUDIO_API_TOKEN", "api_token", "str | None", text, "unset",
             "an extra bearer token accepted beside the password-derived one"),
    Variable("STUDIO_SECRET_KEY", "secret_key", str, secret_key, "generated into the data dir", "signs sessions"),
    Variable("STUDIO_SESSION_COOKIE", "session_cookie", str, cookie_name, "studio_session",
             "the login cookie's name: give each studio on one host name its own (cookies ignore the port)"),
    Variable("STUDIO_DEMO", "demo", bool, flag("1"), "1",
             "on an empty store, run the example workflows once so the page has real jobs; 0 turns it off"),
    Variable("STUDIO_URL_PREFIX", "url_prefix", str, url_prefix, "unset", "mount every URL under this prefix, e.g. /studio"),
    Variable("STUDIO_PROXY_FIX", "proxy_fix", int, number("0", kind=int), "unset",
             "trust X-Forwarded-* from this many proxies (Werkzeug ProxyFix)"),
    Variable("STUDIO_EMBED_ORIGINS", "embed_origins", "tuple[str, ...]", origins, "unset",
             "comma-separated origins allowed to fetch the fragments (CORS)"),
    Variable("STUDIO_EMBED_CREDENTIALS", "embed_credentials", bool, flag("0"), "0", "1 lets those origins send cookies"),
    Variable("STUDIO_RETENTION", "retention", "tuple[tuple[str, float], ...]", retention, "unset",
             "rules like `error=7d,stalled=7d,completed=90d`: jobs queued longer ago are removed hourly "
             "(one process at a time); starred jobs are kept"),
)
NAMES = frozenset(variable.name for variable in VARIABLES)


def _thumbnail_dir(self) -> Path:
    """The on-disk thumbnail cache."""
    return self.data_dir / "thumbnails"


def _output_roots(self) -> OutputRoots:
    """Where each ComfyUI server's files are: its own folder (STUDIO_COMFYUI_OUTPUT_DIRS) or the output folder."""
    return OutputRoots(self.output_dir, dict(zip(self.comfyui_urls, self.comfyui_output_dirs)), self.comfyui_urls)


# Every setting of the app, resolved to absolute paths and typed values: one field per row of VARIABLES.
Settings = dataclasses.make_dataclass(
    "Settings",
    [(variable.field, variable.type) for variable in VARIABLES],
    namespace={"thumbnail_dir": property(_thumbnail_dir), "output_roots": property(_output_roots), "__module__": __name__},
)
Settings.__doc__ = "Every setting of the app, resolved to absolute paths and typed values (one field per VARIABLES row)."


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(raw: str) -> float:
    """An age such as 30d, 12h, 90m, 2w or 45s, in seconds; raise ValueError saying how to write one."""
    text = str(raw).strip().lower()
    number, unit = text[:-1], text[-1:]
    try:
        value = float(number) * AGE_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"{raw!r} is not an age; write a number and a unit (s, m, h, d, w), e.g. 30d") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{raw!r} is not an age of more than nothing")
    return value


def parse_retention(raw: str) -> tuple[tuple[str, float], ...]:
    """STUDIO_RETENTION (``error=7d,stalled=7d,completed=90d``) as (status, seconds) rules; raise ConfigError."""
    rules = {}
    for part in (piece.strip() for piece in raw.split(",")):
        if not part:
            continue
        name, equals, age = part.partition("=")
        status = known_status(name.strip())
        if not equals or status not in HISTORY_STATUSES:
            raise ConfigError(
                f"STUDIO_RETENTION: {part!r} must read status=age with a status of {', '.join(HISTORY_STATUSES)}, e.g. error=7d"
            )
        try:
            rules[status] = parse_age(age)
        except ValueError as error:
            raise ConfigError(f"STUDIO_RETENTION: {error}") from None
    return tuple(rules.items())


def load_settings(environ: dict | None = None, overrides: dict | None = None) -> Settings:
    """Build Settings from an environment (os.environ by default) and overrides; raise ConfigError.

    An override names a setting (``STUDIO_POLL_SECONDS`` or ``poll_seconds``); one that names none is an
    error, so a mistyped test or host setting is not silently ignored.
    """
    env = dict(os.environ if environ is None else environ)
    for key, value in (overrides or {}).items():
        name = key if key.startswith("STUDIO_") else "STUDIO_" + key.upper()
        if name not in NAMES:
            raise ConfigError(f"{name} is not a setting; the settings are {', '.join(sorted(NAMES))}")
        env[name] = str(value)
    fields: dict = {}
    for variable in VARIABLES:
        raw = env.get(variable.name)
        fields[variable.field] = variable.parse(variable.name, raw if raw not in (None, "") else None, fields)
    return Settings(**fields)


def help_rows() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every setting, for --help."""
    return [(variable.name, variable.default, variable.help.replace("`", "")) for variable in VARIABLES]


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for variable in VARIABLES:
        default = "unset" if variable.default == "unset" else f"`{variable.default}`"
        lines.append(f"| `{variable.name}` | {default} | {variable.help} |")
    return "\n".join(lines)

"""Settings from the STUDIO_* environment variables, validated once at start-up."""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql", "psycopg3", "postgresext", "postgresqlext")

# Every variable, its default as a person reads it, and what it means: the README and --help print this.
VARIABLES = [
    ("STUDIO_DATA_DIR", "./data", "root for the defaults below"),
    ("STUDIO_DATABASE_URL", "sqlite:///$STUDIO_DATA_DIR/studio.db", "any peewee db_url; postgresql://... for several workers or hosts"),
    ("STUDIO_OUTPUT_DIR", "$STUDIO_DATA_DIR/output", "the output folder; job files live in comfyui-studio/<output_dir>/ under it"),
    ("STUDIO_INPUT_DIR", "$STUDIO_DATA_DIR/input", "uploaded input images (ComfyUI's input/)"),
    ("STUDIO_COMFYUI_URL", "unset", "a ComfyUI server (http://127.0.0.1:8188); unset means the built-in executor"),
    ("STUDIO_WORKFLOWS_DIR", "history/workflows", "folder of workflow definitions"),
    ("STUDIO_POLL_SECONDS", "5", "the list's poll interval (fractions allowed)"),
    ("STUDIO_STALL_SECONDS", "600", "a running job with no progress for this long becomes stalled"),
    ("STUDIO_PAGE_SIZE", "50", "cards on the first page; more load on scroll"),
    ("STUDIO_ADMIN_PASSWORD", "unset", "when set, every admin page, API, media file and the websocket need a login or a bearer token"),
    ("STUDIO_API_TOKEN", "unset", "an extra bearer token accepted beside the password-derived one"),
    ("STUDIO_SECRET_KEY", "generated into the data dir", "signs sessions"),
    ("STUDIO_DEMO", "1", "on an empty store, run the example workflows once so the page has real jobs; 0 turns it off"),
    ("STUDIO_URL_PREFIX", "unset", "mount every URL under this prefix, e.g. /studio"),
    ("STUDIO_PROXY_FIX", "unset", "trust X-Forwarded-* from this many proxies (Werkzeug ProxyFix)"),
    ("STUDIO_EMBED_ORIGINS", "unset", "comma-separated origins allowed to fetch the fragments (CORS)"),
    ("STUDIO_EMBED_CREDENTIALS", "0", "1 lets those origins send cookies"),
    ("STUDIO_RETENTION", "unset", "rules like error=7d,stalled=7d,completed=90d: jobs queued longer ago are removed hourly; starred jobs are kept"),
]


class ConfigError(Exception):
    """A setting that cannot work; the message is one line a person can act on."""


@dataclass
class Settings:
    """Every setting of the app, resolved to absolute paths and typed values."""

    data_dir: Path
    database_url: str
    output_dir: Path
    input_dir: Path
    workflows_dir: Path
    comfyui_url: str | None = None
    poll_seconds: float = 5.0
    stall_seconds: float = 600.0
    page_size: int = 50
    admin_password: str | None = None
    api_token: str | None = None
    secret_key: str = ""
    demo: bool = True
    url_prefix: str = ""
    proxy_fix: int = 0
    embed_origins: tuple[str, ...] = ()
    embed_credentials: bool = False
    retention: tuple[tuple[str, float], ...] = ()  # (status, seconds): STUDIO_RETENTION's rules

    @property
    def thumbnail_dir(self) -> Path:
        """The on-disk thumbnail cache."""
        return self.data_dir / "thumbnails"


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
    from history.models import HISTORY_STATUSES
    from history.models import known_status

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
    """Build Settings from an environment (os.environ by default) and test overrides; raise ConfigError."""
    env = dict(os.environ if environ is None else environ)
    for key, value in (overrides or {}).items():
        env[key if key.startswith("STUDIO_") else "STUDIO_" + key.upper()] = str(value)

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value not in (None, "") else None

    data_dir = Path(get("STUDIO_DATA_DIR") or "./data").expanduser().resolve()
    _check_writable("STUDIO_DATA_DIR", data_dir)
    output_dir = Path(get("STUDIO_OUTPUT_DIR") or data_dir / "output").expanduser().resolve()
    input_dir = Path(get("STUDIO_INPUT_DIR") or data_dir / "input").expanduser().resolve()
    _check_writable("STUDIO_OUTPUT_DIR", output_dir)
    _check_writable("STUDIO_INPUT_DIR", input_dir)
    for name, folder in (("STUDIO_OUTPUT_DIR", output_dir), ("STUDIO_INPUT_DIR", input_dir)):
        # Media routes serve what is under these folders; the data dir holds the database and secret key.
        if folder == data_dir or folder in data_dir.parents:
            raise ConfigError(f"{name} {folder} must not contain STUDIO_DATA_DIR {data_dir}")
    workflows_dir = Path(get("STUDIO_WORKFLOWS_DIR") or PACKAGE_DIR / "workflows").expanduser().resolve()

    database_url = get("STUDIO_DATABASE_URL") or f"sqlite:///{data_dir / 'studio.db'}"
    scheme = database_url.split("://", 1)[0].split("+", 1)[0] if "://" in database_url else ""
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(
            f"STUDIO_DATABASE_URL must start with sqlite:// or postgresql://, got {database_url.split('://')[0]!r}"
        )

    comfyui_url = get("STUDIO_COMFYUI_URL")
    if comfyui_url is not None:
        comfyui_url = comfyui_url.rstrip("/")
        if not comfyui_url.startswith(("http://", "https://")):
            raise ConfigError(f"STUDIO_COMFYUI_URL must be an http:// or https:// address, got {comfyui_url!r}")

    prefix = (get("STUDIO_URL_PREFIX") or "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ConfigError(f"STUDIO_URL_PREFIX must start with /, got {prefix!r}")

    origins = tuple(o.strip().rstrip("/") for o in (get("STUDIO_EMBED_ORIGINS") or "").split(",") if o.strip())
    for origin in origins:
        if not origin.startswith(("http://", "https://")):
            raise ConfigError(f"STUDIO_EMBED_ORIGINS entries must be http(s) origins, got {origin!r}")

    poll_seconds = _number("STUDIO_POLL_SECONDS", get("STUDIO_POLL_SECONDS") or "5", minimum=0.05)
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        output_dir=output_dir,
        input_dir=input_dir,
        workflows_dir=workflows_dir,
        comfyui_url=comfyui_url,
        poll_seconds=poll_seconds,
        stall_seconds=_number("STUDIO_STALL_SECONDS", get("STUDIO_STALL_SECONDS") or "600", minimum=0.05),
        page_size=int(_number("STUDIO_PAGE_SIZE", get("STUDIO_PAGE_SIZE") or "50", kind=int, minimum=1)),
        admin_password=get("STUDIO_ADMIN_PASSWORD"),
        api_token=get("STUDIO_API_TOKEN"),
        secret_key=get("STUDIO_SECRET_KEY") or _secret_key(data_dir),
        demo=_flag("STUDIO_DEMO", get("STUDIO_DEMO") or "1"),
        url_prefix=prefix,
        proxy_fix=int(_number("STUDIO_PROXY_FIX", get("STUDIO_PROXY_FIX") or "0", kind=int)),
        embed_origins=origins,
        embed_credentials=_flag("STUDIO_EMBED_CREDENTIALS", get("STUDIO_EMBED_CREDENTIALS") or "0"),
        retention=parse_retention(get("STUDIO_RETENTION") or ""),
    )

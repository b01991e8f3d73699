"""The parts of access control that need no Flask: the API token, comparisons, origins, a login rate limit.

The bearer token is derived from the admin password alone, so every process (and every host) that shares
the password accepts the same token, whatever its secret key. Compute it with ``flask --app app api-token``
or, without the app, with:

    python3 -c 'import hashlib,sys; print(hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(),
        b"studio-history api token v1", 100000).hex())' 'the password'

PBKDF2 (rather than a plain hash) makes a leaked token expensive to turn back into a password that may be
used elsewhere.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import re
import threading
import time
from collections import deque
from urllib.parse import urlsplit

TOKEN_LABEL = b"studio-history api token v1"
TOKEN_ITERATIONS = 100_000
# A Host header we are willing to repeat inside a CSP (anything else is left out of the policy).
HOST_PATTERN = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def derive_api_token(password: str) -> str:
    """The bearer token that goes with ``password`` (hex PBKDF2-SHA256 of a fixed label)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), TOKEN_LABEL, TOKEN_ITERATIONS).hex()


def password_fingerprint(secret_key: str, password: str) -> str:
    """A short keyed digest of the password, kept in a session so that changing the password logs everyone out."""
    return hmac.new(secret_key.encode("utf-8"), b"password:" + password.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def equals(given, expected) -> bool:
    """Compare two secrets in constant time, lengths included (any non-string given is simply unequal)."""
    if not isinstance(given, str) or not isinstance(expected, str):
        return False
    # compare_digest may show how long the strings are; equal-length digests show nothing.
    given_digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(given_digest, expected_digest)


def origin_of(url: str | None) -> str | None:
    """``scheme://host[:port]`` of a URL or Origin header, lower-cased; None when it has none (or is "null")."""
    if not url or url == "null":
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def safe_host(host: str | None) -> str | None:
    """The Host header when it is a plain host[:port], else None (it is going into a header of ours)."""
    if host and HOST_PATTERN.match(host):
        return host
    return None


@functools.lru_cache(maxsize=256)  # asked on every request without a password; a few names ever come
def is_loopback_host(host: str | None) -> bool:
    """Whether a Host header (``name[:port]``) names this machine: localhost, *.localhost, 127.x or ::1."""
    try:
        name = (urlsplit("//" + (host or "")).hostname or "").rstrip(".")
    except ValueError:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def is_loopback_address(address: str | None) -> bool:
    """Whether a client address is this machine."""
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def local_path(target: str | None) -> str | None:
    """``target`` when it is a path on this site (``/...``, not ``//host`` or a scheme), else None."""
    if not target or not isinstance(target, str) or len(target) > 2048:
        return None
    if not target.startswith("/") or target.startswith("//") or target.startswith("/\\"):
        return None
    if any(ord(char) < 32 or char == "\\" for char in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


class RateLimiter:
    """At most ``limit`` failures per ``window`` seconds per key (a client address), in this process.

    Several processes each keep their own count; that multiplies the allowance by the number of
    workers, which still keeps a password guesser to a handful of tries a minute.
    """

    def __init__(self, limit: int = 5, window: float = 60.0, max_keys: int = 10_000, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again (0 when it may now)."""
        with self._lock:
            now = self.clock()
            failures = self._recent(key, now)
            if len(failures) < self.limit:
                return 0
            return max(1, math.ceil(failures[0] + self.window - now))

    def fail(self, key: str) -> None:
        """Count one failure for ``key``."""
        with self._lock:
            now = self.clock()
            if key not in self._failures and len(self._failures) >= self.max_keys:
                # Forget the stalest keys rather than grow without bound under a spray of addresses.
                for stale in list(self._failures)[: self.max_keys // 10 or 1]:
                    del self._failures[stale]
            self._failures.setdefault(key, deque()).append(now)

    def reset(self, key: str) -> None:
        """Forget ``key``'s failures (after a successful login)."""
        with self._lock:
            self._failures.pop(key, None)

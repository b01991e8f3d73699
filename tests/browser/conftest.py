"""Browser fixtures: the app served by a real threaded Werkzeug server, and Debian's Chromium for Playwright.

The server (tests/conftest.py's ``live_server``) runs the same app the ``app`` fixture builds (a temporary data folder, no demo jobs) with a
short poll, so a test sees a change within a fraction of a second; jobs made with ``make_job`` in the test
appear to the page because both share the SQLite file.
"""
from __future__ import annotations

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
POLL_SECONDS = "0.2"


@pytest.fixture(scope="session")
def base_url():
    """No base URL: tests use the live server's own address.

    (pytest-base-url's fixture trips pytest's deprecation of session fixtures on instances, an error here.)
    """
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Launch Debian's Chromium (never a downloaded one) with flags that suit a container."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture
def poll_seconds() -> str:
    """The list's poll interval for the live server (a test may parametrize it)."""
    return POLL_SECONDS


@pytest.fixture
def app_config(app_config, poll_seconds):
    """The test app with a short poll interval."""
    return {**app_config, "STUDIO_POLL_SECONDS": poll_seconds}


@pytest.fixture
def history_url(live_server):
    """The history page's address on the live server."""
    return live_server.url + "/admin/history"

"""The Queue page in Chromium with two ComfyUI servers: each server's row, and a server that stops turns down live."""
from __future__ import annotations

import contextlib

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from tests.comfyui_double import ComfyUIDouble

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 8_000  # the list polls every 2 s


@pytest.fixture
def doubles(tmp_path):
    """Two ComfyUI doubles with their own output folders."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(ComfyUIDouble(tmp_path / name / "output")) for name in ("gpu0", "gpu1")]


@pytest.fixture
def app_config(app_config, doubles):
    a, b = doubles
    return {**app_config, "STUDIO_COMFYUI_URL": f"{a.url},{b.url}",
            "STUDIO_COMFYUI_OUTPUT_DIRS": f"{a.output_dir},{b.output_dir}"}


def test_each_server_shows_its_load_and_one_that_stops_turns_down_without_a_reload(page: Page, live_server, doubles):
    a, b = doubles
    a.hold()
    b.hold()
    page.goto(live_server.url + "/admin/queue")
    expect(page.locator("#comfyui-servers li.comfyui-server")).to_have_count(2)
    row = {double.url: page.locator(f'#comfyui-servers li[data-server-url="{double.url}"]') for double in doubles}
    for double in doubles:
        expect(row[double.url]).to_have_attribute("data-up", "true", timeout=WAIT_MS)

    prompt_id = page.evaluate("""async () => (await (await fetch("/api/run/txt2img-example/execute", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({params: {width: 64, height: 64}})})).json()).prompt_id""")
    server = page.request.get(f"{live_server.url}/api/admin/history/{prompt_id}").json()["comfyui_server"]
    held, other = (a, b) if server == a.url else (b, a)
    expect(row[held.url].locator(".server-queue")).to_have_text("queue 1", timeout=WAIT_MS)
    expect(row[other.url].locator(".server-queue")).to_have_text("queue 0")

    other.stop()
    expect(row[other.url]).to_have_attribute("data-up", "false", timeout=WAIT_MS)
    expect(row[other.url].locator(".server-state")).to_have_text("down")
    expect(row[held.url].locator(".server-state")).to_have_text("up")
    held.release()
    expect(page.locator(f'.queue-job[data-prompt-id="{prompt_id}"]')).to_have_count(0, timeout=WAIT_MS)
    expect(row[held.url].locator(".server-queue")).to_have_text("queue 0", timeout=WAIT_MS)

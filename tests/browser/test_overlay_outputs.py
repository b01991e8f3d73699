"""The overlay's outputs in Chromium: previews drawn at their size with the aspect kept, animated images and videos
playing, the in-page viewer (next, previous, Esc), and what the page says when the server does not answer."""
from __future__ import annotations

import pytest
from PIL import Image
from playwright.sync_api import Page
from playwright.sync_api import expect

from bench.screenshots import record_clip
from tests.conftest import write_image

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 10_000


@pytest.fixture(scope="module")
def clips(browser) -> dict:
    """A real mp4 and webm, recorded by this Chromium from a canvas (no ffmpeg on the machine)."""
    page = browser.new_page()
    try:
        return {"mp4": record_clip(page, "video/mp4"), "webm": record_clip(page, "video/webm;codecs=vp8")}
    finally:
        page.close()


def outputs_job(make_job, settings, names, sizes=None, clips=None, **fields):
    """A job whose outputs are real files: PNGs (of ``sizes``), an animated WebP, videos from ``clips``."""
    folder = "comfyui-studio/20261128_120000_0u7pu7"
    refs = []
    for index, name in enumerate(names):
        path = settings.output_dir / folder / name
        ref = {"filename": name, "subfolder": folder, "type": "output"}
        if name.endswith(".png"):
            write_image(path, size=(sizes or {}).get(name, (1280, 768)), color=(60 * index % 256, 120, 200))
        elif name.endswith(".webp"):
            frames = [Image.new("RGB", (320, 192), color) for color in ((230, 60, 40), (40, 60, 230), (40, 200, 90))]
            path.parent.mkdir(parents=True, exist_ok=True)
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=120, loop=0)
            ref["animated"] = True
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(clips[name.rsplit(".", 1)[1]])
        refs.append(ref)
    return make_job(files=0, outputs=refs, output=refs[0], output_dir=folder.split("/")[1], **fields)


def open_overlay(page: Page, history_url: str, job, width: int = 1024) -> Page:
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(history_url)
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    expect(page.locator("#job-overlay")).to_be_visible(timeout=WAIT_MS)
    return page


@pytest.mark.parametrize("width", [1400, 390])
def test_previews_are_drawn_at_their_size_with_the_aspect_kept(page: Page, history_url, make_job, settings, width):
    job = outputs_job(make_job, settings, ["wide_00001_.png", "clip_00001_.webp"])
    open_overlay(page, history_url, job, width)
    still = page.locator("#job-overlay .output-item img").first
    expect(still).to_have_js_property("complete", True)
    drawn = still.evaluate("(img) => [img.naturalWidth, img.naturalHeight, img.clientWidth, img.clientHeight, img.currentSrc]")
    natural_w, natural_h, shown_w, shown_h, src = drawn
    assert "/media/preview/" in src and (natural_w, natural_h) == (720, 432)
    assert natural_w >= shown_w, "the preview is stretched beyond its pixels"
    assert shown_w / shown_h == pytest.approx(1280 / 768, rel=0.02), "the aspect is not kept"
    animated = page.locator("#job-overlay .output-item img").nth(1)
    assert animated.evaluate("(img) => new URL(img.currentSrc).pathname").endswith("/clip_00001_.webp")
    assert animated.evaluate("(img) => img.clientWidth / img.clientHeight") == pytest.approx(320 / 192, rel=0.02)


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_videos_play_in_the_overlay(page: Page, history_url, make_job, settings, clips, kind):
    job = outputs_job(make_job, settings, [f"clip_00001_.{kind}"], clips=clips)
    open_overlay(page, history_url, job)
    video = page.locator("#job-overlay video")
    expect(video).to_have_count(1)
    video.evaluate("(video) => video.play()")
    page.wait_for_function(
        "(video) => !video.paused && video.currentTime > 0.2 && video.videoWidth === 320", arg=video.element_handle(), timeout=WAIT_MS
    )


def test_the_viewer_steps_through_the_outputs_and_esc_closes_it(page: Page, history_url, make_job, settings):
    job = outputs_job(make_job, settings, ["a_00001_.png", "b_00002_.png", "clip_00003_.webp"],
                      sizes={"a_00001_.png": (1600, 900), "b_00002_.png": (900, 1600)})
    open_overlay(page, history_url, job)
    page.locator("#job-overlay .output-item").first.click()
    viewer = page.locator("#output-viewer")
    expect(viewer).to_be_visible()
    assert viewer.evaluate("(dialog) => dialog.matches(':modal')")
    expect(viewer).to_have_attribute("data-index", "0")
    expect(viewer.locator("img.viewer-media")).to_have_attribute("src", f"/media/output/{job.outputs[0]['subfolder']}/a_00001_.png")
    expect(viewer.locator(".viewer-count")).to_contain_text("1 / 3")
    page.keyboard.press("ArrowRight")
    expect(viewer).to_have_attribute("data-index", "1")
    viewer.locator("a.viewer-next").click()
    expect(viewer).to_have_attribute("data-index", "2")
    expect(viewer.locator("a.viewer-next")).to_have_count(0)
    page.keyboard.press("ArrowLeft")
    expect(viewer).to_have_attribute("data-index", "1")
    assert viewer.locator("img.viewer-media").evaluate("(img) => img.clientHeight > img.clientWidth")
    page.keyboard.press("Escape")
    expect(viewer).to_have_count(0)
    expect(page.locator("#job-overlay")).to_be_visible()
    expect(page.locator('#job-overlay [data-viewer-index="1"]')).to_be_focused()


def test_opening_a_card_while_the_server_is_down_says_it_failed(page: Page, history_url, make_job):
    job = make_job()
    page.goto(history_url)
    expect(page.locator(f"#job-{job.prompt_id}")).to_be_visible()
    page.route("**/admin/history/jobs/**", lambda route: route.abort("connectionrefused"))
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    failure = page.locator(f"#job-{job.prompt_id} .open-failed")
    expect(failure).to_be_visible(timeout=WAIT_MS)
    expect(failure).to_contain_text("could not open")
    page.unroute("**/admin/history/jobs/**")
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    expect(page.locator("#job-overlay")).to_be_visible(timeout=WAIT_MS)
    expect(failure).to_have_count(0)


def test_the_tab_title_names_the_job_while_its_overlay_is_open(page: Page, history_url, make_job):
    job = make_job(workflow_name="Text to image (example)")
    page.goto(history_url)
    before = page.title()
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    expect(page.locator("#job-overlay")).to_be_visible(timeout=WAIT_MS)
    expect(page).to_have_title(f"Job {job.prompt_id[:12]} · History · Studio History")
    page.keyboard.press("Escape")
    expect(page.locator("#job-overlay")).to_be_hidden()
    expect(page).to_have_title(before)

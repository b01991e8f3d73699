"""What a person sees at 1,400, 1,024 and 390 px: no word broken inside, numbers on one line, the scenes table,
the phone overlay, the sticky selection bar, the countdown bar, the workflow select, the output directory,
thumbnail placeholders, short durations and excerpts, Retry that cannot run, and the overlay's controls."""
from __future__ import annotations

import threading

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WIDTHS = [1400, 1024, 390]
WAIT_MS = 10_000
LONG_SCENE = (
    "a slow aerial shot over the harbour at first light, fishing boats leaving one by one, gulls wheeling above "
    "the breakwater, mist lifting off the water, cinematic, 35mm film grain"
)
SCENES = [
    {"prompt": LONG_SCENE, "duration": 2.5, "seed": 1234567890},
    {"prompt": "boats return at noon", "duration": 1.25, "seed": -1},
]

# The words of an element's text (or of every element a selector matches inside it) that a line break cuts
# through: a word whose characters lie on more than one line box. Ranges give the boxes the reader sees.
BROKEN_WORDS = """
(root) => {
  const broken = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.parentElement.checkVisibility()) continue;
    for (const match of node.data.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(node, match.index);
      range.setEnd(node, match.index + match[0].length);
      const tops = new Set([...range.getClientRects()].filter((rect) => rect.width > 0).map((rect) => Math.round(rect.top)));
      if (tops.size > 1) broken.push(match[0]);
    }
  }
  return broken;
}
"""

# How many lines an element's text takes.
LINES = """
(element) => {
  const range = document.createRange();
  range.selectNodeContents(element);
  return new Set([...range.getClientRects()].filter((rect) => rect.width > 0).map((rect) => Math.round(rect.bottom))).size;
}
"""


def at_width(page: Page, width: int, height: int = 900) -> Page:
    page.set_viewport_size({"width": width, "height": height})
    return page


def box(locator) -> dict:
    return locator.bounding_box()


def broken_words(locator) -> list[str]:
    return locator.evaluate(BROKEN_WORDS)


def lines(locator) -> int:
    return locator.evaluate(LINES)


def open_overlay(page: Page, url: str, job) -> Page:
    page.goto(f"{url}/jobs/{job.prompt_id}")
    expect(page.locator("#job-overlay")).to_be_visible(timeout=WAIT_MS)
    return page


# ---- the scenes sub-table ----------------------------------------------------------------------------

@pytest.mark.parametrize("width", WIDTHS)
def test_scene_numbers_never_wrap_and_prompts_do(page: Page, history_url, make_job, width):
    job = make_job(workflow_id="scenes-example", workflow_name="Scenes to video (example)",
                   params={"width": 320, "height": 192, "scenes": SCENES}, seeds={"scenes": [1234567890, 4022911]})
    open_overlay(at_width(page, width), history_url, job)
    table = page.locator("#job-overlay .scenes-table")
    for selector in (".scene-duration", ".scene-seed", ".scene-index", "th"):
        cells = table.locator(selector)
        for index in range(cells.count()):
            assert broken_words(cells.nth(index)) == [], (selector, cells.nth(index).inner_text())
    first = table.locator("[data-scene='1']")
    assert lines(first.locator(".scene-seed")) == 1 and lines(first.locator(".scene-duration")) == 1
    prompt = first.locator(".scene-prompt pre")
    assert lines(prompt) >= 2 and broken_words(prompt) == []
    if width == 390:
        # A phone stacks each scene as a block: the prompt takes the row, duration and seed follow below.
        assert first.evaluate("(row) => getComputedStyle(row).display") == "block"
        assert box(prompt)["width"] >= 0.75 * box(table)["width"]
        assert box(first.locator(".scene-seed"))["y"] > box(prompt)["y"] + box(prompt)["height"] - 1
    else:
        assert box(prompt)["width"] >= 0.5 * box(table)["width"]


def test_a_scene_prompt_has_a_copy_button_that_copies_it(page: Page, history_url, make_job, context):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    job = make_job(workflow_id="scenes-example", params={"scenes": SCENES})
    open_overlay(at_width(page, 1024), history_url, job)
    page.locator("#job-overlay [data-scene='1'] .copy-btn").click()
    expect(page.locator("#job-overlay [data-scene='1'] .copy-btn")).to_have_class("copy-btn is-copied")
    assert page.evaluate("navigator.clipboard.readText()") == LONG_SCENE


# ---- the overlay's title, fields and controls --------------------------------------------------------

@pytest.mark.parametrize("width", WIDTHS)
def test_the_overlay_title_comes_first_and_no_word_breaks_inside(page: Page, history_url, make_job, width):
    job = make_job(workflow_id="scenes-example", workflow_name="Scenes to video (example)", status="error",
                   params={"scenes": SCENES}, output_dir="20261128_153012_a1b2c3")
    open_overlay(at_width(page, width), history_url, job)
    overlay = page.locator("#job-overlay")
    title, actions = overlay.locator("#overlay-title"), overlay.locator(".overlay-actions")
    assert broken_words(title) == []
    assert broken_words(overlay.locator(".overlay-header")) == []
    for field in ("workflow_name", "status", "queued_at", "duration"):
        assert broken_words(overlay.locator(f"[data-field={field}] dd")) == [], field
    close = box(overlay.locator(".overlay-close"))
    assert close["y"] < box(title)["y"] + box(title)["height"], "the close button sits on the title's line"
    if width == 390:
        assert box(actions)["y"] >= box(title)["y"] + box(title)["height"] - 1, "actions below the title"
    # The output directory stays on one line, its Copy button beside it.
    path = overlay.locator("[data-field=output_dir] code")
    copy = box(overlay.locator("[data-field=output_dir] .copy-btn"))
    assert lines(path) == 1
    assert box(path)["y"] <= copy["y"] + copy["height"] / 2 <= box(path)["y"] + box(path)["height"] + 4


@pytest.mark.parametrize("width", [1024, 390])
def test_the_overlays_actions_share_one_style(page: Page, history_url, make_job, width):
    job = make_job(status="error")
    open_overlay(at_width(page, width), history_url, job)
    controls = page.locator("#job-overlay .overlay-actions").locator(".retry-btn, .overlay-export a")
    assert controls.count() >= 3
    styles = controls.evaluate_all("""(all) => all.map((element) => {
      const style = getComputedStyle(element);
      return [Math.round(element.getBoundingClientRect().height), style.fontSize, style.borderRadius,
              style.borderTopStyle, style.textDecorationLine];
    })""")
    assert len({tuple(style) for style in styles}) == 1, styles
    assert styles[0][3] == "solid" and styles[0][4] == "none"


# ---- the toolbar with a selection ----------------------------------------------------------------------

@pytest.mark.parametrize("width", [1024, 390])
def test_with_a_selection_the_count_and_actions_stay_in_view(page: Page, history_url, make_job, width):
    jobs = [make_job(files=0) for _ in range(30)]
    at_width(page, width, 700).goto(history_url)
    expect(page.locator("#job-list .job-card")).to_have_count(30, timeout=WAIT_MS)
    far = page.locator(f"#job-{jobs[-3].prompt_id} input.job-select")
    far.scroll_into_view_if_needed()
    far.check()
    assert page.evaluate("window.scrollY") > 500
    for hook in ("#selected-count", "#delete-selected"):
        expect(page.locator(hook)).to_be_visible()
        rect = box(page.locator(hook))
        assert 0 <= rect["y"] and rect["y"] + rect["height"] <= 700, (hook, rect)
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    # Moving the focus up card by card never leaves the focused card under the bar.
    bar = box(page.locator(".selection-tools"))
    for _ in range(8):
        page.keyboard.press("k")
        focused = page.locator(".job-card:focus-within")
        assert box(focused)["y"] >= bar["y"] + bar["height"] - 1, "the focused card is under the bar"


def test_starting_a_selection_on_a_phone_moves_nothing(page: Page, history_url, make_job):
    jobs = [make_job(files=0) for _ in range(3)]
    at_width(page, 390, 844).goto(history_url)
    card = page.locator(f"#job-{jobs[1].prompt_id}")
    before = box(card)["y"] + page.evaluate("window.scrollY")
    card.locator("input.job-select").check()
    expect(page.locator("#delete-selected")).to_be_visible()
    assert box(card)["y"] + page.evaluate("window.scrollY") == pytest.approx(before, abs=1)


# ---- the header, filters and cards ---------------------------------------------------------------------

@pytest.mark.parametrize("width", [1400, 390])
def test_the_live_countdown_bar_is_big_enough_to_notice(page: Page, history_url, width):
    at_width(page, width).goto(history_url)
    bar = box(page.locator("#live-countdown"))
    assert bar["height"] >= 4 and bar["width"] >= 60


def test_a_slow_poll_says_it_is_waiting(page: Page, history_url, make_job, monkeypatch):
    from history import jobs

    make_job()
    release = threading.Event()
    list_etag = jobs.list_etag
    page.goto(history_url)
    expect(page.locator(".job-card")).to_have_count(1)
    hint = page.locator("#live-indicator .live-slow")
    monkeypatch.setattr(jobs, "list_etag", lambda *a, **k: release.wait(10) and list_etag(*a, **k))
    # A change in the store makes the next poll ask for the list's ETag again (an unchanged store answers
    # from the remembered one without calling list_etag, and that poll would never be slow).
    make_job()
    try:
        expect(hint).to_be_visible(timeout=WAIT_MS)
        expect(hint).to_contain_text("waiting")
    finally:
        release.set()
    expect(hint).to_be_hidden(timeout=WAIT_MS)
    expect(page.locator(".job-card")).to_have_count(2)


@pytest.mark.parametrize("width", [1400, 1024])
def test_the_workflow_select_shows_the_whole_chosen_name(page: Page, history_url, make_job, width):
    make_job(workflow_id="portrait-long", workflow_name="Portrait studio with upscaling and face detail (SDXL)")
    at_width(page, width).goto(history_url)
    select = page.locator(".workflow-filter select")
    select.select_option("portrait-long")
    room = select.evaluate("""(select) => {
      const probe = document.createElement("span");
      probe.style.font = getComputedStyle(select).font;
      probe.style.whiteSpace = "pre";
      probe.textContent = select.selectedOptions[0].textContent;
      document.body.append(probe);
      const needed = probe.getBoundingClientRect().width;
      probe.remove();
      return select.clientWidth - needed;
    }""")
    assert room > 0, f"the chosen name is cut by {-room:.0f} px"


@pytest.mark.parametrize("width", [1400, 390])
def test_cards_read_short_runs_cut_excerpts_and_neutral_thumbnails(page: Page, history_url, make_job, width):
    prompt = "a quiet harbour at dawn, fishing boats leaving one by one, gulls overhead, oil painting, warm light"
    job = make_job(duration=0.35, params={"positive_prompt": prompt})
    at_width(page, width).goto(history_url)
    card = page.locator(f"#job-{job.prompt_id}")
    expect(card.locator(".job-duration")).to_have_text("350ms")
    excerpt = card.locator(".job-excerpt").inner_text()
    assert excerpt.endswith("\u2026") and prompt.startswith(excerpt[:-1]) and prompt[len(excerpt) - 1] == " "
    thumb = card.locator("img.job-thumb")
    assert thumb.get_attribute("decoding") == "async"
    # Before its pixels arrive, the box is the panel's grey, not a black square.
    background = thumb.evaluate("(img) => getComputedStyle(img).backgroundColor")
    channels = [int(part) for part in background[background.index("(") + 1:-1].split(",")[:3]]
    assert min(channels) >= 0x28, background


@pytest.mark.parametrize("width", [1400, 390])
def test_retry_that_cannot_run_says_why_before_the_click(page: Page, history_url, make_job, width):
    job = make_job(status="error", workflow_id="sdxl-portrait", workflow_name="SDXL portrait")
    at_width(page, width).goto(history_url)
    card = page.locator(f"#job-{job.prompt_id}")
    expect(card.locator(".retry-btn")).to_be_disabled()
    expect(card.locator(".retry-unavailable")).to_have_text("workflow not installed")
    open_overlay(page, history_url, job)
    expect(page.locator("#job-overlay .retry-btn")).to_be_disabled()
    expect(page.locator("#job-overlay .retry-unavailable")).to_have_text("workflow not installed")


def test_an_imported_job_retries_and_the_note_says_what_was_fitted(page: Page, history_url, make_job, settings):
    from history.models import Job
    from tests.conftest import wait_for
    from tests.conftest import write_image

    write_image(settings.input_dir / "harbour.png", size=(96, 64))
    original = make_job(status="stalled", files=0, workflow_id="img2vid-example", workflow_name="Image to video (imported)",
                        input_image=None, seeds={},
                        params={"input_image": "harbour.png", "width": 64, "height": 64, "frames_per_phase": 1,
                                "lora_stack": [{"name": "film", "weight": 0.6}]})
    open_overlay(at_width(page, 1024), history_url, original)
    fitted = page.locator("#job-overlay .retry-fitted")
    expect(fitted).to_contain_text("leaves out lora_stack")
    expect(fitted).to_contain_text("takes the input image harbour.png from the parameters")
    page.locator("#job-overlay .retry-btn").click()
    retry = wait_for(lambda: Job.get_or_none(Job.retry_of == original.prompt_id), what="the retry's record")
    expect(page.locator("#job-overlay .action-note").first).to_contain_text(retry.prompt_id[:12], timeout=WAIT_MS)
    expect(fitted).to_contain_text("leaves out lora_stack")
    wait_for(lambda: Job.get_by_id(retry.prompt_id).status == "completed", what="the retry completes")
    assert Job.get_by_id(retry.prompt_id).input_image == "harbour.png"

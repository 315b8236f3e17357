"""The web page at `/`, driven in real headless Chromium against the real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, FilePayload, Page, expect, sync_playwright

from devkit.images import encode, random_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CONTENT_SIZE = (64, 48)
SCREENSHOT = Path("/tmp/page.png")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


# The server is shared with other test modules: seeds of their own keep these images (and so
# the style cache's hits and misses, and the registry's names) independent of the other tests.
SEED_BASE = 7100


def png_file(name: str, seed: int, size: tuple[int, int] = CONTENT_SIZE) -> FilePayload:
    image = random_image(*size, seed=SEED_BASE + seed)
    return {"name": name, "mimeType": "image/png", "buffer": encode(image)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(base_url + "/")
    yield page
    context.close()


def choose_images(page: Page, content: FilePayload, *styles: FilePayload) -> None:
    page.get_by_label("Content photo").set_input_files(content)
    page.get_by_label("Upload style images").set_input_files(list(styles))
    # Original sizes keep the model passes tiny and make the output size predictable.
    page.get_by_label("Output size").select_option("0")
    page.get_by_label("Style scale").select_option("0")


def stylize_and_wait(page: Page) -> str:
    """Clicks Stylize and returns the result's info line once the new result has been shown."""
    page.locator("#result-info").evaluate("node => { node.textContent = ''; }")
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#result-info")).to_contain_text("ms")
    return page.locator("#result-info").inner_text()


def natural_size(page: Page) -> tuple[int, int]:
    return tuple(page.locator("#result-image").evaluate("i => [i.naturalWidth, i.naturalHeight]"))


def test_stylize_shows_result_timing_cache_and_download(page: Page, base_url: str) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    choose_images(page, png_file("photo.png", seed=1), png_file("painting.png", seed=2))
    expect(page.get_by_alt_text("Preview of the content photo")).to_be_visible()
    page.get_by_label("Style strength").fill("0.6")
    expect(page.locator("#alpha-value")).to_have_text("0.60")

    first = stylize_and_wait(page)
    assert natural_size(page) == CONTENT_SIZE
    assert "style cache: miss" in first
    # The same style again: its statistics come from the cache.
    second = stylize_and_wait(page)
    assert "style cache: hit" in second
    assert natural_size(page) == CONTENT_SIZE
    expect(page.locator("#error")).to_be_hidden()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download").click()
    download = download_info.value
    assert download.suggested_filename == "photo-stylized.png"
    with Image.open(download.path()) as downloaded:
        assert downloaded.size == CONTENT_SIZE

    # Works offline: every request went to the service itself (or to the page's own blobs).
    assert requested
    assert all(url.startswith((base_url, "blob:")) for url in requested), requested


def test_server_error_is_shown(page: Page, base_url: str) -> None:
    not_an_image = b"these are notes, not pixels"
    style = png_file("painting.png", seed=3)
    page.get_by_label("Content photo").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": not_an_image}
    )
    page.get_by_label("Upload style images").set_input_files(style)
    page.get_by_role("button", name="Stylize").click()

    # The page shows what the server itself says about the same request.
    answer = httpx.post(
        base_url + "/stylize",
        files=[
            ("content", ("notes.txt", not_an_image, "text/plain")),
            ("style", (style["name"], style["buffer"], style["mimeType"])),
        ],
        timeout=60,
    )
    assert answer.status_code // 100 == 4
    detail = answer.json()["detail"]
    assert answer.json()["field"] == "content"
    expect(page.get_by_role("alert")).to_have_text(detail)
    expect(page.get_by_label("Content photo")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.get_by_role("button", name="Stylize")).to_be_enabled()


def test_missing_inputs_are_explained_without_a_request(page: Page) -> None:
    page.get_by_role("button", name="Stylize").click()
    expect(page.get_by_role("alert")).to_have_text("Choose a content photo first.")
    page.get_by_label("Content photo").set_input_files(png_file("photo.png", seed=4))
    page.get_by_role("button", name="Stylize").click()
    expect(page.get_by_role("alert")).to_have_text("Choose at least one style.")


def test_registered_style_mixes_with_an_upload(page: Page, base_url: str) -> None:
    choose_images(page, png_file("photo.png", seed=5), png_file("saved-wave.png", seed=6))
    page.get_by_role("button", name="Save saved-wave to the registered styles").click()

    saved = page.get_by_role("checkbox", name="saved-wave")
    expect(saved).to_be_checked()
    registry = httpx.get(base_url + "/styles", timeout=10).json()["styles"]
    assert "saved-wave" in [style["name"] for style in registry]
    # Saved, it is no longer an upload: one chosen style, so no weights yet.
    expect(page.locator("#chosen-list li")).to_have_count(1)
    expect(page.get_by_label("Weight for saved-wave")).to_have_count(0)

    page.get_by_label("Upload style images").set_input_files(png_file("sketch.png", seed=7))
    expect(page.get_by_label("Weight for sketch")).to_be_visible()
    page.get_by_label("Weight for sketch").fill("3")
    page.get_by_label("Weight for saved-wave").fill("1")
    info = stylize_and_wait(page)
    assert natural_size(page) == CONTENT_SIZE
    assert "(sketch)" in info and "(saved-wave)" in info
    # For a human to look at: most of the page's parts in one picture.
    page.evaluate("window.scrollTo(0, 0)")  # the result panel is sticky: show it unscrolled
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.get_by_role("button", name="Delete registered style saved-wave").click()
    expect(page.get_by_role("checkbox", name="saved-wave")).to_have_count(0)
    expect(page.get_by_label("Weight for sketch")).to_have_count(0)


def test_phone_width_and_labels(browser: Browser, base_url: str) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True)
    page = context.new_page()
    page.goto(base_url + "/")
    choose_images(
        page, png_file("photo.png", seed=8), png_file("a.png", seed=9), png_file("b.png", 10)
    )
    expect(page.get_by_label("Weight for a")).to_be_visible()
    overflow = page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a phone screen"
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    page.screenshot(path=str(SCREENSHOT.with_name("page-phone.png")), full_page=True)
    context.close()

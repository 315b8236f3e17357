"""The web page at `/`, driven in real headless Chromium against the real server; with API keys
on, and from the pages of other sites (origins)."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, FilePayload, Locator, Page, expect, sync_playwright

from devkit.images import encode, random_image
from devkit.server import RunningServer, free_port
from tests.service.conftest import ADMIN_KEY, USER_KEYS, KeyedServer

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


def decoded_pixels(image: Locator) -> np.ndarray:
    """The picture an <img> shows, as the browser decoded it: (height, width, 3) in [0, 1]. A
    picture being replaced (live mode swaps one in per frame) is read once it has loaded."""
    data_url = image.evaluate("""async image => {
        if (!image.complete || !image.naturalWidth) {
            await new Promise((resolve) => image.addEventListener("load", resolve, { once: true }));
        }
        const canvas = document.createElement("canvas");
        canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
        canvas.getContext("2d").drawImage(image, 0, 0);
        return canvas.toDataURL("image/png");
    }""")
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255


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


def test_the_model_choice_lists_the_loaded_models_and_is_sent(page: Page) -> None:
    """Both models loaded (the default): the choice shows them, the default selected; the lite
    one chosen, the answer is the lite model's and the info line says so."""
    choice = page.get_by_label("Model", exact=True)
    expect(choice).to_be_visible()
    expect(choice).to_have_value("full")
    assert choice.locator("option").evaluate_all("nodes => nodes.map(n => n.value)") == [
        "full",
        "lite",
    ]
    choose_images(page, png_file("model.png", 30), png_file("model-style.png", 31))
    assert "model: full" in stylize_and_wait(page)
    choice.select_option("lite")
    assert "model: lite" in stylize_and_wait(page)


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


def test_a_mistake_and_its_correction(page: Page) -> None:
    """Each message describes the form as it is now: a message about a missing input goes once
    the input is there; a server's error goes once its field changes; a failed request leaves
    the earlier result only dimmed, marked as earlier, and no "Done." beside the error."""
    alert, status, result = page.get_by_role("alert"), page.locator("#status"), page.locator(
        "#result")
    stylize = page.get_by_role("button", name="Stylize")
    stylize.click()
    expect(alert).to_have_text("Choose a content photo first.")
    page.get_by_label("Content photo").set_input_files(png_file("photo.png", seed=20))
    expect(alert).to_be_hidden()
    stylize.click()
    expect(alert).to_have_text("Choose at least one style.")

    # A text file as the style: the server says so and the style input is marked.
    notes = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"notes, not pixels"}
    page.get_by_label("Upload style images").set_input_files(notes)
    expect(alert).to_be_hidden()
    page.get_by_label("Output size").select_option("0")
    page.get_by_label("Style scale").select_option("0")
    stylize.click()
    expect(alert).to_contain_text("style[0]")
    expect(page.get_by_label("Upload style images")).to_have_attribute("aria-invalid", "true")
    expect(result).to_be_hidden()
    page.get_by_role("button", name="Remove notes").click()
    expect(alert).to_be_hidden()
    expect(page.locator("[aria-invalid]")).to_have_count(0)

    page.get_by_label("Upload style images").set_input_files(png_file("painting.png", seed=21))
    stylize_and_wait(page)
    expect(status).to_have_text("Done.")
    expect(result).not_to_have_class("stale")
    expect(page.locator("#result-stale")).to_be_hidden()

    # A second mistake: the earlier result stays, dimmed and labelled; "Done." goes.
    page.get_by_label("Content photo").set_input_files(notes)
    stylize.click()
    expect(alert).to_contain_text("content")
    expect(status).to_have_text("")
    expect(result).to_have_class("stale")
    expect(page.locator("#result-stale")).to_be_visible()
    assert float(page.locator("#result-image").evaluate("i => getComputedStyle(i).opacity")) < 1

    page.get_by_label("Content photo").set_input_files(png_file("photo.png", seed=22))
    expect(alert).to_be_hidden()
    stylize_and_wait(page)
    expect(result).not_to_have_class("stale")
    expect(page.locator("#result-stale")).to_be_hidden()
    expect(status).to_have_text("Done.")


def test_registered_styles_show_thumbnails(page: Page, base_url: str) -> None:
    style = png_file("thumbnailed.png", seed=23)
    answer = httpx.post(base_url + "/styles", data={"name": "thumbnailed-7100"},
                        files={"file": (style["name"], style["buffer"])}, timeout=30)
    assert answer.status_code in (200, 201), answer.text
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.reload()
    thumb = page.locator("li.registered", has_text="thumbnailed-7100").locator("img.thumb")
    expect(thumb).to_be_visible()
    thumb.evaluate("i => i.decode()")
    assert thumb.evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(CONTENT_SIZE)
    assert any("/image?size=" in url for url in requested), requested
    page.get_by_role("checkbox", name="thumbnailed-7100").check()
    chosen = page.locator("li.chosen", has_text="thumbnailed-7100").locator("img.thumb")
    expect(chosen).to_be_visible()
    httpx.delete(f"{base_url}/styles/thumbnailed-7100", timeout=10)


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


# --- API keys and other origins ---------------------------------------------------------------


def test_the_page_asks_for_a_key_after_a_401_and_sends_it(browser: Browser,
                                                          keyed_server: KeyedServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    keys_sent: list[str | None] = []
    page.on("request", lambda request: keys_sent.append(request.headers.get("x-api-key"))
            if "/styles" in request.url or "/stylize" in request.url else None)
    page.goto(keyed_server.url + "/")
    # Loading the registered styles got 401: the page asks for a key.
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.locator("#key-hint")).to_have_text("This server needs an API key.")
    page.screenshot(path=str(SCREENSHOT.with_name("page-key.png")))  # for a human to look at

    page.get_by_label("API key").fill("a wrong key")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-hint")).to_contain_text("did not accept")

    page.get_by_label("API key").fill(USER_KEYS[0])
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-panel")).to_be_hidden()
    expect_registered_listed(page, keyed_server)  # the list loaded
    assert page.evaluate("sessionStorage.getItem('adain-api-key')") == USER_KEYS[0]
    assert page.evaluate("localStorage.getItem('adain-api-key')") is None

    choose_images(page, png_file("photo.png", seed=11), png_file("painting.png", seed=12))
    stylize_and_wait(page)
    assert natural_size(page) == CONTENT_SIZE
    assert keys_sent[0] is None and keys_sent[-1] == USER_KEYS[0]

    # A user key may not register: the server's reason is shown, the key panel stays closed.
    page.get_by_role("button", name="Save painting to the registered styles").click()
    expect(page.get_by_role("alert")).to_contain_text("ADAIN_ADMIN_KEYS")
    expect(page.locator("#key-panel")).to_be_hidden()
    context.close()


def expect_registered_listed(page: Page, keyed_server: KeyedServer) -> None:
    """The page lists the registry as the server holds it: other tests share the keyed server,
    so it may hold styles (then one item each), or none (then the empty hint)."""
    listed = httpx.get(f"{keyed_server.url}/styles", params={"limit": 1000},
                       headers={"X-API-Key": ADMIN_KEY}).json()["styles"]
    if listed:
        expect(page.locator("#registered-list li")).to_have_count(len(listed))
    else:
        expect(page.locator("#registered-empty")).to_be_visible()


def test_a_remembered_key_is_kept_for_the_next_visit(browser: Browser,
                                                    keyed_server: KeyedServer) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(keyed_server.url + "/")
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_label("Remember on this device").check()
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-panel")).to_be_hidden()
    # A new tab of the same browser: no question asked.
    again = context.new_page()
    again.goto(keyed_server.url + "/")
    expect_registered_listed(again, keyed_server)  # the registry answered the remembered key
    expect(again.locator("#key-panel")).to_be_hidden()
    assert again.evaluate("localStorage.getItem('adain-api-key')") == ADMIN_KEY
    context.close()


@contextmanager
def page_server(port: int) -> Iterator[str]:
    """Another site: a plain http.server on `port` serving an empty page."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>another site</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        site.shutdown()
        site.server_close()


# What another site's script would do: register a style on the service from the visitor's browser.
CROSS_SITE_POST = """async ([target, bytes, name, key]) => {
  const form = new FormData();
  form.append("file", new Blob([new Uint8Array(bytes)], { type: "image/png" }), "x.png");
  form.append("name", name);
  const headers = key ? { "X-API-Key": key } : {};
  try {
    const response = await fetch(target + "/styles", { method: "POST", body: form, headers });
    return `read ${response.status}`;
  } catch (error) {
    return "blocked";
  }
}"""


def test_another_sites_page_cannot_register_a_style(browser: Browser, server: RunningServer
                                                    ) -> None:
    """A simple (no preflight) cross-origin POST reaches the server: it refuses it (403), so
    nothing is registered, though the page could not have read the answer anyway."""
    name = "cross-site-attempt"
    statuses: list[int] = []
    with page_server(free_port()) as site:
        context = browser.new_context()
        page = context.new_page()
        page.on("response", lambda response: statuses.append(response.status)
                if response.url.startswith(server.url) else None)
        page.goto(site + "/")
        image = list(png_file("x.png", seed=13)["buffer"])
        outcome = page.evaluate(CROSS_SITE_POST, [server.url, image, name, None])
        context.close()
    assert outcome == "blocked"  # no CORS headers for that origin
    names = [style["name"] for style in httpx.get(server.url + "/styles").json()["styles"]]
    assert name not in names
    time.sleep(0.5)  # the access log line follows the response
    assert "POST /styles 403" in server.logs()
    assert statuses in ([], [403])  # Chromium may not report a response it blocked


def test_a_listed_origins_page_registers_with_its_key(browser: Browser,
                                                      keyed_server: KeyedServer) -> None:
    """ADAIN_CORS_ORIGINS: the listed site's page sends the key header (a preflight) and reads
    the answer."""
    port = int(keyed_server.allowed_origin.rsplit(":", 1)[1])
    with page_server(port) as site:
        context = browser.new_context()
        page = context.new_page()
        page.goto(site + "/")
        image = list(png_file("y.png", seed=14)["buffer"])
        outcome = page.evaluate(CROSS_SITE_POST,
                                [keyed_server.url, image, "from-listed", ADMIN_KEY])
        context.close()
    assert outcome == "read 201"
    styles = httpx.get(keyed_server.url + "/styles", headers={"X-API-Key": ADMIN_KEY}).json()
    assert "from-listed" in [style["name"] for style in styles["styles"]]

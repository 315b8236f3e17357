"""The page's Live mode in real headless Chromium with a fake camera fed from a file: the
stylized frames (not the camera's) come back through WebSocket /live and the counters move;
with API keys on too."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from devkit.camera import write_y4m
from devkit.images import encode, random_image
from devkit.server import RunningServer
from tests.service.conftest import ADMIN_KEY, USER_KEYS, KeyedServer
from tests.service.test_page import CHROMIUM, CHROMIUM_FLAGS, decoded_pixels

CAMERA_SIZE = (320, 240)
CAMERA_FRAMES = 10
SEED_BASE = 8300

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


def camera_picture() -> Image.Image:
    return random_image(*CAMERA_SIZE, seed=SEED_BASE)


@pytest.fixture(scope="module")
def camera_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    clip = tmp_path_factory.mktemp("camera") / "camera.y4m"
    write_y4m(clip, camera_picture(), CAMERA_FRAMES)
    flags = [
        *CHROMIUM_FLAGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        yield browser
        browser.close()


def register(url: str, seed: int, headers: dict[str, str] | None = None) -> str:
    image = encode(random_image(64, 64, seed=SEED_BASE + seed))
    answer = httpx.post(
        url + "/styles",
        files={"file": (f"live-page-{seed}.png", image, "image/png")},
        headers=headers,
        timeout=60,
    )
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["id"]


def shown_pixels(page: Page) -> np.ndarray:
    """The stylized picture the page shows, as the browser decoded it."""
    return decoded_pixels(page.locator("#live-output"))


def counter(page: Page, element_id: str) -> float:
    return float(page.locator(f"#{element_id}").inner_text())


def stylized_over_http(
    url: str,
    style_id: str,
    size: tuple[int, int],
    alpha: float,
    headers: dict[str, str] | None = None,
) -> np.ndarray:
    """POST /stylize of the camera's picture at the size the page showed, by the model live
    mode chooses (the lite one, both being loaded)."""
    camera = camera_picture().resize(size, Image.Resampling.BILINEAR)
    answer = httpx.post(
        url + "/stylize",
        files={"content": ("camera.png", encode(camera), "image/png")},
        data={"style_id": style_id, "content_size": "0", "style_size": "0", "alpha": str(alpha),
              "model": "lite"},
        headers=headers,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(answer.content)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255


def run_live(page: Page, style_name: str) -> None:
    page.get_by_role("button", name="Live", exact=True).click()
    expect(page.get_by_label("Live style", exact=True).locator("option", has_text=style_name)
           ).to_have_count(1)
    page.get_by_label("Live style", exact=True).select_option(label=style_name)
    page.get_by_label("Live size").select_option("128")  # quick passes of the test networks
    # The style at its own size: within the test server's pixel limits.
    page.get_by_label("Scale of the live style").select_option("0")
    page.get_by_label("Steady (no flicker)").uncheck()  # one frame is then exactly one pass
    page.get_by_role("button", name="Start camera").click()
    wait_until(page, "['Live.', 'Stopped.'].includes("
               "document.getElementById('live-status').textContent)", 60)
    status = page.locator("#live-status").inner_text()
    assert status == "Live.", page.locator("#live-error").inner_text()
    wait_for_frames(page, 3)


def wait_for_frames(page: Page, more: int) -> None:
    """Until the page has shown `more` frames more than now."""
    target = counter(page, "live-frames") + more
    wait_until(page, f"Number(document.getElementById('live-frames').textContent) >= {target}",
               120)


def wait_until(page: Page, condition: str, timeout_s: float) -> None:
    """Polls `condition` in the page. Not `wait_for_function`: its polling evaluates a string,
    which the page's Content-Security-Policy (no 'unsafe-eval') refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {condition}"
        page.wait_for_timeout(100)


def check_stylized(
    page: Page, url: str, style_id: str, headers: dict[str, str] | None = None
) -> None:
    """The page shows the camera's picture stylized at alpha 1 (as POST /stylize makes it up
    to JPEG), not the camera's own picture; after the slider goes to 0, the alpha 0 one."""
    shown = shown_pixels(page)
    height, width = shown.shape[:2]
    assert min(height, width) == 128
    camera = np.asarray(camera_picture().resize((width, height)), dtype=np.float64) / 255
    full, none = (
        stylized_over_http(url, style_id, (width, height), alpha, headers) for alpha in (1.0, 0.0)
    )
    errors = [np.abs(shown - other).mean() for other in (full, none, camera)]
    assert errors[0] < 0.06 and errors[0] < min(errors[1:]), errors

    page.get_by_label("Strength of the live style").fill("0")
    expect(page.locator("#live-alpha-value")).to_have_text("0.00")
    wait_for_frames(page, 3)
    shown = shown_pixels(page)
    errors = [np.abs(shown - other).mean() for other in (none, full)]
    assert errors[0] < errors[1], errors


def test_live_mode_shows_the_stylized_camera_and_counts(
    camera_browser: Browser, server: RunningServer
) -> None:
    style_id = register(server.url, 1)
    name = "live-page-1"
    context = camera_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sent: list[str] = []  # the settings the page sends on the live socket
    page.on("websocket", lambda socket: socket.on("framesent", lambda data: sent.append(data)))
    page.goto(server.url + "/")
    run_live(page, name)
    expect(page.get_by_label("Content photo")).to_be_hidden()  # the image form gives way
    wait_for_frames(page, 3)
    assert counter(page, "live-fps") > 0
    assert counter(page, "live-latency") > 0
    check_stylized(page, server.url, style_id)
    page.locator("#live-stability").fill("0.2")
    expect(page.locator("#live-stability-value")).to_have_text("0.20")
    deadline = time.monotonic() + 10
    while not any(isinstance(f, str) and '"stability":0.2' in f for f in sent):
        assert time.monotonic() < deadline, sent[-3:]
        page.wait_for_timeout(100)
    expect(page.locator("#live-error")).to_be_hidden()  # the server took it

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.locator("#live-status")).to_have_text("Stopped.")
    stopped_at = counter(page, "live-frames")
    page.wait_for_timeout(1000)
    assert counter(page, "live-frames") == stopped_at
    expect(page.locator("#live-error")).to_be_hidden()
    context.close()


def test_live_mode_with_api_keys(camera_browser: Browser, keyed_server: KeyedServer) -> None:
    admin = {"X-API-Key": ADMIN_KEY}
    style_id = register(keyed_server.url, 2, admin)
    context = camera_browser.new_context()
    page = context.new_page()
    page.goto(keyed_server.url + "/")
    # The key form, as a user fills it after the page's first 401.
    page.get_by_label("API key").fill(USER_KEYS[0])
    page.locator("#key-panel").evaluate("panel => { panel.hidden = false; }")
    page.get_by_role("button", name="Use key").click()
    run_live(page, "live-page-2")
    check_stylized(page, keyed_server.url, style_id, {"X-API-Key": USER_KEYS[0]})
    context.close()


def test_live_mode_has_its_own_model_choice_the_fast_one_first(
    camera_browser: Browser, server: RunningServer
) -> None:
    """Both models loaded: live chooses lite (the Image tab keeps its own choice, full) and
    says which model answers; another choice mid-stream is the one that answers then."""
    register(server.url, 3)
    context = camera_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.get_by_label("Model", exact=True)).to_have_value("full")
    page.get_by_role("button", name="Live", exact=True).click()
    choice = page.get_by_label("Live model")
    expect(choice).to_have_value("lite")
    assert choice.locator("option").evaluate_all("nodes => nodes.map(n => n.value)") == [
        "full", "lite"]
    run_live(page, "live-page-3")
    expect(page.locator("#live-answering")).to_have_text("lite")
    choice.select_option("full")
    wait_until(page, "document.getElementById('live-answering').textContent === 'full'", 120)
    page.get_by_role("button", name="Image", exact=True).click()
    expect(page.get_by_label("Model", exact=True)).to_have_value("full")
    context.close()


def test_start_cannot_open_a_second_stream(
    camera_browser: Browser, server: RunningServer, tmp_path: Path
) -> None:
    """While a stream runs, Start stays disabled, also after a style is uploaded mid-stream;
    clicking it anyway opens no second WebSocket. After Stop it starts again."""
    register(server.url, 4)
    context = camera_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(server.url + "/")
    run_live(page, "live-page-4")
    start = page.get_by_role("button", name="Start camera")
    expect(start).to_be_disabled()
    style = encode(random_image(48, 48, seed=SEED_BASE + 5))
    page.get_by_label("Upload a style for live").set_input_files(
        {"name": "mid-stream.png", "mimeType": "image/png", "buffer": style})
    expect(page.locator("#live-status")).to_have_text("Style “mid-stream” ready.")
    expect(start).to_be_disabled()
    start.click(force=True)
    start.evaluate("button => button.click()")  # a script's click on the disabled button
    wait_for_frames(page, 2)
    assert len(sockets) == 1, sockets

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(start).to_be_enabled()
    start.click()
    wait_until(page, "document.getElementById('live-status').textContent === 'Live.'", 60)
    assert len(sockets) == 2
    context.close()


def test_before_starting_no_broken_picture_and_the_counters_stay_in_view(
    camera_browser: Browser, server: RunningServer
) -> None:
    """Before Start: a placeholder, not the picture's alt text. Running at 1280 x 900: the
    frames/s line is above the fold, the picture not blown up to the page's width."""
    register(server.url, 6)
    context = camera_browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server.url + "/")
    page.get_by_role("button", name="Live", exact=True).click()
    expect(page.locator("#live-output")).to_be_hidden()
    expect(page.locator("#live-placeholder")).to_be_visible()
    run_live(page, "live-page-6")
    expect(page.locator("#live-output")).to_be_visible()
    expect(page.locator("#live-placeholder")).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")
    fps = page.locator("#live-fps").bounding_box()
    picture = page.locator("#live-output").bounding_box()
    assert fps is not None and picture is not None
    assert fps["y"] + fps["height"] <= 900, fps
    assert picture["width"] <= 0.55 * 1280, picture
    context.close()

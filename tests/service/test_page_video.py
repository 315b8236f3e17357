"""The web page with a video: chosen as the content, it becomes a job whose progress the page
shows until it can be watched and downloaded; Cancel stops it. Real Chromium, real server."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.sync_api import FilePayload, Page, expect

from devkit.videos import make_video
from tests.service.test_page import browser, page, png_file, pytestmark

__all__ = ["browser", "page", "pytestmark"]  # the fixtures and the skip, shared with test_page


def video_file(frames: int, width: int = 64, height: int = 48) -> FilePayload:
    return {
        "name": "walk.mp4",
        "mimeType": "video/mp4",
        "buffer": make_video(frames=frames, width=width, height=height),
    }


def choose(page: Page, clip: FilePayload) -> None:
    page.get_by_label("Content photo or video").set_input_files(clip)
    page.get_by_label("Upload style images").set_input_files([png_file("style.png", 91)])
    page.get_by_label("Output size").select_option("0")
    page.get_by_label("Style scale").select_option("0")


def test_a_video_shows_progress_then_plays_and_downloads(page: Page, base_url: str) -> None:
    choose(page, video_file(frames=6))
    page.get_by_label("Videos: steady strokes").uncheck()
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#video-job")).to_be_visible()
    expect(page.locator("#video-progress-text")).to_contain_text(
        "succeeded · 6 of 6 frames", timeout=120_000
    )
    expect(page.locator("#video-result")).to_be_visible()
    assert page.locator("#video-player").get_attribute("src").startswith("blob:")
    download = page.locator("#video-download")
    assert download.get_attribute("download") == "walk-stylized.mp4"
    # As a person downloads it (the page's CSP keeps its own scripts from fetching blob: URLs).
    with page.expect_download() as saved:
        download.click()
    data = Path(saved.value.path()).read_bytes()
    assert data[4:8] == b"ftyp"
    assert page.get_by_role("button", name="Cancel").is_hidden()
    assert page.locator("#status").inner_text() == "Done."


def test_cancel_stops_the_job(page: Page, base_url: str) -> None:
    choose(page, video_file(frames=60, width=128, height=96))
    page.get_by_label("Videos: steadiness").fill("0.85")  # the user's trade-off goes along
    expect(page.locator("#stability-value")).to_have_text("0.85")
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#video-progress-text")).to_contain_text("running", timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#video-progress-text")).to_contain_text("canceled", timeout=10_000)
    expect(page.locator("#status")).to_have_text("Canceled.")
    jobs = httpx.get(f"{base_url}/jobs").json()["jobs"]
    assert jobs[-1]["status"] == "canceled"
    assert jobs[-1]["frames_done"] < 60
    assert jobs[-1]["stability"] == 0.85


def test_a_refused_video_is_explained(page: Page) -> None:
    choose(page, {"name": "broken.mp4", "mimeType": "video/mp4", "buffer": b"not a video" * 50})
    page.get_by_role("button", name="Stylize").click()
    expect(page.get_by_role("alert")).to_contain_text("video: not a video file")
    assert page.locator("#video-job").is_hidden()


def test_after_a_video_the_failed_note_goes_and_the_video_sits_beside_the_form(
    page: Page,
) -> None:
    """An image result, then a failed request (the image marked as earlier), then a video job
    that succeeds: the note about the failure goes with the earlier image, and the video
    appears where results appear, beside the form, above the fold at 1280 x 900."""
    page.get_by_label("Content photo or video").set_input_files(png_file("first.png", 92))
    page.get_by_label("Upload style images").set_input_files([png_file("style.png", 93)])
    page.get_by_label("Output size").select_option("0")
    page.get_by_label("Style scale").select_option("0")
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#status")).to_have_text("Done.")
    notes = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"notes, not pixels"}
    page.get_by_label("Content photo or video").set_input_files(notes)
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#result-stale")).to_be_visible()

    page.get_by_label("Content photo or video").set_input_files(video_file(frames=4))
    page.get_by_label("Videos: steady strokes").uncheck()
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#video-result")).to_be_visible(timeout=120_000)
    expect(page.locator("#result-stale")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    expect(page.get_by_role("alert")).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")
    panel = page.locator("#video-job").bounding_box()
    form = page.locator("#stylize-form").bounding_box()
    assert panel is not None and form is not None
    assert panel["x"] >= form["x"] + form["width"], (panel, form)
    assert panel["y"] < 900 / 2, panel


def test_a_chosen_video_is_previewed(page: Page) -> None:
    page.get_by_label("Content photo or video").set_input_files(video_file(frames=4))
    preview = page.get_by_label("Preview of the content video")
    expect(preview).to_be_visible()
    assert (preview.get_attribute("src") or "").startswith("blob:")
    expect(page.get_by_alt_text("Preview of the content photo")).to_be_hidden()
    # A photo again: its picture instead.
    page.get_by_label("Content photo or video").set_input_files(png_file("photo.png", 94))
    expect(page.get_by_alt_text("Preview of the content photo")).to_be_visible()
    expect(preview).to_be_hidden()

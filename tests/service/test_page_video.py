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
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#video-progress-text")).to_contain_text("running", timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#video-progress-text")).to_contain_text("canceled", timeout=10_000)
    expect(page.locator("#status")).to_have_text("Canceled.")
    jobs = httpx.get(f"{base_url}/jobs").json()["jobs"]
    assert jobs[-1]["status"] == "canceled"
    assert jobs[-1]["frames_done"] < 60


def test_a_refused_video_is_explained(page: Page) -> None:
    choose(page, {"name": "broken.mp4", "mimeType": "video/mp4", "buffer": b"not a video" * 50})
    page.get_by_role("button", name="Stylize").click()
    expect(page.get_by_role("alert")).to_contain_text("video: not a video file")
    assert page.locator("#video-job").is_hidden()

"""The page's screenshots in docs/images/: image mode (the preset gallery, a result in the
before / after view), video mode (a chosen clip's preview and its stylized result) and live
mode (a running session from a fake camera). A real server on the embedded weights with the
preset gallery, real headless Chromium at 1280 x 900.

    python -m devkit.screenshots PHOTO CLIP_PHOTO [--out docs/images]

PHOTO is the content of image and live mode, CLIP_PHOTO the picture a short clip pans over
(the committed ones: scikit-image's astronaut and rocket, NASA photos in the public domain).
"""

from __future__ import annotations

import argparse
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from devkit import REPO
from devkit.camera import write_y4m
from devkit.server import running_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]
VIEWPORT = {"width": 1280, "height": 900}
JPEG_QUALITY = 78
CAMERA_SIZE = (640, 480)
CLIP_SIZE = (320, 240)
CLIP_FRAMES = 24
CLIP_STEP = 4  # pixels the clip pans per frame


def pan_clip(picture: Image.Image, path: Path) -> None:
    """An MP4 (H.264) panning across `picture` resized to the clip's height."""
    width, height = CLIP_SIZE
    scale = height / picture.height
    wide = np.asarray(
        picture.convert("RGB").resize(
            (max(width + CLIP_STEP * CLIP_FRAMES, round(picture.width * scale)), height)
        )
    )
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(CLIP_FRAMES):
            window = np.ascontiguousarray(wide[:, index * CLIP_STEP : index * CLIP_STEP + width])
            frame = av.VideoFrame.from_ndarray(window, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def centre_crop(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    width, height = size
    scale = max(width / picture.width, height / picture.height)
    resized = picture.convert("RGB").resize(
        (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def shoot(page: Page, path: Path) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), type="jpeg", quality=JPEG_QUALITY)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def image_mode(page: Page, photo: Path, out: Path) -> None:
    page.get_by_label("Content photo").set_input_files(photo)
    page.get_by_role("checkbox", name="starry-night").check()
    page.get_by_label("Output size").select_option("512")
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#status")).to_have_text("Done.", timeout=180_000)
    page.get_by_label("Before / after").fill("40")
    shoot(page, out / "page-image.jpg")


def video_mode(page: Page, clip: Path, out: Path) -> None:
    page.get_by_label("Content photo or video").set_input_files(clip)
    page.get_by_role("checkbox", name="great-wave").check()
    page.get_by_label("Model", exact=True).select_option("lite")
    page.get_by_label("Output size").select_option("0")
    page.get_by_role("button", name="Stylize").click()
    expect(page.locator("#video-result")).to_be_visible(timeout=300_000)
    player = page.locator("#video-player")
    player.evaluate("v => new Promise(r => { v.currentTime = 1; v.onseeked = r; })")
    page.wait_for_timeout(1500)  # the player's loading ring goes
    shoot(page, out / "page-video.jpg")


def live_mode(page: Page, out: Path) -> None:
    page.get_by_role("button", name="Live", exact=True).click()
    expect(page.get_by_label("Live style", exact=True).locator("option")).not_to_have_count(0)
    page.get_by_label("Live style", exact=True).select_option(label="the-scream")
    page.get_by_role("button", name="Start camera").click()
    expect(page.locator("#live-status")).to_have_text("Live.", timeout=120_000)
    page.wait_for_timeout(8000)  # a few seconds of frames: the counters settle
    shoot(page, out / "page-live.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("clip_photo", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        clip, camera = folder / "clip.mp4", folder / "camera.y4m"
        with Image.open(args.clip_photo) as picture:
            pan_clip(picture, clip)
        with Image.open(args.photo) as picture:
            write_y4m(camera, centre_crop(picture, CAMERA_SIZE), frames=10)
        env = {
            "ADAIN_STYLES_DIR": str(folder / "styles"),
            "ADAIN_JOBS_DIR": str(folder / "jobs"),
            "ADAIN_PRESETS": "true",
        }
        camera_flags = [
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}",
        ]
        with running_server(env) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=FLAGS + camera_flags
            )
            for mode in (
                lambda page: image_mode(page, args.photo, args.out),
                lambda page: video_mode(page, clip, args.out),
                lambda page: live_mode(page, args.out),
            ):
                context = browser.new_context(viewport=VIEWPORT)
                page = context.new_page()
                page.goto(server.url + "/")
                mode(page)
                context.close()
            browser.close()


if __name__ == "__main__":
    main()

"""The answers of a running deployment, checked from outside (scripts/container-check.sh runs it
against the containers): ready, an image stylized, and a short video job finished by a worker.

    python3 scripts/container_smoke.py http://127.0.0.1:18080 [--no-jobs]
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import httpx
import numpy as np
from PIL import Image


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url}/readyz not 200 after {timeout_s:.0f} s")
        time.sleep(1)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images(seed: int = 0) -> tuple[bytes, bytes]:
    """A content image with structure (gradient + disc) and a noisy striped style."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:192, 0:256]
    content = np.stack([x * 255 / 255, y * 255 / 191, 128 + 0 * x], -1)
    content[(x - 128) ** 2 + (y - 96) ** 2 < 50**2] = (230, 40, 40)
    style = (np.sin(x / 5.0)[..., None] * 100 + 128) + rng.normal(0, 30, (192, 256, 3))
    return png(content.clip(0, 255).astype(np.uint8)), png(style.clip(0, 255).astype(np.uint8))


def check_stylize(url: str) -> None:
    content, style = test_images()
    started = time.monotonic()
    response = httpx.post(
        f"{url}/stylize",
        files=[
            ("content", ("c.png", content, "image/png")),
            ("style", ("s.png", style, "image/png")),
        ],
        data={"content_size": "128", "style_size": "128"},
        timeout=120,
    )
    assert response.status_code == 200, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "image/png", response.headers
    image = Image.open(io.BytesIO(response.content))
    assert min(image.size) == 128 and max(image.size) in (170, 171), image.size
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 5, "a flat image came back"
    print(f"/stylize: {image.size[0]}x{image.size[1]} PNG in {time.monotonic() - started:.1f} s")


def short_video(frames: int = 8, width: int = 96, height: int = 64) -> bytes:
    """An H.264 MP4 of a pattern panning 3 px a frame, made with PyAV (as the service reads)."""
    import av

    buffer = io.BytesIO()
    y, x = np.mgrid[0:height, 0 : width + 3 * frames]
    canvas = np.stack([(x * 7) % 256, (y * 11) % 256, ((x + y) * 5) % 256], -1).astype(np.uint8)
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            window = np.ascontiguousarray(canvas[:, 3 * index : 3 * index + width])
            frame = av.VideoFrame.from_ndarray(window, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def check_video_job(url: str, frames: int = 8, timeout_s: float = 600) -> None:
    """POST /jobs -> 202, followed to `succeeded` (a worker container runs it), then the MP4:
    every frame, at the content size."""
    import av

    _, style = test_images()
    started = time.monotonic()
    response = httpx.post(
        f"{url}/jobs",
        files=[
            ("video", ("clip.mp4", short_video(frames), "video/mp4")),
            ("style", ("s.png", style, "image/png")),
        ],
        data={"content_size": "64", "style_size": "64"},
        timeout=120,
    )
    assert response.status_code == 202, (response.status_code, response.text[:500])
    job_id = response.json()["id"]
    deadline = time.monotonic() + timeout_s
    while (state := httpx.get(f"{url}/jobs/{job_id}", timeout=10).json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, f"job {job_id} still {state['status']}"
        time.sleep(1)
    assert state["status"] == "succeeded", state
    result = httpx.get(f"{url}/jobs/{job_id}/result", timeout=60)
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(result.content)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == frames, len(decoded)
    assert all(min(f.shape[:2]) == 64 for f in decoded), decoded[0].shape
    assert all(f.std() > 5 for f in decoded), "flat frames came back"
    seconds = time.monotonic() - started
    print(f"/jobs: {frames} frames {decoded[0].shape[1]}x{decoded[0].shape[0]} in {seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--no-jobs", action="store_true", help="skip the video job")
    parser.add_argument("--ready-timeout", type=float, default=300)
    args = parser.parse_args()
    started = time.monotonic()
    wait_ready(args.url, args.ready_timeout)
    print(f"/readyz: 200 after {time.monotonic() - started:.0f} s")
    check_stylize(args.url)
    if not args.no_jobs:
        check_video_job(args.url)
    print("smoke: ok")


if __name__ == "__main__":
    sys.exit(main())

"""Video jobs against a real server (the embedded networks, default settings):

1. frames per second of a job (POST /jobs, stabilised and not) at 480p and 720p against a loop
   of per-frame POST /stylize calls on the same frames (ratio: job / loop);
2. /stylize latency p95 (a 256 px image) while a 480p job runs, against idle (ratio).

Clips: a panning photo-like picture made here (devkit/videos.py), a few frames each.

    nice -n 19 python3 -m benchmarks.bench_video [--frames 8] [--requests 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks.common import machine, photo
from devkit.images import encode
from devkit.server import RunningServer, running_server
from devkit.videos import decode_frames, make_video

SIZES = {"480p": (854, 480), "720p": (1280, 720)}


def run_job(server: RunningServer, clip: bytes, style: bytes, stabilize: bool) -> float:
    """Seconds from submission to the job's success (frames at the clip's own size)."""
    start = time.perf_counter()
    response = httpx.post(
        f"{server.url}/jobs", timeout=600,
        files=[("video", ("clip.mp4", clip)), ("style", ("s.jpg", style))],
        data={"content_size": "0", "style_size": "512", "stabilize": str(stabilize).lower()},
    )
    response.raise_for_status()
    job_id = response.json()["id"]
    while True:
        state = httpx.get(f"{server.url}/jobs/{job_id}", timeout=60).json()
        if state["status"] == "succeeded":
            return time.perf_counter() - start
        if state["status"] in ("failed", "canceled"):
            raise RuntimeError(state)
        time.sleep(0.05)


def per_frame_loop(server: RunningServer, frames: list[bytes], style: bytes) -> float:
    """Seconds for /stylize of every frame, one after the other (the style cached after the
    first, as a client looping over frames would get it)."""
    start = time.perf_counter()
    with httpx.Client(timeout=600) as client:
        for frame in frames:
            client.post(f"{server.url}/stylize", data={"content_size": "0", "style_size": "512"},
                        files=[("content", ("f.png", frame)), ("style", ("s.jpg", style))]
                        ).raise_for_status()
    return time.perf_counter() - start


def latencies(server: RunningServer, count: int, image: bytes, style: bytes) -> list[float]:
    times = []
    with httpx.Client(timeout=600) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.post(f"{server.url}/stylize", data={"content_size": "256", "style_size": "256"},
                        files=[("content", ("c.jpg", image)), ("style", ("s.jpg", style))]
                        ).raise_for_status()
            times.append(time.perf_counter() - start)
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--requests", type=int, default=12, help="/stylize calls per latency run")
    args = parser.parse_args()
    print(machine())
    style = photo(512, seed=2)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as jobs_dir, running_server(
            {"ADAIN_DEVICE": "cpu", "ADAIN_JOBS_DIR": str(Path(jobs_dir)),
             "ADAIN_STYLES_DIR": str(Path(jobs_dir) / "styles")}, ready_timeout_s=600) as server:
        per_frame_loop(server, [photo(256, seed=3)], style)  # the style's statistics cached
        for name, (width, height) in SIZES.items():
            clip = make_video(frames=args.frames, width=width, height=height, rate=30)
            frames = [encode(Image.fromarray(frame)) for frame in decode_frames(clip)]
            loop_s = per_frame_loop(server, frames, style)
            plain_s = run_job(server, clip, style, stabilize=False)
            stable_s = run_job(server, clip, style, stabilize=True)
            fps = {label: args.frames / seconds for label, seconds in
                   (("loop", loop_s), ("job", plain_s), ("job stabilised", stable_s))}
            results[name] = fps
            print(f"{name} ({width} x {height}, {args.frames} frames): per-frame /stylize loop "
                  f"{fps['loop']:.2f} fps; job {fps['job']:.2f} fps "
                  f"({fps['job'] / fps['loop']:.2f}x the loop); stabilised job "
                  f"{fps['job stabilised']:.2f} fps ({fps['job stabilised'] / fps['loop']:.2f}x)",
                  flush=True)

        image = photo(256, seed=4)
        latencies(server, 2, image, style)  # warm
        idle = latencies(server, args.requests, image, style)
        long_clip = make_video(frames=args.frames * 6, width=854, height=480, rate=30)
        response = httpx.post(
            f"{server.url}/jobs", timeout=600,
            files=[("video", ("clip.mp4", long_clip)), ("style", ("s.jpg", style))],
            data={"content_size": "0", "style_size": "512"})
        response.raise_for_status()
        job_id = response.json()["id"]
        while httpx.get(f"{server.url}/jobs/{job_id}").json()["frames_done"] < 1:
            time.sleep(0.05)
        busy = latencies(server, args.requests, image, style)
        state = httpx.get(f"{server.url}/jobs/{job_id}").json()
        httpx.delete(f"{server.url}/jobs/{job_id}")
        print(f"/stylize 256 px latency p95: idle {p95(idle) * 1000:.0f} ms, while a 480p job "
              f"runs {p95(busy) * 1000:.0f} ms ({p95(busy) / p95(idle):.2f}x; the job was "
              f"{state['status']} at frame {state['frames_done']} of {state['frames_total']} "
              "when the last request returned)")


if __name__ == "__main__":
    main()

"""Video jobs against a real server (the embedded networks, default settings):

1. frames per second of a job (POST /jobs, stabilised and not) at 480p and 720p against a loop
   of per-frame POST /stylize calls on the same frames (ratio: job / loop);
2. /stylize latency p95 (a 256 px image) while a 480p job runs, against idle (ratio).

Clips: a panning photo-like picture made here (devkit/videos.py), a few frames each.

    nice -n 19 python3 -m benchmarks.bench_video [--frames 4] [--rounds 2] [--requests 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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


def start_job(server: RunningServer, clip: bytes, style: bytes) -> str:
    """A job to run behind the latency measurements, started and at work."""
    response = httpx.post(
        f"{server.url}/jobs", timeout=600,
        files=[("video", ("clip.mp4", clip)), ("style", ("s.jpg", style))],
        data={"content_size": "0", "style_size": "512"})
    response.raise_for_status()
    job_id = response.json()["id"]
    while httpx.get(f"{server.url}/jobs/{job_id}", timeout=60).json()["frames_done"] < 1:
        time.sleep(0.05)
    return job_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (variants alternate)")
    parser.add_argument("--requests", type=int, default=8, help="/stylize calls per latency run")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    print(machine())
    style = photo(512, seed=2)
    with tempfile.TemporaryDirectory() as jobs_dir, running_server(
            {"ADAIN_DEVICE": "cpu", "ADAIN_JOBS_DIR": str(Path(jobs_dir)),
             "ADAIN_STYLES_DIR": str(Path(jobs_dir) / "styles")}, ready_timeout_s=600) as server:
        per_frame_loop(server, [photo(256, seed=3)], style)  # the style's statistics cached
        for name in args.sizes:
            width, height = SIZES[name]
            clip = make_video(frames=args.frames, width=width, height=height, rate=30)
            frames = [encode(Image.fromarray(frame)) for frame in decode_frames(clip)]
            seconds: dict[str, list[float]] = {"loop": [], "job": [], "job stabilised": []}
            for _ in range(args.rounds):  # alternating, so the machine's noise hits all alike
                seconds["loop"].append(per_frame_loop(server, frames, style))
                seconds["job"].append(run_job(server, clip, style, stabilize=False))
                seconds["job stabilised"].append(run_job(server, clip, style, stabilize=True))
            fps = {label: args.frames / statistics.median(values)
                   for label, values in seconds.items()}
            print(f"{name} ({width} x {height}, {args.frames} frames, median of {args.rounds}): "
                  f"per-frame /stylize loop {fps['loop']:.3f} fps; job {fps['job']:.3f} fps "
                  f"({fps['job'] / fps['loop']:.2f}x the loop); stabilised job "
                  f"{fps['job stabilised']:.3f} fps ({fps['job stabilised'] / fps['loop']:.2f}x)",
                  flush=True)

        image = photo(256, seed=4)
        latencies(server, 2, image, style)  # warm
        long_clip = make_video(frames=200, width=854, height=480, rate=30)
        idle: list[float] = []
        busy: list[float] = []
        for _ in range(args.rounds):
            idle += latencies(server, args.requests, image, style)
            job_id = start_job(server, long_clip, style)
            busy += latencies(server, args.requests, image, style)
            httpx.delete(f"{server.url}/jobs/{job_id}", timeout=60)
        print(f"/stylize 256 px latency p95: idle {p95(idle) * 1000:.0f} ms, while a 480p job "
              f"runs {p95(busy) * 1000:.0f} ms ({p95(busy) / p95(idle):.2f}x); medians "
              f"{statistics.median(idle) * 1000:.0f} / {statistics.median(busy) * 1000:.0f} ms",
              flush=True)


if __name__ == "__main__":
    main()

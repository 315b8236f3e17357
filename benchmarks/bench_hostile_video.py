"""Hostile videos opened and decoded as FFmpeg does by default, and as the service does
(`media.video`: only its demuxers, every frame within ADAIN_MAX_VIDEO_FRAME_PIXELS before it
is allocated): the seconds taken and the growth of the peak resident memory (1 MB: none
measurable), each in a fresh process.

- a concat list naming itself (the name POST /jobs saves an upload under);
- Motion-JPEG whose header and first frames are 64 x 48, then frames of N x N.

    python3 -m benchmarks.bench_hostile_video [--side 6000] [--frames 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine
from devkit import REPO
from devkit.hostile_videos import FFCONCAT_SELF, growing_mjpeg

# Each runs in its own process, after `IMPORTS`: `path` is the file; the harness measures.
IMPORTS = """
import av
from media.video import UnsupportedVideoError, VideoTooLargeError, open_input, read_frames
"""
DEFAULT_OPEN = """
try:
    av.open(path)
except (OSError, av.error.FFmpegError):
    pass
"""
SERVICE_OPEN = """
try:
    open_input(Path(path))
except UnsupportedVideoError:
    pass
"""
# What reading frames did before the limit: decode, convert to RGB (`media.video.upright`).
DEFAULT_DECODE = """
with av.open(path) as container:
    for frame in container.decode(video=0):
        frame.to_image().convert("RGB")
"""
SERVICE_DECODE = """
try:
    for frame in read_frames(Path(path), 3840 * 2160):
        pass
except VideoTooLargeError:
    pass
"""
# VmHWM: the peak resident memory of this process image (ru_maxrss survives the exec).
HARNESS = """
import json, re, sys, time
from pathlib import Path
def peak_mb():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
path = sys.argv[1]
exec(sys.argv[2])
before = peak_mb()
start = time.perf_counter()
exec(sys.argv[3])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "before_mb": before, "peak_mb": peak_mb()}))
"""


def measure(code: str, path: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", HARNESS, str(path), IMPORTS, code],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=6000, help="side of the large frames")
    parser.add_argument("--frames", type=int, default=4, help="large frames after the small")
    args = parser.parse_args()
    print(f"# hostile videos: FFmpeg's defaults against the service's reading ({machine()})")
    with tempfile.TemporaryDirectory() as folder:
        concat = Path(folder) / "video"
        concat.write_bytes(FFCONCAT_SELF)
        growing = Path(folder) / "growing.mkv"
        growing.write_bytes(growing_mjpeg([(64, 48)] * 2 + [(args.side, args.side)] * args.frames))
        cases = {
            f"concat list naming itself ({len(FFCONCAT_SELF)} bytes)": (
                concat,
                DEFAULT_OPEN,
                SERVICE_OPEN,
            ),
            f"64 x 48 then {args.frames} frames of {args.side} x {args.side} "
            f"({growing.stat().st_size // 1024} KiB)": (growing, DEFAULT_DECODE, SERVICE_DECODE),
        }
        print("| file | FFmpeg's defaults | the service | ratio (time, memory growth) |")
        print("| --- | --- | --- | --- |")
        for name, (path, default_code, service_code) in cases.items():
            default = measure(default_code, path)
            service = measure(service_code, path)
            growth = [max(r["peak_mb"] - r["before_mb"], 1.0) for r in (default, service)]
            print(
                f"| {name} | {default['seconds']:.2f} s, +{growth[0]:.0f} MB | "
                f"{service['seconds']:.3f} s, +{growth[1]:.0f} MB | "
                f"{default['seconds'] / service['seconds']:.0f}x, {growth[0] / growth[1]:.0f}x |"
            )


if __name__ == "__main__":
    main()

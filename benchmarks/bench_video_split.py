"""One long clip in parts (issue 32 item 7): the seams, and the wall time of parts run by
separate processes in parallel, with the embedded default network at the service's precision.

Seams: clips with exactly known motion (`devkit.clips`: pans, a zoom, a rotation, a disc over
a pan, non-rigid motion) stylized whole and in `--parts` parts (`media.clip.plan_parts`,
`stylize_frames(part=...)`, `join_parts`) for each warm-up length; per clip, the warping error
(Lai et al. 2018, true motion) of the output frame pairs across each seam over the mean of the
pairs within the segments, of the joined result as decoded (lossless by default: `--crf`), and
the worst seam's error over the whole run's at that pair. Target: at most 1.5x. For
comparison: the whole run's own ratio at the same frame pairs (what the clip alone gives), the
whole run with its segments closed at the seams ("whole, cut": each then starts with an H.264
key frame, as a part does), and "untracked" parts: the stabiliser started fresh at the
warm-up's first frame, without the camera tracked from the clip's start (what the warm-up alone
gives).

Time: a `--timing-frames` clip at `--timing-size` px, one process stylizing it whole with all
the cores' threads, against `--parts` processes started together, each stylizing its part with
cores / parts threads (at least 1), and the parts joined; each side includes starting Python
and loading the network. Target (3 parts, 600 frames): at most 0.45x. Also each process's CPU
seconds (on a machine with fewer free cores than processes the wall time cannot show the gain)
and, per part, the seconds spent tracking and warming up before its first frame.

    nice -n 19 python3 -m benchmarks.bench_video_split [--size 128] [--frames 48]
        [--warmups 0,4,8,16] [--clips pan_0.75px,...] [--timing-frames 600] [--timing-size 96]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from devkit import REPO
from devkit.clips import (
    Clip,
    Deforming,
    content_photos,
    load_photo,
    render,
    standard_clips,
    style_images,
    write_video,
)
from devkit.videos import decode_frames
from media.clip import Clip as ClipFile
from media.clip import (
    ClipSettings,
    ClipState,
    FrameRange,
    ModelBackend,
    join,
    join_parts,
    open_clip,
    plan_parts,
    stylize_frames,
)
from media.controls import check_controls
from models.config import Device, PipelineConfig
from models.pipeline import build_pipeline
from models.video_metrics import warping_errors

TARGET_SEAM = 1.5  # seam pairs' warping error over the segments'
TARGET_TIME = 0.45  # parts in parallel over the whole, 3 parts of a 600-frame clip
WHOLE = FrameRange(0, None, 0)
CLIPS = (
    "pan_0.75px",
    "pan_2.5px_diagonal",
    "zoom_1.2%",
    "rotate_0.5deg",
    "disc_over_pan",
    "deform_2px",
)
STYLE = "adain__brushstrokes"  # oriented strokes: the most visible where they jump
STYLE_SIZE = 256
# One segment per run (no checkpoint in between): what is measured is the part, not the
# checkpoints. Seams: lossless by default (`--crf`), so the figures are the stabiliser's: each
# segment starts with an H.264 key frame, coded unlike the frames before it ("whole, cut").
SETTINGS = ClipSettings(crf=18, preset="veryfast", checkpoint_s=float("inf"))


def style_path() -> Path:
    return next(path for path in style_images() if path.stem == STYLE)


def open_video(video: Path) -> ClipFile:
    controls = check_controls(styles=1, content_size=0, style_size=STYLE_SIZE)
    return open_clip(video, [style_path()], [], controls)


def run_range(
    clip: ClipFile,
    backend: ModelBackend,
    work: Path,
    part: FrameRange,
    state: ClipState = ClipState(),
    settings: ClipSettings = SETTINGS,
) -> ClipState:
    work.mkdir(parents=True, exist_ok=True)
    return stylize_frames(
        clip.video, work, clip.params, clip.styles, backend, settings, state=state, part=part
    )


def decoded(path: Path) -> Tensor:
    """(T, 3, H, W) in [0, 1]: the frames of a result as a player shows them."""
    frames = decode_frames(path.read_bytes())
    return torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames]).float() / 255


def seam_ratio(errors: Tensor, whole: Tensor, seams: list[int]) -> tuple[float, float, float]:
    """Warping error of the frame pairs across the seams (pair s - 1 -> s) over the mean of the
    other pairs (mean and worst seam), and the worst seam's over the whole run's at that pair
    (what splitting adds)."""
    across = torch.tensor([s - 1 for s in seams])
    within = torch.ones(len(errors), dtype=torch.bool)
    within[across] = False
    base = errors[within].mean()
    added = (errors[across] / whole[across]).max()
    return float(errors[across].mean() / base), float(errors[across].max() / base), float(added)


def untracked_parts(
    clip: Clip,
    parts: list[FrameRange],
    backend: ModelBackend,
    folder: Path,
    settings: ClipSettings,
) -> Tensor:
    """The parts each stylized from a file that starts at its warm-up's first frame: the
    stabiliser fresh there, the camera tracked over the warm-up alone."""
    states = []
    for number, part in enumerate(parts):
        first = max(0, part.start - part.warmup)
        end = len(clip.frames) if part.end is None else part.end
        video = folder / f"untracked-{number}.mp4"
        write_video(clip.frames[first:end], video)
        trimmed = FrameRange(part.start - first, None, part.warmup)
        states.append(
            run_range(
                open_video(video),
                backend,
                folder / f"untracked-{number}",
                trimmed,
                settings=settings,
            )
        )
    # Each file's segments carry its own timestamps: decode them in order instead of joining.
    return torch.cat([decoded(segment.path) for state in states for segment in state.segments])


def seams(args: argparse.Namespace, backend: ModelBackend) -> None:
    names = list(filter(None, args.clips.split(","))) or list(CLIPS)
    warmups = [int(w) for w in args.warmups.split(",")]
    settings = replace(SETTINGS, crf=args.crf)
    print(
        f"seams: {args.size} px, {args.frames} frames in {args.parts} parts, style {STYLE}, "
        f"CRF {args.crf}; warping error across the seams / within the segments: mean, worst "
        "seam, [worst seam / the whole run's at that frame pair]"
    )
    worst: dict[str, tuple[float, float]] = {}
    for clip in standard_clips(args.size, args.frames, names=names):
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-split-") as name:
            folder = Path(name)
            video = folder / "clip.mp4"
            write_video(clip.frames, video)
            opened = open_video(video)
            whole = run_range(opened, backend, folder / "whole", WHOLE, settings=settings)
            join(whole, video, folder / "whole.mp4", opened.params)
            errors = whole_errors = warping_errors(
                decoded(folder / "whole.mp4"), clip.flows, clip.valid
            )
            plan = plan_parts(args.frames, args.frames // args.parts)
            bounds = [part.start for part in plan[1:]]
            results = {"whole run": seam_ratio(errors, whole_errors, bounds)}
            # The whole run again, its segments closed at the seams (as checkpoints close
            # them): each part's first frame is then an H.264 key frame, as in a split run.
            cut = ClipState()
            for number, part in enumerate(plan):
                cut = run_range(opened, backend, folder / f"cut-{number}", part, cut, settings)
            join(cut, video, folder / "cut.mp4", opened.params)
            errors = warping_errors(decoded(folder / "cut.mp4"), clip.flows, clip.valid)
            results["whole, cut"] = seam_ratio(errors, whole_errors, bounds)
            for warmup in warmups:
                parts = plan_parts(args.frames, args.frames // args.parts, warmup)
                states = [
                    run_range(opened, backend, folder / f"w{warmup}-{i}", part, settings=settings)
                    for i, part in enumerate(parts)
                ]
                joined = folder / f"w{warmup}.mp4"
                join_parts(states, video, joined, opened.params)
                errors = warping_errors(decoded(joined), clip.flows, clip.valid)
                results[f"warm-up {warmup}"] = seam_ratio(errors, whole_errors, bounds)
            untracked = untracked_parts(
                clip,
                plan_parts(args.frames, args.frames // args.parts, args.untracked_warmup),
                backend,
                folder,
                settings,
            )
            errors = warping_errors(untracked, clip.flows, clip.valid)
            results[f"untracked, warm-up {args.untracked_warmup}"] = seam_ratio(
                errors, whole_errors, bounds
            )
        cells = "  ".join(
            f"{label} {mean:.2f} ({high:.2f}) [{added:.2f}]"
            for label, (mean, high, added) in results.items()
        )
        print(f"{clip.name:20s} {cells}  ({time.perf_counter() - started:.0f} s)", flush=True)
        for label, (_, high, added) in results.items():
            before = worst.get(label, (0.0, 0.0))
            worst[label] = (max(before[0], high), max(before[1], added))
    summary = ", ".join(
        f"{label} {high:.2f}x [{added:.2f}x]" for label, (high, added) in worst.items()
    )
    print(f"worst seam over all clips: {summary} (target <= {TARGET_SEAM}x)")


def worker(args: argparse.Namespace) -> None:
    """One process's run (`--worker`): its range of the clip, the final state pickled."""
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    backend = ModelBackend({"full": build_pipeline(PipelineConfig(Device.cpu))})
    part = FrameRange(args.start, args.end, args.warmup)
    clip = open_video(args.video)
    started = time.perf_counter()
    first_frame: list[float] = []  # when the part's first frame began: priming ended

    def on_frame(done: int) -> None:
        if not first_frame:
            first_frame.append(time.perf_counter())

    args.work.mkdir(parents=True, exist_ok=True)
    state = stylize_frames(
        clip.video,
        args.work,
        clip.params,
        clip.styles,
        backend,
        SETTINGS,
        part=part,
        on_frame=on_frame,
    )
    ended = time.perf_counter()
    print(
        f"  part [{part.start}, {state.frames_done}): tracking and warm-up "
        f"{first_frame[0] - started:.1f} s, its frames {ended - first_frame[0]:.1f} s",
        flush=True,
    )
    args.state.write_bytes(pickle.dumps(state))


def launch(video: Path, work: Path, part: FrameRange, threads: int) -> subprocess.Popen:
    end = [] if part.end is None else ["--end", str(part.end)]
    command = [
        sys.executable, "-m", "benchmarks.bench_video_split", "--worker",
        "--video", str(video), "--work", str(work), "--state", str(work / "state.pickle"),
        "--start", str(part.start), *end, "--warmup", str(part.warmup),
        "--threads", str(threads),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(command, cwd=REPO, env=environment)


def timed_runs(
    video: Path, folder: Path, parts: list[FrameRange], threads: int
) -> tuple[float, list[float]]:
    """Seconds from starting the processes to the joined result, and each process's CPU
    seconds (user and system)."""
    started = time.perf_counter()
    processes = [
        launch(video, folder / f"part-{number}", part, threads) for number, part in enumerate(parts)
    ]
    cpu = []
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed: {process.args}")
        cpu.append(usage.ru_utime + usage.ru_stime)
    states = [
        pickle.loads((folder / f"part-{n}" / "state.pickle").read_bytes())
        for n in range(len(parts))
    ]
    params = open_video(video).params
    join_parts(states, video, folder / "result.mp4", params)
    return time.perf_counter() - started, cpu


def timing(args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0))
    size = args.timing_size
    photo = load_photo(content_photos()[17], 2 * size)
    motion = Deforming(size, 2.5, 0.8, (0.1, 0.05), (0.1 * size, 0.1 * size), seed=1)
    clip = render(photo, motion, args.timing_frames, (size, size), name="deform")
    parts = plan_parts(args.timing_frames, args.timing_frames // args.parts)
    split_threads = max(1, cores // args.parts)
    with tempfile.TemporaryDirectory(prefix="bench-split-time-") as name:
        folder = Path(name)
        video = folder / "clip.mp4"
        write_video(clip.frames, video)
        runs: dict[str, list[tuple[float, list[float]]]] = {"whole": [], "parts": []}
        for round_ in range(args.rounds):  # alternating: the machine's noise hits both alike
            runs["parts"].append(
                timed_runs(video, folder / f"parts-{round_}", parts, split_threads)
            )
            runs["whole"].append(timed_runs(video, folder / f"whole-{round_}", [WHOLE], cores))
    (whole, whole_cpu), (split, split_cpu) = (min(runs[key]) for key in ("whole", "parts"))
    walls = {key: [round(wall, 1) for wall, _ in values] for key, values in runs.items()}
    verdict = "met" if split / whole <= TARGET_TIME else "NOT met"
    print(
        f"time: {args.timing_frames} frames of {size}x{size}, {cores} cores, load average "
        f"{os.getloadavg()[0]:.1f}: one process with {cores} threads {whole:.1f} s; "
        f"{len(parts)} processes at once with {split_threads} thread(s) each, joined, "
        f"{split:.1f} s -> {split / whole:.2f}x (target <= {TARGET_TIME}x: {verdict}; best of "
        f"{args.rounds}: {walls})"
    )
    # With a free core per process (the idle workers), the slowest part's CPU time is
    # its wall time: against the whole run's CPU time it bounds the gain from above.
    print(
        f"CPU seconds: whole {whole_cpu[0]:.1f}; parts {', '.join(f'{c:.1f}' for c in split_cpu)}"
        f" (sum {sum(split_cpu) / whole_cpu[0]:.2f}x the whole's; the slowest part "
        f"{max(split_cpu) / whole_cpu[0]:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="seams: frame side, px")
    parser.add_argument("--frames", type=int, default=48, help="seams: frames per clip")
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--warmups", default="0,4,8,16")
    parser.add_argument("--untracked-warmup", type=int, default=8)
    parser.add_argument("--clips", default="", help="comma-separated clip names")
    parser.add_argument("--crf", type=int, default=0, help="seams: the segments' H.264 CRF")
    parser.add_argument("--timing-frames", type=int, default=600)
    parser.add_argument("--timing-size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds")
    parser.add_argument("--only", choices=["seams", "time"], default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from benchmarks.common import machine  # the service's stack: not in the workers

    torch.set_num_threads(args.threads)
    print(machine())
    if args.only != "time":
        seams(args, ModelBackend({"full": build_pipeline(PipelineConfig(Device.cpu))}))
    if args.only != "seams":
        timing(args)


if __name__ == "__main__":
    main()

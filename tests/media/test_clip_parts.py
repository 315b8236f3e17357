"""A clip stylized in parts (`plan_parts`, `stylize_frames(part=...)`, `join_parts`), as
separate workers would run them: the joined result has the single run's frames, timestamps and
audio, its frames after each seam stay close to the single run's, and a part resumes from its
checkpoint."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from devkit.images import encode, psnr, random_image
from devkit.videos import decode_frames, make_video
from media.clip import (
    WHOLE_CLIP,
    Clip,
    ClipSettings,
    ClipState,
    ClipStopped,
    FrameRange,
    ModelBackend,
    join,
    join_parts,
    open_clip,
    plan_parts,
    stylize_frames,
    track_camera,
)
from media.controls import check_controls
from media.imaging import ImageLimits
from media.video import SegmentWriter, frame_tensor, read_frames
from models.model import StyleMix
from models.pipeline import Pipeline
from models.video import START_PHASES, Placement, placed_mix, style_distance
from models.weights import load_model

# A segment per frame (checkpoint_s=0): the join handles many segments per part.
SETTINGS = ClipSettings(
    crf=18, preset="veryfast", checkpoint_s=0.0, limits=ImageLimits(10**7, 10**6)
)
FRAMES = 18
# PSNR (dB) a split run's frames keep against the single run's, at and after each seam (49 dB
# and more with a warm-up of 4 frames, 42 with none, when written): a stabiliser started
# without the single run's grid and strokes stays below (about 37 dB when written,
# `test_the_seams_stay_close_only_with_the_tracked_state`).
SEAM_PSNR = 40.0


@pytest.mark.parametrize(
    ("frames", "part_frames", "expected"),
    [
        (0, 100, [(0, None)]),
        (199, 100, [(0, None)]),  # shorter than two parts: one
        (10**6, 0, [(0, None)]),  # 0: never split
        (200, 100, [(0, 100), (100, None)]),
        (601, 200, [(0, 200), (200, 401), (401, None)]),
        (799, 200, [(0, 266), (266, 533), (533, None)]),
    ],
)
def test_plan_parts(frames: int, part_frames: int, expected: list[tuple[int, int | None]]) -> None:
    plan = plan_parts(frames, part_frames, warmup=5)
    assert [(part.start, part.end) for part in plan] == expected
    if len(plan) == 1:
        assert plan == [WHOLE_CLIP]
        return
    assert all(part.warmup == 5 for part in plan)
    lengths = [(part.end or frames) - part.start for part in plan]
    assert min(lengths) >= part_frames and max(lengths) - min(lengths) <= 1


def test_a_long_clip_has_at_most_max_parts_longer_ones() -> None:
    plan = plan_parts(18_000, 300, warmup=5, max_parts=8)
    assert len(plan) == 8 and plan[0].start == 0 and plan[-1].end is None
    assert [part.start for part in plan] == [i * 2250 for i in range(8)]


@pytest.mark.parametrize(("start", "end", "warmup"), [(-1, None, 0), (5, 5, 0), (0, 3, -1)])
def test_not_a_frame_range(start: int, end: int | None, warmup: int) -> None:
    with pytest.raises(ValueError, match="not a frame range"):
        FrameRange(start, end, warmup)


@pytest.fixture(scope="module")
def backend(reference_weights: tuple[Path, Path]) -> ModelBackend:
    return ModelBackend({"full": Pipeline(load_model(*reference_weights))})


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    folder = tmp_path_factory.mktemp("parts-input")
    video, style = folder / "clip.mp4", folder / "style.png"
    # A random picture panning 3 px a frame, with a tone: the grid phase changes every frame.
    video.write_bytes(make_video(frames=FRAMES, width=64, height=48, audio=True))
    style.write_bytes(encode(random_image(48, 48, seed=1911)))
    controls = check_controls(styles=1, content_size=0, style_size=48)
    return open_clip(video, [style], [], controls, limits=SETTINGS.limits)


def run(clip: Clip, backend: ModelBackend, work: Path, part: FrameRange, **kwargs) -> ClipState:
    work.mkdir(parents=True, exist_ok=True)
    return stylize_frames(
        clip.video, work, clip.params, clip.styles, backend, SETTINGS, part=part, **kwargs
    )


@pytest.fixture(scope="module")
def whole(clip: Clip, backend: ModelBackend, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("whole")
    state = run(clip, backend, folder / "work", WHOLE_CLIP)
    join(state, clip.video, folder / "whole.mp4", clip.params)
    return folder / "whole.mp4"


def split_run(clip: Clip, backend: ModelBackend, folder: Path, warmup: int) -> Path:
    plan = plan_parts(FRAMES, FRAMES // 3, warmup)
    assert len(plan) == 3
    states = [run(clip, backend, folder / f"part-{i}", part) for i, part in enumerate(plan)]
    joined = folder / f"split-{warmup}.mp4"
    join_parts(states, clip.video, joined, clip.params)
    return joined


def timing(path: Path) -> tuple[list[Fraction], list[tuple[Fraction, bytes]]]:
    """Each video frame's presentation time (s), and each audio packet's time and bytes."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        frames, sound = [], []
        for packet in container.demux(video, audio):
            if packet.size == 0:
                continue
            if packet.stream.type == "video":
                frames.append(packet.pts * video.time_base)
            else:
                sound.append((packet.pts * audio.time_base, bytes(packet)))
    return sorted(frames), sound


def test_a_split_run_joined_is_the_whole_run(
    clip: Clip, backend: ModelBackend, whole: Path, tmp_path: Path
) -> None:
    """Every frame with the single run's timestamp, the same audio, and the frames close to
    the single run's on both sides of each seam."""
    joined = split_run(clip, backend, tmp_path, warmup=4)
    one, other = decode_frames(whole.read_bytes()), decode_frames(joined.read_bytes())
    assert len(one) == len(other) == FRAMES
    whole_pts, whole_audio = timing(whole)
    split_pts, split_audio = timing(joined)
    assert split_pts == whole_pts and len(set(split_pts)) == FRAMES
    assert whole_audio and split_audio == whole_audio
    # The first part is the single run's beginning; the others differ by what a warm-up of
    # 4 frames has not settled, never by a visible jump.
    assert min(psnr(a / 255, b / 255) for a, b in zip(one[:6], other[:6], strict=True)) > 45
    assert min(psnr(a / 255, b / 255) for a, b in zip(one, other, strict=True)) > SEAM_PSNR


def test_the_seams_stay_close_only_with_the_tracked_state(
    clip: Clip, backend: ModelBackend, whole: Path, tmp_path: Path
) -> None:
    """The check above can fail: a part whose stabiliser starts fresh at its first frame (a
    file cut there: no camera tracked, no warm-up) draws the strokes on another grid."""
    seam = FRAMES // 3
    source = decode_frames(clip.video.read_bytes())[seam:]
    cut = tmp_path / "from-the-seam.mp4"
    writer = SegmentWriter(cut, source[0].shape[:2], Fraction(1, 12), Fraction(12), 0, "veryfast")
    for index, rgb in enumerate(source):
        writer.write(rgb, index)
    writer.close()
    fresh = run(replace(clip, video=cut), backend, tmp_path / "fresh", WHOLE_CLIP)
    restarted = [f for s in fresh.segments for f in decode_frames(s.path.read_bytes())]
    single = decode_frames(whole.read_bytes())[seam:]
    pairs = zip(single, restarted, strict=True)
    assert max(psnr(a / 255, b / 255) for a, b in pairs) < SEAM_PSNR


def test_a_part_resumes_from_its_checkpoint(
    clip: Clip, backend: ModelBackend, tmp_path: Path
) -> None:
    """The middle part stopped while it primes the stabiliser, then after two frames, and run
    again from each state: the frames of the uninterrupted part."""
    part = plan_parts(FRAMES, FRAMES // 3, warmup=4)[1]
    straight = run(clip, backend, tmp_path / "straight", part)
    assert straight.frames_done == part.end

    asked = iter(range(100))
    with pytest.raises(ClipStopped) as priming:
        run(clip, backend, tmp_path / "stopped", part, should_stop=lambda: next(asked) == 3)
    assert priming.value.state == ClipState()  # nothing written: what it was given

    checkpoints: list[ClipState] = []
    with pytest.raises(ClipStopped) as writing:
        run(
            clip,
            backend,
            tmp_path / "stopped",
            part,
            state=priming.value.state,
            should_stop=lambda: len(checkpoints) == 2,
            on_checkpoint=checkpoints.append,
        )
    stopped = writing.value.state
    assert stopped.frames_done == part.start + 2 and stopped.stabilizer is not None
    resumed = run(clip, backend, tmp_path / "stopped", part, state=stopped)
    assert resumed.frames_done == part.end
    assert [s.frames for s in resumed.segments] == [1] * (part.end - part.start)

    def frames(state: ClipState) -> list[np.ndarray]:
        return [f for s in state.segments for f in decode_frames(s.path.read_bytes())]

    pairs = zip(frames(straight), frames(resumed), strict=True)
    assert min(psnr(a / 255, b / 255) for a, b in pairs) > 40


def test_join_parts_refuses_a_missing_part(
    clip: Clip, backend: ModelBackend, tmp_path: Path
) -> None:
    first, _, last = plan_parts(FRAMES, FRAMES // 3, warmup=0)
    states = [
        run(clip, backend, tmp_path / name, part) for name, part in [("a", first), ("c", last)]
    ]
    with pytest.raises(ValueError, match="frames of"):
        join_parts(states, clip.video, tmp_path / "joined.mp4", clip.params)


def test_parts_from_one_tracking_pass(clip: Clip, backend: ModelBackend, tmp_path: Path) -> None:
    """Seeds from `track_camera` (the flow computed once for all parts): each part's frames
    are those of the part that tracked the camera itself from the clip's first frame."""
    parts = plan_parts(FRAMES, FRAMES // 3, warmup=2)
    seeds = list(track_camera(clip.video, clip.params, clip.styles, backend, SETTINGS, parts))
    assert [number for number, _ in seeds] == [0, 1, 2]
    assert seeds[0][1] == ClipState()  # the first part has nothing to track
    for (number, seed), part in zip(seeds[1:], parts[1:], strict=True):
        assert seed.frames_done == part.start - part.warmup and not seed.segments
        seeded = run(clip, backend, tmp_path / f"seeded-{number}", part, state=seed)
        itself = run(clip, backend, tmp_path / f"itself-{number}", part)
        assert seeded.frames_done == itself.frames_done == (part.end or FRAMES)
        one = [f for s in seeded.segments for f in decode_frames(s.path.read_bytes())]
        other = [f for s in itself.segments for f in decode_frames(s.path.read_bytes())]
        assert min(psnr(a / 255, b / 255) for a, b in zip(one, other, strict=True)) > 45
    late = replace(seeds[1][1], frames_done=parts[1].start + 1)
    with pytest.raises(ValueError, match="a seed of frame"):
        run(clip, backend, tmp_path / "late", parts[1], state=late)


def test_every_run_of_a_clip_starts_its_shots_at_the_phase_the_first_frame_chose(
    clip: Clip, backend: ModelBackend, tmp_path: Path
) -> None:
    """The whole run, each part and each part from a seed choose the same grid phase on the
    clip's first frame: the phase whose stylization's relu4_1 statistics lie closest to the
    style's (otherwise a part would draw on another grid than the part before it)."""
    first = next(read_frames(clip.video, SETTINGS.limits.max_image_pixels))
    content = frame_tensor(first, clip.params.controls.content_size, clip.params.controls.crop)
    mean, std = backend.style_statistics(clip.styles.styles[0], None, None)
    mix = StyleMix(mean=mean, std=std, weights=torch.ones(1))
    fits = {}
    for phase in START_PHASES:
        placement = Placement.shift(tuple(content.shape[-2:]), phase)
        canvas = placement.place_frame(content, "lanczos")
        stylized = placement.back(backend.stylize(canvas, placed_mix(mix, placement), None))
        fits[phase] = style_distance(backend.style_statistics(stylized, None, None), mix)
    best = min(fits, key=fits.__getitem__)
    parts = plan_parts(FRAMES, FRAMES // 3, warmup=2)
    seeds = list(track_camera(clip.video, clip.params, clip.styles, backend, SETTINGS, parts))
    states = [run(clip, backend, tmp_path / "whole", WHOLE_CLIP)]
    states += [run(clip, backend, tmp_path / f"part-{i}", part) for i, part in enumerate(parts)]
    states += [seed for _, seed in seeds[1:]]
    for state in states:
        assert state.stabilizer is not None
        assert tuple(state.stabilizer["start_phase"].tolist()) == best

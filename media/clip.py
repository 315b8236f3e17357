"""The clip runner: a video's frames stylized one at a time through a `FrameBackend` (the
service's engine, or networks this process loaded), stabilised by `models.video.Stabilizer`
unless asked not to, written as H.264 segments and joined into the MP4 (`media.video`).

No HTTP and no job store: `adain stylize clip.mp4 ...` calls `stylize_clip`; a video job
(`service.jobs.run`) calls `check_clip` when it is submitted and `stylize_frames` when it runs,
with its own checkpoints and progress in the store around it.

A long clip can be stylized in parts by separate processes (`plan_parts`, then
`stylize_frames(..., part=...)` per part, then `join_parts`): each part brings the stabiliser to
the state a single run has at its first frame before it writes anything. The camera's motion is
tracked from the clip's first frame (optical flow only, no network), so the network's grid lies
where a single run puts it, and the last `warmup` frames before the part are stylized but not
written, so the propagated strokes are there too (docs/video.md, "One clip in parts").
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from media.controls import StyleControls, check_controls
from media.defaults import (
    CHECKPOINT_S,
    DEFAULT_STABILITY,
    JOB_SPLIT_FRAMES,
    MAX_IMAGE_PIXELS,
    MAX_OUTPUT_PIXELS,
    MAX_PARTS,
    OWN_SIZE_LIMIT,
    SPLIT_WARMUP_FRAMES,
    VIDEO_CRF,
    VIDEO_PRESET,
)
from media.imaging import ImageLimits, StyleInput, prepare_masks, prepare_style
from media.video import (
    Segment,
    SegmentWriter,
    VideoInfo,
    VideoLimits,
    check_cost,
    check_output_size,
    finalize,
    frame_tensor,
    output_size,
    probe,
    read_frames,
    tensor_to_rgb,
)
from models.errors import DomainError, InvalidInputError
from models.model import Masks, StyleMix
from models.pipeline import Pipeline

if TYPE_CHECKING:
    from models.video import Placement, StabilizerConfig, Stylize

# Suffixes the command takes as videos (anything else is an image for `adain stylize`); a GIF of
# one frame is a still image.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".avi", ".3gp"})
# What the command writes a video as: an MP4.
VIDEO_OUTPUT_SUFFIXES = frozenset({".mp4", ".m4v"})


class FrameBackend(Protocol):
    """The networks, for one frame at a time. `model`: one of `models` (the default first),
    as `StyleControls.model` names it once checked."""

    @property
    def models(self) -> list[str]: ...

    def style_statistics(
        self, style: Tensor, recolour_to: Tensor | None, model: str | None
    ) -> tuple[Tensor, Tensor]:
        """relu4_1 (mean, std) (1, C, 1, 1) of a style (1, 3, H, W), recoloured first (CORAL)
        to `recolour_to`'s colours when given."""
        ...

    def stylize(self, content: Tensor, mix: StyleMix, model: str | None) -> Tensor:
        """(1, 3, H, W) in [0, 1] -> stylized (1, 3, H, W) in [0, 1]."""
        ...


class ModelBackend:
    """A `FrameBackend` on pipelines of this process (command, worker), by model name, the
    first the default."""

    def __init__(self, pipelines: Mapping[str, Pipeline]) -> None:
        self.pipelines = dict(pipelines)

    @property
    def models(self) -> list[str]:
        return list(self.pipelines)

    def pipeline(self, model: str | None) -> Pipeline:
        return self.pipelines[model or self.models[0]]

    def style_statistics(
        self, style: Tensor, recolour_to: Tensor | None, model: str | None
    ) -> tuple[Tensor, Tensor]:
        pipeline = self.pipeline(model)
        with torch.inference_mode():
            mean, std = pipeline.style_statistics(
                style.to(pipeline.device),
                None if recolour_to is None else recolour_to.to(pipeline.device),
            )
        return mean.float().cpu(), std.float().cpu()

    def stylize(self, content: Tensor, mix: StyleMix, model: str | None) -> Tensor:
        pipeline = self.pipeline(model)
        with torch.inference_mode():
            return pipeline.stylize_batch(content.to(pipeline.device), [mix]).cpu()


@dataclass(frozen=True)
class ClipParams:
    """What a clip is stylized with: the checked controls, `stabilize`, and what `check_clip`
    learnt of the video. A job stores it in its record (`record`) and reads it back checked
    again (`from_record`): a record is an entry point too."""

    controls: StyleControls
    style_fields: list[str]  # the form field (or path) of each style, for error messages
    stabilize: bool
    rate: str  # Fraction as text: the average frame rate
    time_base: str  # Fraction as text: of the input's timestamps, kept by the output
    upright_size: list[int]  # (width, height) of the frames after rotation: the masks' size
    audio: str | None = None
    # ADAIN_MAX_VIDEO_FRAME_PIXELS when it was checked: no decoded frame may exceed it (None,
    # records from before: the image limit).
    max_frame_pixels: int | None = None
    # With `stabilize`: the flicker/detail trade-off, 0 (each frame on its own) to 1 (the most
    # stable; `models.video.with_strength`).
    stability: float = DEFAULT_STABILITY

    def __post_init__(self) -> None:
        if not 0 <= self.stability <= 1:
            raise InvalidInputError(
                f"stability: {self.stability} is not between 0 and 1", "stability"
            )

    def record(self) -> dict[str, Any]:
        """As job records store it (flat, the controls among the video's fields)."""
        controls = self.controls
        return {
            "style_fields": self.style_fields,
            "masks": controls.masks,
            "weights": list(controls.weights),
            "alpha": controls.alpha,
            "preserve_color": controls.preserve_color,
            "content_size": controls.content_size,
            "style_size": controls.style_size,
            "crop": controls.crop,
            "stabilize": self.stabilize,
            "rate": self.rate,
            "time_base": self.time_base,
            "upright_size": self.upright_size,
            "audio": self.audio,
            "model": controls.model,
            "max_frame_pixels": self.max_frame_pixels,
            "stability": self.stability,
        }

    @classmethod
    def from_record(cls, params: Mapping[str, Any], models: Sequence[str]) -> ClipParams:
        """A stored job's parameters, its controls checked against the `models` the running
        process loaded (the default first)."""
        controls = check_controls(
            styles=len(params["style_fields"]),
            masks=params["masks"],
            weights=params["weights"],
            models=models,
            alpha=params["alpha"],
            preserve_color=params["preserve_color"],
            content_size=params["content_size"],
            style_size=params["style_size"],
            crop=params["crop"],
            model=params.get("model"),
        )
        return cls(
            controls,
            list(params["style_fields"]),
            params["stabilize"],
            params["rate"],
            params["time_base"],
            list(params["upright_size"]),
            params.get("audio"),
            params.get("max_frame_pixels"),
            params.get("stability", DEFAULT_STABILITY),
        )


@dataclass(frozen=True)
class ClipSettings:
    """The service builds it from its settings (`Settings.clip_settings`); the command takes
    these defaults, which are the settings' defaults too (`media.defaults`)."""

    crf: int = VIDEO_CRF
    preset: str = VIDEO_PRESET
    checkpoint_s: float = CHECKPOINT_S  # work lost at most to a kill; each starts a new GOP
    limits: ImageLimits = field(
        default_factory=lambda: ImageLimits(MAX_IMAGE_PIXELS, MAX_OUTPUT_PIXELS)
    )


@dataclass(frozen=True)
class ClipStyles:
    """A clip's styles (1, 3, H, W) and masks, decoded and checked."""

    styles: list[Tensor]
    masks: Masks | None


@dataclass(frozen=True)
class ClipState:
    """How far a clip's run is: frames done, the closed segments and the stabiliser's state
    after the last (what a checkpoint keeps)."""

    frames_done: int = 0
    segments: tuple[Segment, ...] = ()
    stabilizer: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class FrameRange:
    """The frames [start, end) of a clip (end None: to its last frame) that one run writes;
    a stabilised run first stylizes the `warmup` frames before `start` without writing them."""

    start: int = 0
    end: int | None = None
    warmup: int = SPLIT_WARMUP_FRAMES

    def __post_init__(self) -> None:
        if self.start < 0 or self.warmup < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"not a frame range: {self}")


WHOLE_CLIP = FrameRange()


def plan_parts(
    frames: int,
    part_frames: int = JOB_SPLIT_FRAMES,
    warmup: int = SPLIT_WARMUP_FRAMES,
    max_parts: int = MAX_PARTS,
) -> list[FrameRange]:
    """A clip of `frames` frames (as `probe` counts them) in parts of at least `part_frames`
    (ADAIN_JOB_SPLIT_FRAMES), at most `max_parts` of them, as even as whole frames allow: a clip
    shorter than two parts, or `part_frames` 0, is one part. The last part runs to the clip's
    end, whatever the count. (Each part tracks the camera from the clip's start: with more
    parts, the last ones would spend longer tracking than stylizing.)"""
    count = min(frames // part_frames, max_parts) if part_frames > 0 else 1
    if count < 2:
        return [WHOLE_CLIP]
    bounds = [round(i * frames / count) for i in range(count)]
    ends: list[int | None] = [*bounds[1:], None]
    return [FrameRange(start, end, warmup) for start, end in zip(bounds, ends, strict=True)]


class ClipStopped(Exception):  # noqa: N818 (a signal, not a failure)
    """`should_stop` said so between two frames; `state` is the last checkpoint's."""

    def __init__(self, state: ClipState) -> None:
        super().__init__("stopped")
        self.state = state


def decode_styles(
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    upright_size: tuple[int, int],
    grid: tuple[int, int],
    style_size: int,
    crop: bool,
    limits: ImageLimits,
) -> ClipStyles:
    """Each style and mask decoded as /stylize decodes them; the masks for frames of
    `upright_size` (width, height) stylized at `grid` (H, W)."""
    prepared = [prepare_style(style, style_size, crop, limits) for style in styles]
    decoded = None
    if masks:
        decoded = prepare_masks(tuple(masks), len(styles), upright_size, grid, limits)
    return ClipStyles(prepared, decoded)


def save_styles(styles: ClipStyles, path: Path) -> None:
    """The decoded styles and masks in a file (a job's, at submission), exactly: a style's
    pixels as the 8-bit values it was decoded from, the masks as they are."""
    masks = styles.masks
    torch.save(
        {
            "styles": [style.mul(255).round_().to(torch.uint8) for style in styles.styles],
            "masks": None if masks is None else masks.values,
            "binary": masks is not None and masks.binary,
        },
        path,
    )


def load_styles(path: Path) -> ClipStyles:
    """What `save_styles` wrote: the job's styles, not decoded a second time."""
    saved = torch.load(path, weights_only=True)
    masks = None if saved["masks"] is None else Masks(saved["masks"], saved["binary"])
    return ClipStyles([style.float().div_(255) for style in saved["styles"]], masks)


def check_clip(
    video: Path,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    controls: StyleControls,
    video_limits: VideoLimits,
    limits: ImageLimits,
) -> tuple[VideoInfo, ClipStyles]:
    """The video (`probe`), its output size, each style and each mask, checked by decoding
    them: everything the run will read."""
    info = probe(video, video_limits)
    check_cost(info, controls.content_size, controls.crop, video_limits.max_job_pixels)
    return info, check_inputs(info, styles, masks, controls, limits)


def check_inputs(
    info: VideoInfo,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    controls: StyleControls,
    limits: ImageLimits,
) -> ClipStyles:
    """The output size of the probed video, and its styles and masks decoded."""
    size, crop = controls.content_size, controls.crop
    check_output_size(info, size, crop, limits.max_output_pixels)
    grid = output_size(info, size, crop)
    upright = (info.width, info.height)
    return decode_styles(styles, masks, upright, grid, controls.style_size, crop, limits)


def clip_params(
    info: VideoInfo,
    styles: Sequence[StyleInput],
    controls: StyleControls,
    stabilize: bool,
    video_limits: VideoLimits,
    stability: float = DEFAULT_STABILITY,
) -> ClipParams:
    return ClipParams(
        controls=controls,
        style_fields=[style.field for style in styles],
        stabilize=stabilize,
        rate=str(info.rate),
        time_base=str(info.time_base),
        upright_size=[info.width, info.height],
        audio=info.audio_codec,
        max_frame_pixels=video_limits.max_frame_pixels,
        stability=stability,
    )


def _mix_maker(
    params: ClipParams, styles: ClipStyles, backend: FrameBackend
) -> Callable[[Tensor], StyleMix]:
    """content frame -> its StyleMix. Without colour preservation the styles' statistics are
    computed once; with it each style is recoloured to each frame, as /stylize does per image."""
    controls = params.controls
    weights, model = controls.weight_tensor, controls.model

    def mix_of(stats: list[tuple[Tensor, Tensor]]) -> StyleMix:
        return StyleMix(
            torch.cat([m for m, _ in stats]),
            torch.cat([s for _, s in stats]),
            weights,
            styles.masks,
            controls.alpha,
        )

    if controls.preserve_color:
        return lambda content: mix_of(
            [backend.style_statistics(s, content, model) for s in styles.styles]
        )
    fixed = mix_of([backend.style_statistics(s, None, model) for s in styles.styles])
    return lambda content: fixed


def _placed_stylize(
    params: ClipParams,
    styles: ClipStyles,
    backend: FrameBackend,
    mix_for: Callable[[Tensor], StyleMix],
) -> Stylize:
    """The per-frame stylize of a frame placed on the stabiliser's canvas (`mix_for`: the
    frame's mix, `_mix_maker`)."""
    from models.video import placed_mix

    def stylize(content: Tensor, placement: Placement) -> Tensor:
        # Colour preservation recolours the styles to the frame's own pixels, not to a shift's
        # mirrored padding (as AdaIN's content statistics, `placed_mix`).
        box = placement.frame_box()
        frame = content if box is None else content[..., box[0] : box[1], box[2] : box[3]]
        mix = placed_mix(mix_for(frame), placement)
        return backend.stylize(content, mix, params.controls.model)

    return stylize


def _start_phase(
    content: Tensor, params: ClipParams, styles: ClipStyles, backend: FrameBackend
) -> tuple[int, int]:
    """The grid phase a clip's shots start at, chosen on its first frame (`content`) by the
    stylization's distance to the styles (`models.video.choose_start_phase`); (0, 0) where
    that distance does not measure the fit: under masks, or with alpha below 1."""
    if not params.stabilize or styles.masks is not None or params.controls.alpha != 1:
        return (0, 0)
    from models.video import choose_start_phase, style_distance

    mix_for = _mix_maker(params, styles, backend)
    model = params.controls.model

    def fit(frame: Tensor, stylized: Tensor) -> float:
        return style_distance(backend.style_statistics(stylized, None, model), mix_for(frame))

    return choose_start_phase(content, _placed_stylize(params, styles, backend, mix_for), fit)


def _frame_step(
    params: ClipParams,
    styles: ClipStyles,
    backend: FrameBackend,
    state: dict[str, Tensor] | None,
    *,
    blend: bool = True,
    start_phase: tuple[int, int] = (0, 0),
) -> Callable[[Tensor], Tensor]:
    """content frame -> output frame: the stabiliser around the per-frame stylize, or that
    alone with `stabilize=false`. `blend` false: nothing propagated into this frame (the
    first one stylized after `_camera_tracker`). `start_phase`: where a fresh stabiliser's
    shots start (`_start_phase`; a `state` holds its own)."""
    mix_for = _mix_maker(params, styles, backend)
    if not params.stabilize:
        return lambda content: backend.stylize(content, mix_for(content), params.controls.model)
    from models.video import Stabilizer

    stylize = _placed_stylize(params, styles, backend, mix_for)
    config = stabilizer_config(params, backend) if blend else _unblended()
    stabilizer = Stabilizer(stylize, config, start_phase)
    if state is not None:
        stabilizer.load_state_dict(state)
    return stabilizer


def stabilizer_config(params: ClipParams, backend: FrameBackend) -> StabilizerConfig:
    """The stabiliser a clip is stylized with: the one for its network (`models.video.for_model`:
    the model it names, else the backend's default) at its strength."""
    from models.video import StabilizerConfig, for_model, with_strength

    model = params.controls.model or backend.models[0]
    return with_strength(for_model(StabilizerConfig(), model), params.stability)


def _unblended() -> StabilizerConfig:
    """The stabiliser's default config, propagating nothing: it tracks the camera alone."""
    from models.video import StabilizerConfig

    config = StabilizerConfig()
    return replace(config, blending=replace(config.blending, weight=0.0))


def _state_of(step: Callable[[Tensor], Tensor] | None) -> dict[str, Tensor] | None:
    """The stabiliser's state (None: no stabiliser, or none yet)."""
    state_dict = getattr(step, "state_dict", None)
    return state_dict() if state_dict else None


def _camera_tracker(
    state: dict[str, Tensor] | None = None, start_phase: tuple[int, int] = (0, 0)
) -> Callable[[Tensor], Tensor]:
    """The stabiliser without the network (its network input comes back as its output):
    the camera, the second layer and the cuts tracked as a single run tracks them, at the
    cost of the optical flow, its shots starting at `start_phase`; from a tracker's `state`
    when given. Its output is not a stylization, so the stabiliser that takes over from its
    state must not propagate it (`_frame_step(blend=False)`)."""
    from models.video import Stabilizer

    config = _unblended()
    # Where the frame lies on the network's input changes nothing that is tracked: the
    # cheapest placement, never resampled.
    tracking = replace(config.tracking, subpixel=False, resample="nearest")
    tracker = Stabilizer(
        lambda canvas, placement: canvas, replace(config, tracking=tracking), start_phase
    )
    if state is not None:
        tracker.load_state_dict(state)
    return tracker


def _primes(params: ClipParams, part: FrameRange) -> bool:
    """Whether a part's first run brings the stabiliser to a single run's state first."""
    return params.stabilize and part.start > 0


def track_camera(
    source: Path,
    params: ClipParams,
    styles: ClipStyles,
    backend: FrameBackend,
    settings: ClipSettings,
    parts: Sequence[FrameRange],
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[int, ClipState]]:
    """One pass of the camera tracker over the clip, for parts in order: (part number, its
    seed) as soon as the pass reaches the part's warm-up, the seed being the state the part's
    own tracking reaches there. A part's first run from its seed
    (`stylize_frames(part=..., state=seed)`) starts tracking there instead of at the clip's
    first frame: the flow of the clip computed once, not once per part. Stops (returns)
    early when `should_stop()` says so: the parts not yielded then have no seed yet (a part
    also runs without one, tracking from the clip's first frame itself). The styles and the
    networks choose the grid phase the shots start at on the first frame (`_start_phase`),
    as every part does."""
    tracker: Callable[[Tensor], Tensor] | None = None
    pending = list(enumerate(parts))
    max_pixels = params.max_frame_pixels or settings.limits.max_image_pixels
    for index, frame in enumerate(read_frames(source, max_pixels)):
        while pending and (
            not _primes(params, pending[0][1])
            or index >= pending[0][1].start - pending[0][1].warmup
        ):
            number, _ = pending.pop(0)
            tracked = _state_of(tracker)
            yield number, ClipState() if tracked is None else ClipState(index, (), tracked)
        if not pending or should_stop():
            return
        content = frame_tensor(frame, params.controls.content_size, params.controls.crop)
        tracker = tracker or _camera_tracker(
            start_phase=_start_phase(content, params, styles, backend)
        )
        tracker(content)
    for number, _ in pending:  # past the clip's end: nothing to track, nor to write
        yield number, ClipState()


def stylize_frames(
    source: Path,
    work: Path,
    params: ClipParams,
    styles: ClipStyles,
    backend: FrameBackend,
    settings: ClipSettings,
    *,
    state: ClipState = ClipState(),
    part: FrameRange = WHOLE_CLIP,
    on_frame: Callable[[int], None] = lambda done: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_checkpoint: Callable[[ClipState], None] = lambda state: None,
) -> ClipState:
    """Stylizes the frames of `source` in `part` after `state.frames_done` into segments in
    `work` and returns the final state. Every `settings.checkpoint_s` the open segment is
    closed and `on_checkpoint` hears the state; `on_frame(frames done)` (counted from the
    clip's first frame) before each frame, then `should_stop()`: true closes the segment and
    raises `ClipStopped`. A part's first run (`state` without segments: `ClipState()`, or a
    seed from `track_camera`) brings the stabiliser to the state a single run has at
    `part.start` first; `should_stop` is asked then too, and `ClipStopped` carries the state
    it was given."""
    segments = list(state.segments)
    done = max(state.frames_done, part.start)
    time_base, rate = Fraction(params.time_base), Fraction(params.rate)
    step: Callable[[Tensor], Tensor] | None = None
    writer: SegmentWriter | None = None
    first_pts = 0
    last_checkpoint = time.monotonic()
    # The frames before `done` that are run through the stabiliser without being written:
    # tracked from `track_from` (a seed's frame, or the first), stylized from `warm_from`
    # (none when resuming: the state has it).
    priming = _primes(params, part) and not segments
    seed = state.stabilizer if priming else None
    if seed is not None and state.frames_done > part.start:
        raise ValueError(f"a seed of frame {state.frames_done} for a part from {part.start}")
    warm_from = max(0, part.start - part.warmup) if priming else done
    track_from = (state.frames_done if seed is not None else 0) if priming else done
    tracker = None if seed is None else _camera_tracker(seed)

    closed = ClipState(done, tuple(segments), state.stabilizer)  # the last checkpoint's

    def close_segment() -> ClipState:
        nonlocal writer, closed
        if writer is None:
            return closed
        writer.close()
        segments.append(Segment(writer.path, first_pts, writer.frames))
        writer = None
        closed = ClipState(done, tuple(segments), _state_of(step))
        on_checkpoint(closed)
        return closed

    def stylized(content: Tensor) -> Tensor:
        nonlocal step
        if step is not None:
            return step(content)
        tracked = _state_of(tracker)
        known = tracked or state.stabilizer
        # A fresh stabiliser (its stylization starts at the clip's first frame) chooses where
        # its shots start; a tracked or resumed one has it in its state.
        phase = (0, 0) if known else _start_phase(content, params, styles, backend)
        step = _frame_step(params, styles, backend, known, blend=not tracked, start_phase=phase)
        result = step(content)
        if tracked:  # the first stylized frame; the next ones propagate it
            step = _frame_step(params, styles, backend, _state_of(step))
        return result

    index = -1
    max_pixels = params.max_frame_pixels or settings.limits.max_image_pixels
    for index, frame in enumerate(read_frames(source, max_pixels)):
        if part.end is not None and index >= part.end:
            break
        if index < done:
            if index < track_from:
                continue
            if should_stop():
                raise ClipStopped(state)  # nothing written yet
            content = frame_tensor(frame, params.controls.content_size, params.controls.crop)
            if index < warm_from:  # the first is the clip's first frame
                tracker = tracker or _camera_tracker(
                    start_phase=_start_phase(content, params, styles, backend)
                )
                tracker(content)
            else:
                stylized(content)
            continue
        on_frame(done)
        if should_stop():
            raise ClipStopped(close_segment())
        content = frame_tensor(frame, params.controls.content_size, params.controls.crop)
        result = stylized(content)
        if writer is None:
            writer = SegmentWriter(
                work / f"segment-{index:06d}.mp4",
                tuple(content.shape[-2:]),
                time_base,
                rate,
                settings.crf,
                settings.preset,
            )
            first_pts = frame.pts
        writer.write(tensor_to_rgb(result), frame.pts)
        done = index + 1
        if time.monotonic() - last_checkpoint >= settings.checkpoint_s:
            close_segment()
            last_checkpoint = time.monotonic()
    final = close_segment()
    if part.start == 0 and (index + 1 == 0 or not final.segments):
        raise DomainError("video: no frame could be decoded", "video")
    return final


def join(state: ClipState, source: Path, output: Path, params: ClipParams) -> None:
    """The segments joined into `output`, with the input's timing and audio."""
    finalize(list(state.segments), source, output, Fraction(params.time_base))


def join_parts(parts: Sequence[ClipState], source: Path, output: Path, params: ClipParams) -> None:
    """The final states of a clip's parts (`plan_parts`, in order) joined into `output`, as
    `join` joins a single run's: every frame with its own timestamp, and the input's audio.
    Raises ValueError when the parts' frames do not follow on from each other."""
    segments = [segment for part in parts for segment in part.segments]
    if not segments:
        raise ValueError("no segment to join")
    written = sum(segment.frames for segment in segments)
    if written != parts[-1].frames_done or any(
        later.first_pts <= earlier.first_pts for earlier, later in pairwise(segments)
    ):
        raise ValueError(
            f"the parts hold {written} frames of {parts[-1].frames_done}, or out of order"
        )
    finalize(segments, source, output, Fraction(params.time_base))


def own_size(info: VideoInfo) -> int:
    """The command's default size of a video: its own, with the shorter side bounded."""
    return 0 if min(info.width, info.height) <= OWN_SIZE_LIMIT else OWN_SIZE_LIMIT


def is_video_file(path: Path) -> bool:
    """What the command takes as a video: a file with a video suffix, but not a GIF of one
    frame (a still image)."""
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in VIDEO_SUFFIXES:
        return False
    if suffix != ".gif":
        return True
    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) > 1
    except (UnidentifiedImageError, OSError):
        return True  # not a GIF Pillow reads: `probe` says what it is


@dataclass(frozen=True)
class Clip:
    """A video file and what to stylize it with, every input checked (`open_clip`)."""

    video: Path
    params: ClipParams
    styles: ClipStyles
    frames: int  # as the file declares them


def open_clip(
    video: Path,
    styles: Sequence[Path],
    masks: Sequence[Path],
    controls: StyleControls,
    *,
    own_size_unless_asked: bool = False,
    stabilize: bool = True,
    stability: float = DEFAULT_STABILITY,
    limits: ImageLimits = ClipSettings().limits,
) -> Clip:
    """The command's clip: the video, its styles and masks read and checked, without a limit
    on the video's length. `own_size_unless_asked`: the video keeps its size (`own_size`)
    instead of `controls.content_size`."""
    unlimited = VideoLimits(
        max_frames=10**9,
        max_duration_s=float("inf"),
        max_frame_pixels=limits.max_image_pixels,
        max_job_pixels=10**18,
    )
    info = probe(video, unlimited)
    if own_size_unless_asked:
        controls = controls.model_copy(update={"content_size": own_size(info)})
    inputs = [StyleInput(path.read_bytes(), f"STYLES {path}") for path in styles]
    mask_data = [path.read_bytes() for path in masks]
    decoded = check_inputs(info, inputs, mask_data, controls, limits)
    params = clip_params(info, inputs, controls, stabilize, unlimited, stability)
    return Clip(video, params, decoded, info.frames)


def stylize_clip(
    clip: Clip,
    backend: FrameBackend,
    output: Path,
    settings: ClipSettings = ClipSettings(),
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """`adain stylize clip.mp4 style.jpg -o out.mp4`: the clip, in this process, on `backend`'s
    default network, into the MP4 `output`; returns the number of frames.
    `on_progress(frames done, frames total)` hears of every frame."""
    with tempfile.TemporaryDirectory(prefix="adain-video-") as folder:
        work = Path(folder)
        state = stylize_frames(
            clip.video,
            work,
            clip.params,
            clip.styles,
            backend,
            settings,
            on_frame=lambda done: on_progress(done, clip.frames),
        )
        produced = work / "result.mp4"
        join(state, clip.video, produced, clip.params)
        shutil.move(produced, output)
    on_progress(state.frames_done, state.frames_done)
    return state.frames_done

"""The clip runner: a video's frames stylized one at a time through a `FrameBackend` (the
service's engine, or networks this process loaded), stabilised by `models.video.Stabilizer`
unless asked not to, written as H.264 segments and joined into the MP4 (`media.video`).

No HTTP and no job store: `adain stylize clip.mp4 ...` calls `stylize_clip`; a video job
(`service.jobs.run`) calls `check_clip` when it is submitted and `stylize_frames` when it runs,
with its own checkpoints and progress in the store around it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from media.imaging import ImageLimits, StyleInput, check_counts, prepare_masks, prepare_style
from media.video import (
    Segment,
    SegmentWriter,
    VideoInfo,
    VideoLimits,
    check_output_size,
    even_size,
    finalize,
    frame_tensor,
    output_size,
    probe,
    read_frames,
    tensor_to_rgb,
)
from models import images
from models.errors import DomainError, InvalidInputError
from models.model import Masks, StyleMix
from models.pipeline import Pipeline

# Suffixes the command takes as videos (anything else is an image for `adain stylize`); a GIF of
# one frame is a still image.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".avi", ".3gp"})
# What the command writes a video as: an MP4.
VIDEO_OUTPUT_SUFFIXES = frozenset({".mp4", ".m4v"})
# The shorter side a video keeps at most when the command is given no --content-size.
OWN_SIZE_LIMIT = 1080


class FrameBackend(Protocol):
    """The networks, for one frame at a time. `model`: one of the backend's networks by name
    (`ClipParams.model`), None for its default; an unknown name is an `InvalidInputError`."""

    def style_statistics(
        self, style: Tensor, recolour_to: Tensor | None, model: str | None
    ) -> tuple[Tensor, Tensor]:
        """relu4_1 (mean, std) (1, C, 1, 1) of a style (1, 3, H, W), recoloured first (CORAL)
        to `recolour_to`'s colours when given."""
        ...

    def stylize(self, content: Tensor, mix: StyleMix, model: str | None) -> Tensor:
        """(1, 3, H, W) in [0, 1] -> stylized (1, 3, H, W) in [0, 1]."""
        ...


def check_loaded(model: str | None, loaded: list[str]) -> None:
    """A job's model must be one the process running it loaded: a job submitted to a service
    with other ADAIN_MODELS (or resumed after a change) fails naming the field."""
    if model is not None and model not in loaded:
        raise InvalidInputError(
            f"model: {model[:40]!r} is not loaded by the process running the job; it has "
            f"{', '.join(loaded)} (ADAIN_MODELS)",
            "model",
        )


class ModelBackend:
    """A `FrameBackend` on pipelines of this process (command, worker), by model name, the
    first the default."""

    def __init__(self, pipelines: Mapping[str, Pipeline]) -> None:
        self.pipelines = dict(pipelines)
        self.default = next(iter(self.pipelines))

    def pipeline(self, model: str | None) -> Pipeline:
        check_loaded(model, list(self.pipelines))
        return self.pipelines[model or self.default]

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
    """What a clip is stylized with (a job stores it in its record): /stylize's controls,
    `stabilize`, and what `check_clip` learnt of the video."""

    style_fields: list[str]  # the form field (or path) of each style, for error messages
    masks: int
    weights: list[float]  # normalised, one per style
    alpha: float
    preserve_color: bool
    content_size: int
    style_size: int
    crop: bool
    stabilize: bool
    rate: str  # Fraction as text: the average frame rate
    time_base: str  # Fraction as text: of the input's timestamps, kept by the output
    upright_size: list[int]  # (width, height) of the frames after rotation: the masks' size
    audio: str | None = None
    model: str | None = None  # a network the runner loaded (ADAIN_MODELS); None: its default


@dataclass(frozen=True)
class ClipSettings:
    crf: int = 18
    preset: str = "medium"
    checkpoint_s: float = 10.0  # work lost at most to a kill; each checkpoint starts a new GOP
    limits: ImageLimits = field(default_factory=lambda: ImageLimits(36_000_000, 7680 * 4320))


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


def styles_for(
    params: ClipParams, styles: Sequence[StyleInput], masks: Sequence[bytes], limits: ImageLimits
) -> ClipStyles:
    """`decode_styles` for the clip `params` describe."""
    width, height = params.upright_size
    grid = even_size(*images.prepared_size(width, height, params.content_size, params.crop))
    return decode_styles(
        styles, masks, (width, height), grid, params.style_size, params.crop, limits
    )


def check_clip(
    video: Path,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    content_size: int,
    style_size: int,
    crop: bool,
    video_limits: VideoLimits,
    limits: ImageLimits,
) -> tuple[VideoInfo, ClipStyles]:
    """The video (`probe`), its output size, each style and each mask, checked by decoding
    them: everything the run will read."""
    info = probe(video, video_limits)
    return info, check_inputs(info, styles, masks, content_size, style_size, crop, limits)


def check_inputs(
    info: VideoInfo,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    content_size: int,
    style_size: int,
    crop: bool,
    limits: ImageLimits,
) -> ClipStyles:
    """The output size of the probed video, and its styles and masks decoded."""
    check_output_size(info, content_size, crop, limits.max_output_pixels)
    grid = output_size(info, content_size, crop)
    return decode_styles(styles, masks, (info.width, info.height), grid, style_size, crop, limits)


def clip_params(
    info: VideoInfo,
    styles: Sequence[StyleInput],
    n_masks: int,
    *,
    weights: list[float],
    alpha: float,
    preserve_color: bool,
    content_size: int,
    style_size: int,
    crop: bool,
    stabilize: bool,
    model: str | None = None,
) -> ClipParams:
    return ClipParams(
        style_fields=[style.field for style in styles],
        masks=n_masks,
        weights=weights,
        alpha=alpha,
        preserve_color=preserve_color,
        content_size=content_size,
        style_size=style_size,
        crop=crop,
        stabilize=stabilize,
        rate=str(info.rate),
        time_base=str(info.time_base),
        upright_size=[info.width, info.height],
        audio=info.audio_codec,
        model=model,
    )


def _mix_maker(
    params: ClipParams, styles: ClipStyles, backend: FrameBackend
) -> Callable[[Tensor], StyleMix]:
    """content frame -> its StyleMix. Without colour preservation the styles' statistics are
    computed once; with it each style is recoloured to each frame, as /stylize does per image."""
    weights = torch.tensor(params.weights)

    def mix_of(stats: list[tuple[Tensor, Tensor]]) -> StyleMix:
        return StyleMix(
            torch.cat([m for m, _ in stats]),
            torch.cat([s for _, s in stats]),
            weights,
            styles.masks,
            params.alpha,
        )

    if params.preserve_color:
        return lambda content: mix_of(
            [backend.style_statistics(s, content, params.model) for s in styles.styles]
        )
    fixed = mix_of([backend.style_statistics(s, None, params.model) for s in styles.styles])
    return lambda content: fixed


def _frame_step(
    params: ClipParams,
    styles: ClipStyles,
    backend: FrameBackend,
    state: dict[str, Tensor] | None,
) -> Callable[[Tensor], Tensor]:
    """content frame -> output frame: the stabiliser around the per-frame stylize, or that
    alone with `stabilize=false`."""
    mix_for = _mix_maker(params, styles, backend)
    if not params.stabilize:
        return lambda content: backend.stylize(content, mix_for(content), params.model)
    from models.video import Placement, Stabilizer, placed_masks  # only for stabilised clips

    def stylize(content: Tensor, placement: Placement) -> Tensor:
        mix = mix_for(content)
        if mix.masks is not None:  # the masks go where the stabiliser puts the frame
            mix = replace(mix, masks=placed_masks(mix.masks, placement))
        return backend.stylize(content, mix, params.model)

    stabilizer = Stabilizer(stylize)
    if state is not None:
        stabilizer.load_state_dict(state)
    return stabilizer


def stylize_frames(
    source: Path,
    work: Path,
    params: ClipParams,
    styles: ClipStyles,
    backend: FrameBackend,
    settings: ClipSettings,
    *,
    state: ClipState = ClipState(),
    on_frame: Callable[[int], None] = lambda done: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_checkpoint: Callable[[ClipState], None] = lambda state: None,
) -> ClipState:
    """Stylizes the frames of `source` after `state.frames_done` into segments in `work` and
    returns the final state. Every `settings.checkpoint_s` the open segment is closed and
    `on_checkpoint` hears the state; `on_frame(frames done)` before each frame, then
    `should_stop()`: true closes the segment and raises `ClipStopped`."""
    segments = list(state.segments)
    done = state.frames_done
    time_base, rate = Fraction(params.time_base), Fraction(params.rate)
    step: Callable[[Tensor], Tensor] | None = None
    writer: SegmentWriter | None = None
    first_pts = 0
    last_checkpoint = time.monotonic()

    def close_segment() -> ClipState:
        nonlocal writer
        if writer is None:
            return ClipState(done, tuple(segments), state.stabilizer)
        writer.close()
        segments.append(Segment(writer.path, first_pts, writer.frames))
        writer = None
        state_dict = getattr(step, "state_dict", None)
        closed = ClipState(done, tuple(segments), state_dict() if state_dict else None)
        on_checkpoint(closed)
        return closed

    index = -1
    for index, frame in enumerate(read_frames(source)):
        if index < done:
            continue
        on_frame(done)
        if should_stop():
            raise ClipStopped(close_segment())
        content = frame_tensor(frame, params.content_size, params.crop)
        if step is None:
            step = _frame_step(params, styles, backend, state.stabilizer)
        result = step(content)
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
    if index + 1 == 0 or not final.segments:
        raise DomainError("video: no frame could be decoded", "video")
    return final


def join(state: ClipState, source: Path, output: Path, params: ClipParams) -> None:
    """The segments joined into `output`, with the input's timing and audio."""
    finalize(list(state.segments), source, output, Fraction(params.time_base))


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
    *,
    weights: list[float] | None,
    masks: Sequence[Path] = (),
    alpha: float = 1.0,
    preserve_color: bool = False,
    content_size: int | None = None,
    style_size: int = 512,
    crop: bool = False,
    stabilize: bool = True,
    limits: ImageLimits = ClipSettings().limits,
) -> Clip:
    """The command's clip: the video, its styles and masks read and checked, without a limit
    on the video's length. `content_size` None keeps the video's size (`own_size`)."""
    normalised = check_counts(len(styles), len(masks), weights).tolist()
    unlimited = VideoLimits(
        max_frames=10**9, max_duration_s=float("inf"), max_frame_pixels=limits.max_image_pixels
    )
    info = probe(video, unlimited)
    size = own_size(info) if content_size is None else content_size
    inputs = [StyleInput(path.read_bytes(), f"STYLES {path}") for path in styles]
    mask_data = [path.read_bytes() for path in masks]
    decoded = check_inputs(info, inputs, mask_data, size, style_size, crop, limits)
    params = clip_params(
        info,
        inputs,
        len(mask_data),
        weights=normalised,
        alpha=alpha,
        preserve_color=preserve_color,
        content_size=size,
        style_size=style_size,
        crop=crop,
        stabilize=stabilize,
    )
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

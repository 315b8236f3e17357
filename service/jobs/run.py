"""`run_job`: THE video job function. It reads the job from a `JobStore`, stylizes its frames
through a `FrameBackend` (the service's engine, or a model a worker process loaded itself),
stabilised by `models.video.Stabilizer` unless the job says `stabilize=false`, and writes the
result into the store. No FastAPI, no engine: any process with the store's folder can run it.

Resumable: every `checkpoint_s` of work the open segment is closed and a checkpoint stored
(frames done, the segments, the stabiliser's state); a process killed mid-job and started again
resumes from the last checkpoint and ends with every frame. Between frames it checks whether the
job was canceled (the store says so) or the process is stopping (`should_stop`: the job stays
`running` with a fresh checkpoint, for the next start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from models.errors import DomainError, InvalidInputError, error_body
from models.model import Masks, StyleMix
from models.pipeline import Pipeline
from service.imaging import ImageLimits
from service.jobs.store import Checkpoint, JobRecord, JobStatus, JobStore
from service.stylizer import StyleInput, prepare_masks, prepare_style
from service.video import Segment, SegmentWriter, finalize, frame_tensor, read_frames, tensor_to_rgb

log = logging.getLogger("service.jobs")

PROGRESS_EVERY_S = 0.25  # at most this often a progress report rewrites the record


class FrameBackend(Protocol):
    """The networks, for one frame at a time. `model`: one of the backend's networks by name
    (`JobParams.model`), None for its default; an unknown name is an `InvalidInputError`."""

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
class JobParams:
    """What a job was asked for (stored in its record): /stylize's controls, `stabilize`, and
    what the submission learnt of the video. The styles and masks are files of its inputs."""

    style_fields: list[str]  # the form field of each style, for error messages
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
    # ADAIN_MAX_VIDEO_FRAME_PIXELS when it was submitted: no decoded frame may exceed it
    # (None, records from before: the image limit).
    max_frame_pixels: int | None = None


@dataclass(frozen=True)
class JobSettings:
    crf: int = 18
    preset: str = "medium"
    checkpoint_s: float = 10.0  # work lost at most to a kill; each checkpoint starts a new GOP
    limits: ImageLimits = field(default_factory=lambda: ImageLimits(36_000_000, 7680 * 4320))


class JobCanceled(Exception):  # noqa: N818 (a signal, not a failure)
    """The store says the job was canceled: stop, remove the partial output."""


class JobInterrupted(Exception):  # noqa: N818
    """The process is stopping: checkpoint and leave the job for the next start."""


@dataclass
class _Progress:
    """Reports frames done to the store, throttled; raises `JobCanceled` when it finds the job
    canceled there."""

    store: JobStore
    job_id: str
    frames_total: int
    on_progress: Callable[[int, int], None] | None = None
    last_report: float = 0.0

    def report(self, frames_done: int, force: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(frames_done, self.frames_total)
        now = time.monotonic()
        if not force and now - self.last_report < PROGRESS_EVERY_S:
            current = self.store.get(self.job_id)
            if current is None or current.status is JobStatus.canceled:
                raise JobCanceled
            return
        self.last_report = now

        def change(record: JobRecord) -> None:
            record.frames_done = frames_done
            record.progress = frames_done / max(self.frames_total, frames_done, 1)

        if self.store.update(self.job_id, change).status is JobStatus.canceled:
            raise JobCanceled


def _mix_maker(
    record: JobRecord,
    inputs: Path,
    backend: FrameBackend,
    grid: tuple[int, int],
    settings: JobSettings,
) -> Callable[[Tensor], StyleMix]:
    """content frame -> its StyleMix. Without colour preservation the styles' statistics are
    computed once; with it each style is recoloured to each frame, as /stylize does per image."""
    params = JobParams(**record.params)
    styles = [
        prepare_style(
            StyleInput((inputs / f"style-{i}").read_bytes(), field),
            params.style_size,
            params.crop,
            settings.limits,
        )
        for i, field in enumerate(params.style_fields)
    ]
    masks: Masks | None = None
    if params.masks:
        data = tuple((inputs / f"mask-{i}").read_bytes() for i in range(params.masks))
        masks = prepare_masks(data, len(styles), tuple(params.upright_size), grid, settings.limits)
    weights = torch.tensor(params.weights)

    def mix_of(stats: list[tuple[Tensor, Tensor]]) -> StyleMix:
        return StyleMix(
            torch.cat([m for m, _ in stats]),
            torch.cat([s for _, s in stats]),
            weights,
            masks,
            params.alpha,
        )

    if params.preserve_color:
        return lambda content: mix_of(
            [backend.style_statistics(s, content, params.model) for s in styles]
        )
    fixed = mix_of([backend.style_statistics(s, None, params.model) for s in styles])
    return lambda content: fixed


def run_job(
    job_id: str,
    store: JobStore,
    backend: FrameBackend,
    settings: JobSettings = JobSettings(),
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int, int], None] | None = None,
) -> JobRecord | None:
    """Runs (or resumes) the job to its end; returns its final record, or None when
    `should_stop` interrupted it (still `running`, checkpointed) or another process is running
    it. `on_progress(frames done, frames total)` hears of every frame (the command's bar)."""
    with store.claim(job_id) as claimed:
        if not claimed:
            log.info("job already running in another process", extra={"job": job_id})
            return None
        return _run_claimed(job_id, store, backend, settings, should_stop, on_progress)


def _run_claimed(
    job_id: str,
    store: JobStore,
    backend: FrameBackend,
    settings: JobSettings,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int, int], None] | None,
) -> JobRecord | None:
    record = store.get(job_id)
    if record is None:
        return None
    if record.status.finished:  # canceled while queued: its files may still be there
        store.remove_work(job_id)
        return record

    def start(r: JobRecord) -> None:
        r.status = JobStatus.running

    record = store.update(job_id, start)
    if record.status is JobStatus.canceled:
        store.remove_work(job_id)
        return record
    try:
        progress = _Progress(store, job_id, record.frames_total, on_progress)
        frames = _stylize_frames(record, store, backend, settings, should_stop, progress)
    except JobInterrupted:
        log.info("job interrupted; it resumes at the next start", extra={"job": job_id})
        return None
    except JobCanceled:
        store.remove_work(job_id)
        log.info("job canceled", extra={"job": job_id})
        return store.get(job_id)
    except DomainError as exc:
        return _fail(store, job_id, exc.detail, exc.field)
    except Exception as exc:
        log.exception("job failed", extra={"job": job_id})
        return _fail(store, job_id, f"the job failed unexpectedly ({exc.__class__.__name__})", None)

    def succeed(r: JobRecord) -> None:
        r.status, r.frames_total, r.frames_done, r.progress = (
            JobStatus.succeeded,
            frames,
            frames,
            1.0,
        )
        r.frames_done = frames

    record = store.update(job_id, succeed)
    store.remove_work(job_id)
    if record.status is JobStatus.canceled:  # while the segments were joined: no result
        store.results.delete(job_id)
        log.info("job canceled", extra={"job": job_id})
        return record
    log.info("job succeeded", extra={"job": job_id, "frames": frames})
    return record


def _fail(store: JobStore, job_id: str, detail: str, field: str | None) -> JobRecord:
    def fail(r: JobRecord) -> None:
        r.status, r.error = JobStatus.failed, error_body(detail, field)

    record = store.update(job_id, fail)
    store.remove_work(job_id)
    log.warning("job failed", extra={"job": job_id, "detail": detail})
    return record


def _frame_step(
    record: JobRecord,
    inputs: Path,
    backend: FrameBackend,
    grid: tuple[int, int],
    settings: JobSettings,
    state: dict[str, Tensor] | None,
) -> Callable[[Tensor], Tensor]:
    """content frame -> output frame: the stabiliser around the per-frame stylize, or that
    alone with `stabilize=false`."""
    mix_for = _mix_maker(record, inputs, backend, grid, settings)
    params = JobParams(**record.params)
    if not params.stabilize:
        return lambda content: backend.stylize(content, mix_for(content), params.model)
    from models.video import Placement, Stabilizer, placed_masks  # only for stabilised jobs

    def stylize(content: Tensor, placement: Placement) -> Tensor:
        mix = mix_for(content)
        if mix.masks is not None:  # the masks go where the stabiliser puts the frame
            mix = replace(mix, masks=placed_masks(mix.masks, placement))
        return backend.stylize(content, mix, params.model)

    stabilizer = Stabilizer(stylize)
    if state is not None:
        stabilizer.load_state_dict(state)
    return stabilizer


def _stylize_frames(
    record: JobRecord,
    store: JobStore,
    backend: FrameBackend,
    settings: JobSettings,
    should_stop: Callable[[], bool],
    progress: _Progress,
) -> int:
    """Stylizes the frames after the last checkpoint and joins all into the result; returns
    the number of frames."""
    job_id, params = record.id, JobParams(**record.params)
    inputs, work = store.inputs(job_id), store.work(job_id)
    work.mkdir(exist_ok=True)
    checkpoint = store.load_checkpoint(job_id) or Checkpoint(0, [], None)
    segments = [Segment(work / s["file"], s["first_pts"], s["frames"]) for s in checkpoint.segments]
    kept = {s.path.name for s in segments} | {"checkpoint.pt"}
    for stale in work.iterdir():  # the segment that was open when the process died
        if stale.name not in kept:
            stale.unlink()
    time_base = Fraction(params.time_base)
    rate = Fraction(params.rate)
    done = checkpoint.frames_done
    progress.report(done, force=True)

    step: Callable[[Tensor], Tensor] | None = None
    writer: SegmentWriter | None = None
    first_pts = 0
    last_checkpoint = time.monotonic()

    def close_segment() -> None:
        nonlocal writer
        if writer is None:
            return
        writer.close()
        segments.append(Segment(writer.path, first_pts, writer.frames))
        writer = None
        state = getattr(step, "state_dict", None)
        store.save_checkpoint(
            job_id,
            Checkpoint(
                done,
                [
                    {"file": s.path.name, "first_pts": s.first_pts, "frames": s.frames}
                    for s in segments
                ],
                state() if state else None,
            ),
        )

    index = -1
    max_pixels = params.max_frame_pixels or settings.limits.max_image_pixels
    for index, frame in enumerate(read_frames(inputs / "video", max_pixels)):
        if index < done:
            continue
        progress.report(done)
        if should_stop():
            close_segment()
            progress.report(done, force=True)  # the record says what the checkpoint kept
            raise JobInterrupted
        content = frame_tensor(frame, params.content_size, params.crop)
        if step is None:
            step = _frame_step(
                record, inputs, backend, tuple(content.shape[-2:]), settings, checkpoint.stabilizer
            )
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
    close_segment()
    frames = index + 1
    if frames == 0 or not segments:
        raise DomainError("video: no frame could be decoded", "video")
    progress.report(done, force=True)
    produced = work / "result.mp4"
    finalize(segments, inputs / "video", produced, time_base)
    store.results.save(job_id, produced)
    return frames

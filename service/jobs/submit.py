"""Making a job: its inputs checked (everything the job will read, before it is accepted) and
stored with its record. POST /jobs and `adain stylize clip.mp4 ...` (`stylize_video_file`) both
come here; the job itself is `service.jobs.run.run_job`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from models.errors import DomainError
from service.imaging import ImageLimits
from service.jobs.run import FrameBackend, JobParams, JobSettings, run_job
from service.jobs.store import JobRecord, JobStatus, JobStore
from service.stylizer import StyleInput, check_counts, prepare_masks, prepare_style
from service.video import (
    VideoInfo,
    VideoLimits,
    check_cost,
    check_output_size,
    output_size,
    probe,
)

# Suffixes the command takes as videos (anything else is an image for `adain stylize`).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif", ".avi", ".3gp"})


def check_inputs(
    video: Path,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    content_size: int,
    style_size: int,
    crop: bool,
    video_limits: VideoLimits,
    limits: ImageLimits,
) -> VideoInfo:
    """The video (`probe`), each style and each mask decoded as /stylize decodes them."""
    info = probe(video, video_limits)
    check_output_size(info, content_size, crop, limits.max_output_pixels)
    check_cost(info, content_size, crop, video_limits.max_job_pixels)
    for style in styles:
        prepare_style(style, style_size, crop, limits)
    if masks:
        prepare_masks(
            tuple(masks),
            len(styles),
            (info.width, info.height),
            output_size(info, content_size, crop),
            limits,
        )
    return info


def create_job(
    store: JobStore,
    job_id: str,
    owner: str,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    *,
    weights: list[float],
    alpha: float,
    preserve_color: bool,
    content_size: int,
    style_size: int,
    crop: bool,
    stabilize: bool,
    video_limits: VideoLimits,
    limits: ImageLimits,
    model: str | None = None,
) -> JobRecord:
    """The job whose video is already at `store.inputs(job_id) / "video"` (`new_folder`),
    queued; on any refusal its folder is removed: nothing of a refused upload is kept."""
    inputs = store.inputs(job_id)
    try:
        info = check_inputs(
            inputs / "video", styles, masks, content_size, style_size, crop, video_limits, limits
        )
        for index, style in enumerate(styles):
            (inputs / f"style-{index}").write_bytes(style.data)
        for index, mask in enumerate(masks):
            (inputs / f"mask-{index}").write_bytes(mask)
        params = JobParams(
            style_fields=[style.field for style in styles],
            masks=len(masks),
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
            max_frame_pixels=video_limits.max_frame_pixels,
        )
        return store.create(job_id, owner, asdict(params), info.frames)
    except BaseException:
        shutil.rmtree(store.folder(job_id), ignore_errors=True)
        raise


def stylize_video_file(
    backend: FrameBackend,
    video: Path,
    styles: Sequence[Path],
    output: Path,
    *,
    weights: list[float],
    masks: Sequence[Path] = (),
    alpha: float = 1.0,
    preserve_color: bool = False,
    content_size: int = 512,
    style_size: int = 512,
    crop: bool = False,
    stabilize: bool = True,
    settings: JobSettings = JobSettings(),
    on_progress: Callable[[int, int], None] | None = None,
) -> JobRecord:
    """`adain stylize clip.mp4 style.jpg -o out.mp4`: the job, in this process, on
    `backend`'s default network, in a throw-away store. Raises the job's error."""
    normalised = check_counts(len(styles), len(masks), weights).tolist()
    limits = settings.limits
    unlimited = VideoLimits(
        max_frames=10**9,
        max_duration_s=float("inf"),
        max_frame_pixels=limits.max_image_pixels,
        max_job_pixels=10**18,
    )
    with tempfile.TemporaryDirectory(prefix="adain-video-") as folder:
        store = JobStore(Path(folder), ttl_s=60)
        job_id, inputs = store.new_folder()
        shutil.copyfile(video, inputs / "video")
        inputs_of_styles = [StyleInput(path.read_bytes(), str(path)) for path in styles]
        create_job(
            store,
            job_id,
            "command",
            inputs_of_styles,
            [path.read_bytes() for path in masks],
            weights=normalised,
            alpha=alpha,
            preserve_color=preserve_color,
            content_size=content_size,
            style_size=style_size,
            crop=crop,
            stabilize=stabilize,
            video_limits=unlimited,
            limits=limits,
        )
        final = run_job(job_id, store, backend, settings, on_progress=on_progress)
        assert final is not None  # never interrupted: nothing asks it to stop
        if final.status is not JobStatus.succeeded:
            error = final.error or {}
            raise DomainError(str(error.get("detail")), error.get("field"))
        result = store.results.path(job_id)
        assert result is not None
        shutil.move(result, output)
        return final

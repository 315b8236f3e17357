"""Making a job: its inputs checked (`media.clip.check_clip`: everything the job will read,
before it is accepted) and stored with its record. POST /jobs comes here; the job itself is
`service.jobs.run.run_job`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from media.clip import check_clip, clip_params, plan_parts, save_styles
from media.controls import StyleControls
from media.defaults import DEFAULT_STABILITY
from media.imaging import ImageLimits, StyleInput
from media.video import VideoLimits
from service.jobs.store import STYLES_FILE, JobRecord, JobStore


def create_job(
    store: JobStore,
    job_id: str,
    owner: str,
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    controls: StyleControls,
    *,
    stabilize: bool,
    video_limits: VideoLimits,
    limits: ImageLimits,
    part_frames: int = 0,
    stability: float = DEFAULT_STABILITY,
) -> JobRecord:
    """The job whose video is already at `store.inputs(job_id) / "video"` (`new_upload`),
    queued; on any refusal its upload is removed: nothing of a refused upload is kept. A video
    of at least two `part_frames` (0: never) is planned in parts, for several workers."""
    inputs = store.inputs(job_id)
    try:
        info, decoded = check_clip(inputs / "video", styles, masks, controls, video_limits, limits)
        save_styles(decoded, inputs / STYLES_FILE)  # decoded once: the job reads them back
        params = clip_params(info, styles, controls, stabilize, video_limits, stability)
        planned = plan_parts(info.frames, part_frames)
        parts = (
            None
            if len(planned) < 2
            else [{**asdict(part), "frames_done": 0, "done": False} for part in planned]
        )
        return store.create(job_id, owner, params.record(), info.frames, parts)
    except BaseException:
        store.discard_upload(job_id)
        raise

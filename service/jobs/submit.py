"""Making a job: its inputs checked (`media.clip.check_clip`: everything the job will read,
before it is accepted) and stored with its record. POST /jobs comes here; the job itself is
`service.jobs.run.run_job`."""

from __future__ import annotations

from collections.abc import Sequence

from media.clip import check_clip, clip_params, save_styles
from media.controls import StyleControls
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
) -> JobRecord:
    """The job whose video is already at `store.inputs(job_id) / "video"` (`new_upload`),
    queued; on any refusal its upload is removed: nothing of a refused upload is kept."""
    inputs = store.inputs(job_id)
    try:
        info, decoded = check_clip(inputs / "video", styles, masks, controls, video_limits, limits)
        save_styles(decoded, inputs / STYLES_FILE)  # decoded once: the job reads them back
        params = clip_params(info, styles, controls, stabilize, video_limits)
        return store.create(job_id, owner, params.record(), info.frames)
    except BaseException:
        store.discard_upload(job_id)
        raise

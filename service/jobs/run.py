"""`run_job`: THE video job function. It reads the job from a `JobStore`, stylizes its frames
with the clip runner (`media.clip.stylize_frames`) through a `FrameBackend` (the service's
engine, or a model a worker process loaded itself), and writes the result into the store. No
FastAPI, no engine: any process with the store's folder can run it.

Resumable: every `checkpoint_s` of work the open segment is closed and a checkpoint stored
(frames done, the segments, the stabiliser's state); a process killed mid-job and started again
resumes from the last checkpoint and ends with every frame. Between frames it checks whether the
job was canceled (the store says so) or the process is stopping (`should_stop`: the job stays
`running` with a fresh checkpoint, for the next start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from media.clip import (
    ClipParams,
    ClipSettings,
    ClipState,
    ClipStopped,
    FrameBackend,
    join,
    load_styles,
    stylize_frames,
)
from media.video import Segment
from models.errors import DomainError
from service.jobs.store import STYLES_FILE, Checkpoint, JobRecord, JobStatus, JobStore

log = logging.getLogger("service.jobs")

PROGRESS_EVERY_S = 0.25  # at most this often a progress report rewrites the record


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


def run_job(
    job_id: str,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings = ClipSettings(),
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
    settings: ClipSettings,
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
        work = _stylize_frames
        if record.params.get("kind") == "batch":
            from service.jobs.batch import stylize_batch as work  # which imports this module
        frames = work(record, store, backend, settings, should_stop, progress)
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
    log.warning("job failed", extra={"job": job_id, "detail": detail})
    return store.fail(job_id, detail, field)


def _stylize_frames(
    record: JobRecord,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings,
    should_stop: Callable[[], bool],
    progress: _Progress,
) -> int:
    """Stylizes the frames after the last checkpoint and joins all into the result; returns
    the number of frames."""
    job_id, params = record.id, ClipParams.from_record(record.params, backend.models)
    inputs, work = store.inputs(job_id), store.work(job_id)
    work.mkdir(exist_ok=True)
    checkpoint = store.load_checkpoint(job_id) or Checkpoint(0, [], None)
    segments = [Segment(work / s["file"], s["first_pts"], s["frames"]) for s in checkpoint.segments]
    kept = {s.path.name for s in segments} | {"checkpoint.pt"}
    for stale in work.iterdir():  # the segment that was open when the process died
        if stale.name not in kept:
            stale.unlink()
    if not (inputs / STYLES_FILE).is_file():  # a job an older version stored undecoded
        raise DomainError("the job was stored by an older version of the service: submit it again")
    styles = load_styles(inputs / STYLES_FILE)  # decoded once, when the job was submitted

    def save(state: ClipState) -> None:
        store.save_checkpoint(
            job_id,
            Checkpoint(
                state.frames_done,
                [
                    {"file": s.path.name, "first_pts": s.first_pts, "frames": s.frames}
                    for s in state.segments
                ],
                state.stabilizer,
            ),
        )

    progress.report(checkpoint.frames_done, force=True)
    try:
        state = stylize_frames(
            inputs / "video",
            work,
            params,
            styles,
            backend,
            settings,
            state=ClipState(checkpoint.frames_done, tuple(segments), checkpoint.stabilizer),
            on_frame=progress.report,
            should_stop=should_stop,
            on_checkpoint=save,
        )
    except ClipStopped as stopped:
        progress.report(stopped.state.frames_done, force=True)  # what the checkpoint kept
        raise JobInterrupted from None
    progress.report(state.frames_done, force=True)
    produced = work / "result.mp4"
    join(state, inputs / "video", produced, params)
    store.results.save(job_id, produced)
    return state.frames_done

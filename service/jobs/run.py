"""`run_job`: THE video job function. It reads the job from a `JobStore`, stylizes its frames
with the clip runner (`media.clip.stylize_frames`) through a `FrameBackend` (the service's
engine, or a model a worker process loaded itself), and writes the result into the store. No
FastAPI, no engine: any process that reaches the store can run it.

Resumable: every `checkpoint_s` of work the open segment is closed and a checkpoint stored
(frames done, the segments, the stabiliser's state); a process killed mid-job and started again
resumes from the last checkpoint and ends with every frame. Between frames it checks whether the
job was canceled (the store says so) or the process is stopping (`should_stop`: the job stays
`running` with a fresh checkpoint, for the next start).

A long video's job comes in parts (`JobRecord.parts`, planned at submission by
`media.clip.plan_parts`) that idle workers run at once, each `run_job(..., part=k)` with its own
claim and checkpoints; the process that finishes the last part joins them all into the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from media.clip import (
    WHOLE_CLIP,
    ClipParams,
    ClipSettings,
    ClipState,
    ClipStopped,
    FrameBackend,
    FrameRange,
    join,
    join_parts,
    load_styles,
    stylize_frames,
)
from media.video import Segment
from models.errors import DomainError
from service import metrics
from service.jobs.batch import is_batch, stylize_batch
from service.jobs.signals import JobCanceled, JobInterrupted
from service.jobs.store import (
    CLAIM,
    RESULT,
    STYLES_FILE,
    WHOLE,
    Checkpoint,
    JobRecord,
    JobStatus,
    JobStore,
)

log = logging.getLogger("service.jobs")

PROGRESS_EVERY_S = 0.25  # at most this often a progress report rewrites the record


@dataclass
class _Progress:
    """Reports frames done to the store, throttled; raises `JobCanceled` when it finds the job
    canceled there. For a part, the frames it wrote; the job's are the sum of its parts'.
    Counts the frames this run adds (adain_job_frames_total) from the reports' increases: not
    the network's passes, which a stabilised clip's start phases, a moving object's second
    pass and a resumed clip's warm-up frames add to."""

    store: JobStore
    job_id: str
    frames_total: int
    part: int | None = None
    on_progress: Callable[[int, int], None] | None = None
    last_report: float = 0.0
    counted: int | None = None  # frames done at the last report (None: none yet)

    def report(self, frames_done: int, force: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(frames_done, self.frames_total)
        if self.counted is not None and frames_done > self.counted:
            metrics.JOB_FRAMES.inc(frames_done - self.counted)
        self.counted = max(frames_done, self.counted or 0)
        now = time.monotonic()
        if not force and now - self.last_report < PROGRESS_EVERY_S:
            current = self.store.get(self.job_id)
            if current is None or current.status.finished:
                raise JobCanceled
            return
        self.last_report = now

        def change(record: JobRecord) -> None:
            if self.part is None:
                record.frames_done = frames_done
            else:
                part = record.parts[self.part]  # type: ignore[index]
                part["frames_done"] = max(part["frames_done"], frames_done - part["start"])
                record.frames_done = sum(p["frames_done"] for p in record.parts)  # type: ignore[union-attr]
            record.progress = record.frames_done / max(self.frames_total, record.frames_done, 1)

        if self.store.update(self.job_id, change).status.finished:
            raise JobCanceled


def run_job(
    job_id: str,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings = ClipSettings(),
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int, int], None] | None = None,
    part: int | None = None,
) -> JobRecord | None:
    """Runs (or resumes) the job, or its part `part`, to its end; returns its record (final,
    or `running` while other parts run), or None when `should_stop` interrupted it (still
    `running`, checkpointed) or another process is running it. `on_progress(frames done,
    frames total)` hears of every frame (the command's bar)."""
    store = store.patient()  # the job waits out a restart of Redis or the object store
    with store.claim(job_id, CLAIM if part is None else f"{CLAIM}-{part}") as claimed:
        if not claimed:
            log.info("job already running in another process", extra={"job": job_id})
            return None
        return _run_claimed(job_id, store, backend, settings, should_stop, on_progress, part)


def _run_claimed(
    job_id: str,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int, int], None] | None,
    part: int | None,
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
    extra = {"job": job_id, "part": part}
    try:
        progress = _Progress(store, job_id, record.frames_total, part, on_progress)
        if is_batch(record):
            frames = stylize_batch(record, store, backend, settings, should_stop, progress)
        elif part is None:
            frames = _stylize_whole(record, store, backend, settings, should_stop, progress)
        else:
            if not record.parts[part]["done"]:  # type: ignore[index]
                _stylize_part(record, part, store, backend, settings, should_stop, progress)
            frames = _join_when_complete(record, part, store, backend)
            if frames is None:  # other parts are still running: the last one joins
                return store.get(job_id)
    except JobInterrupted:
        log.info("job interrupted; it resumes at the next start", extra=extra)
        return None
    except JobCanceled:
        store.remove_work(job_id)
        log.info("job canceled", extra=extra)
        return store.get(job_id)
    except DomainError as exc:
        return _fail(store, job_id, exc.detail, exc.field)
    except Exception as exc:
        log.exception("job failed", extra=extra)
        return _fail(store, job_id, f"the job failed unexpectedly ({exc.__class__.__name__})", None)

    def succeed(r: JobRecord) -> None:
        r.status, r.frames_total, r.frames_done, r.progress = (
            JobStatus.succeeded,
            frames,
            frames,
            1.0,
        )

    record = store.update(job_id, succeed)
    store.remove_work(job_id)
    if record.status is JobStatus.canceled:  # while the segments were joined: no result
        store.delete_result(job_id)
        log.info("job canceled", extra=extra)
        return record
    log.info("job succeeded", extra={**extra, "frames": frames})
    return record


def _fail(store: JobStore, job_id: str, detail: str, field: str | None) -> JobRecord:
    log.warning("job failed", extra={"job": job_id, "detail": detail})
    return store.fail(job_id, detail, field)


def _stylize_whole(
    record: JobRecord,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings,
    should_stop: Callable[[], bool],
    progress: _Progress,
) -> int:
    """Stylizes the frames after the last checkpoint and joins all into the result; returns
    the number of frames."""
    state = _stylize(record, WHOLE, WHOLE_CLIP, store, backend, settings, should_stop, progress)
    params = ClipParams.from_record(record.params, backend.models)
    produced = store.work(record.id) / RESULT
    join(state, store.inputs(record.id) / "video", produced, params)
    store.save_result(record.id, produced)
    return state.frames_done


def _stylize_part(
    record: JobRecord,
    part: int,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings,
    should_stop: Callable[[], bool],
    progress: _Progress,
) -> None:
    """Stylizes the part's frames after its last checkpoint; its final state stored as its
    checkpoint, the part marked done in the record."""
    planned = record.parts[part]  # type: ignore[index]
    frames = FrameRange(planned["start"], planned["end"], planned["warmup"])
    state = _stylize(
        record, part_folder(part), frames, store, backend, settings, should_stop, progress
    )
    _save(store, record.id, part_folder(part), state)

    def done(r: JobRecord) -> None:
        r.parts[part]["done"] = True  # type: ignore[index]
        r.parts[part]["frames_done"] = state.frames_done - planned["start"]  # type: ignore[index]
        r.frames_done = sum(p["frames_done"] for p in r.parts)  # type: ignore[union-attr]

    store.update(record.id, done)


def _join_when_complete(
    record: JobRecord, part: int, store: JobStore, backend: FrameBackend
) -> int | None:
    """Once every part is done: the parts joined into the result (by whichever process gets
    there first; a process that dies joining leaves it to its message's next delivery);
    returns the frames. None while parts are still running."""
    current = store.get(record.id)
    if current is None or current.status.finished:
        raise JobCanceled
    if not all(p["done"] for p in current.parts or []):
        return None
    with store.claim(record.id, f"{CLAIM}-join") as claimed:
        if not claimed:
            return None
        params = ClipParams.from_record(record.params, backend.models)
        states = []
        for index in range(len(current.parts or [])):
            checkpoint = store.load_checkpoint(record.id, part_folder(index))
            if checkpoint is None:
                raise DomainError(f"part {index} of the job lost its frames: submit it again")
            states.append(_clip_state(store, record.id, part_folder(index), checkpoint))
        inputs = store.fetch_inputs(record.id)
        produced = store.work(record.id) / RESULT
        join_parts(states, inputs / "video", produced, params)
        store.save_result(record.id, produced)
        return states[-1].frames_done


def _clip_state(store: JobStore, job_id: str, folder: str, checkpoint: Checkpoint) -> ClipState:
    work = store.work(job_id) / folder
    segments = tuple(
        Segment(work / s["file"], s["first_pts"], s["frames"]) for s in checkpoint.segments
    )
    return ClipState(checkpoint.frames_done, segments, checkpoint.stabilizer)


def _save(store: JobStore, job_id: str, folder: str, state: ClipState) -> None:
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
        folder,
    )


def _stylize(
    record: JobRecord,
    folder: str,
    frames: FrameRange,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings,
    should_stop: Callable[[], bool],
    progress: _Progress,
) -> ClipState:
    """The clip runner on `frames` of the job's video from the checkpoint in `folder`
    (under the job's work), checkpointing there; returns its final state."""
    job_id, params = record.id, ClipParams.from_record(record.params, backend.models)
    inputs, work = store.fetch_inputs(job_id), store.work(job_id) / folder
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = store.load_checkpoint(job_id, folder)
    state = ClipState() if checkpoint is None else _clip_state(store, job_id, folder, checkpoint)
    kept = {s.path.name for s in state.segments}
    for stale in work.iterdir():  # the segment that was open when the process died
        if stale.is_file() and stale.name not in kept:
            stale.unlink()
    if not (inputs / STYLES_FILE).is_file():  # a job an older version stored undecoded
        raise DomainError("the job was stored by an older version of the service: submit it again")
    styles = load_styles(inputs / STYLES_FILE)  # decoded once, when the job was submitted

    progress.report(state.frames_done, force=True)
    try:
        state = stylize_frames(
            inputs / "video",
            work,
            params,
            styles,
            backend,
            settings,
            state=state,
            part=frames,
            on_frame=progress.report,
            should_stop=should_stop,
            on_checkpoint=lambda state: _save(store, job_id, folder, state),
        )
    except ClipStopped as stopped:
        progress.report(stopped.state.frames_done, force=True)  # what the checkpoint kept
        raise JobInterrupted from None
    progress.report(state.frames_done, force=True)
    return state


def part_folder(part: int) -> str:
    return f"part-{part}"

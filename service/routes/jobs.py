"""Jobs: POST /jobs (a video, or `content` images for a batch job, and /stylize's style fields)
-> 202; then GET /jobs/{id} (or its server-sent events) for progress, GET /jobs/{id}/result for
the MP4 (a batch job: the ZIP; GET /jobs/{id}/items/{n} one image), DELETE to cancel.

With API keys on, a job belongs to the key that submitted it: other keys get 404 for it, admin
keys see every job. Only submissions count against the rate limit (polling does not).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from media.controls import bounds, check_controls
from media.defaults import DEFAULT_SIZE, DEFAULT_STABILITY, MAX_STYLES
from media.imaging import OutputFormat
from media.video import UnsupportedVideoError, VideoLimits, VideoTooLargeError
from models.errors import InvalidInputError
from models.model import parse_mix_weights
from service.caps import CapReachedError, OpenCounts
from service.deps import RegistryDep, ServicesDep, StylizerDep
from service.errors import RangeNotSatisfiableError
from service.forms import FormFieldsDep, UnsupportedFormError
from service.idempotency import idempotent
from service.jobs.batch import (
    BatchItemNotFoundError,
    BatchLimits,
    BatchManifest,
    BatchTooLargeError,
    JobKind,
    create_batch_job,
    find_item,
    is_batch,
    kind_fields,
    media_type_of,
    read_item,
    read_manifest,
    result_name,
)
from service.jobs.blobs import Blob, JobFilesUnavailableError
from service.jobs.position import queue_positions
from service.jobs.store import (
    JobNotDoneError,
    JobNotFoundError,
    JobRecord,
    JobStatus,
    JobStorageFullError,
    JobStore,
)
from service.jobs.submit import create_job
from service.openapi import (
    BINARY,
    GUARDED,
    IDEMPOTENT,
    STORE,
    UPLOAD,
    ErrorBody,
    Responses,
    error_responses,
    header,
)
from service.ranges import byte_ranges
from service.registry import StyleNotFoundError
from service.routes.styles import DEFAULT_PAGE_SIZE, PageCursor, PageLimit, page_of
from service.routes.stylize import read_styles
from service.security import (
    AuthenticationError,
    Caller,
    PermissionDeniedError,
    RateLimitedError,
    Role,
    UserDep,
    authenticate,
    client_address,
)
from service.settings import Settings
from service.webhooks import WebhookSender, checked_target, parse_events

router = APIRouter(tags=["jobs"])

EVENTS_POLL_S = 0.2
EVENTS_HEARTBEAT_S = 15.0
QUEUED_JOBS_RETRY_S = 30  # a short job's time: when a place may have come free
COPY_CHUNK = 1024 * 1024


class JobState(BaseModel):
    """A job (a video, or a batch of images) as GET /jobs/{id} answers it."""

    id: str = Field(description="The job's id (32 hex digits).")
    kind: JobKind = Field(
        "video", description="video (POST /jobs with `video`) or batch (with `content`)."
    )
    status: JobStatus = Field(description="queued -> running -> succeeded, failed or canceled.")
    progress: float = Field(
        ge=0, le=1, description="Share of the frames (batch: images) done; never decreases."
    )
    frames_done: int = Field(ge=0, description="A batch job: images done, as `items_done`.")
    frames_total: int = Field(
        ge=0, description="Frames of the video (exact once succeeded); a batch job: its images."
    )
    items_done: int | None = Field(
        None, ge=0, description="A batch job: images done, failed ones included; null for videos."
    )
    items_failed: int | None = Field(
        None, ge=0, description="A batch job: images that failed so far (the manifest says why)."
    )
    items_total: int | None = Field(None, ge=0, description="A batch job: its images.")
    model: str | None = Field(
        None, description="The network stylizing it: full or lite (the `model` asked for)."
    )
    stability: float | None = Field(
        None,
        ge=0,
        le=1,
        description="A stabilised video's flicker/detail trade-off (the `stability` asked "
        "for); null for a video without `stabilize` and for a batch job.",
    )
    error: ErrorBody | None = Field(description="Why it failed; null unless failed.")
    created: str = Field(description="When it was submitted: ISO 8601, UTC.")
    queue_position: int | None = Field(
        None,
        ge=0,
        description="While queued: how many queued jobs (of any caller) start before it, "
        "counted from 0 (0: it starts next); null once it runs or has finished.",
    )
    expires: str | None = Field(
        description="When its result and record are removed (ADAIN_JOB_TTL_S after it "
        "finished): ISO 8601, UTC; null while active."
    )


class JobList(BaseModel):
    jobs: list[JobState] = Field(
        description="The caller's jobs (an admin key: all), oldest first: one page."
    )
    next_cursor: str | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page."
    )


async def viewer(request: Request) -> Caller:
    """The caller, authenticated but not counted against the rate limit: polling a job is not a
    submission. Refused keys count, per address, as elsewhere."""
    try:
        return authenticate(request)
    except AuthenticationError:
        await request.app.state.services.rate_limiter.check(client_address(request))
        raise


ViewerDep = Annotated[Caller, Depends(viewer)]


def not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(f"job_id: no job with id {job_id[:80]!r}", "job_id")


def job_store(services: ServicesDep) -> JobStore:
    return services.jobs.store


StoreDep = Annotated[JobStore, Depends(job_store)]


async def job_state(store: JobStore, record: JobRecord) -> dict[str, Any]:
    """What GET /jobs/{id} answers for the job: its record's public part and, while queued,
    its place in the queue (read from every record, so only then)."""
    position = None
    if record.status is JobStatus.queued:
        position = queue_positions(await run_in_threadpool(store.jobs)).get(record.id)
    return {**record.public(), **kind_fields(record), "queue_position": position}


async def visible_job(job_id: str, caller: Caller, store: JobStore) -> JobRecord:
    """The job if the caller may see it: its owner's key, or an admin key (keys off: anyone)."""
    record = await run_in_threadpool(store.get, job_id)
    if record is None or (caller.role < Role.admin and record.owner != caller.identity):
        raise not_found(job_id)
    return record


SUBMIT_RESPONSES: Responses = {
    202: {
        "description": "Accepted: the job is queued.",
        "headers": {
            "Location": header("`/jobs/{id}`: where to follow the job.", {"type": "string"}),
            "Idempotent-Replayed": header(
                "`true`: the first answer to this Idempotency-Key, replayed.", {"type": "string"}
            ),
        },
    },
    **error_responses(
        *UPLOAD,
        UnsupportedFormError,
        UnsupportedVideoError,
        VideoTooLargeError,
        BatchTooLargeError,
        StyleNotFoundError,
        CapReachedError,
        JobStorageFullError,
        JobFilesUnavailableError,
        *STORE,
        *IDEMPOTENT,
        *GUARDED,
    ),
}
VIEWING = (AuthenticationError, RateLimitedError, JobNotFoundError)
VIEW_ERRORS: Responses = error_responses(*VIEWING)
RESULT_CONTENT = {
    media_type: {"schema": {**BINARY, "contentMediaType": media_type}}
    for media_type in ("video/mp4", "application/zip")
}
RESULT_RESPONSES: Responses = {
    200: {
        "description": "The stylized video (MP4, H.264); a batch job's ZIP (`manifest.json` "
        "and the images). Range requests are answered with 206.",
        "content": RESULT_CONTENT,
        "headers": {"Accept-Ranges": header("`bytes`.", {"type": "string"})},
    },
    206: {
        "description": "The requested byte range of the file.",
        "content": RESULT_CONTENT,
        "headers": {"Content-Range": header("The range sent.", {"type": "string"})},
    },
    307: {
        "description": "With ADAIN_RESULT_REDIRECT and an object store: the video at a "
        "short-lived presigned URL (`Location`).",
        "headers": {"Location": header("The presigned URL.", {"type": "string"})},
    },
    **error_responses(
        *VIEWING, JobNotDoneError, RangeNotSatisfiableError, JobFilesUnavailableError
    ),
}
EVENTS_RESPONSES: Responses = {
    200: {
        "description": "Server-sent events: `data:` the job's JSON (as `GET /jobs/{id}`) each "
        "time it changes; the last one is the final state.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **error_responses(*VIEWING, CapReachedError),
}


async def checked_webhook(
    sender: WebhookSender | None, url: str | None, events: list[str] | None
) -> tuple[str, list[str]] | None:
    """(url, events) of a job's webhook, checked as a delivery will be; None without one."""
    if url is None or not url.strip():
        if events:
            raise InvalidInputError("webhook_events: send `webhook` too", "webhook_events")
        return None
    if sender is None:
        raise InvalidInputError(
            "webhook: this server sends no webhooks (ADAIN_WEBHOOK_SECRET is not set)", "webhook"
        )
    names = parse_events(events)
    await run_in_threadpool(checked_target, url.strip(), sender.allow_private)
    return url.strip(), names


def check_room(store: JobStore, identity: str, settings: Settings, upload_bytes: int) -> None:
    """Room for one more job of `upload_bytes`: the caller's active jobs under
    ADAIN_MAX_QUEUED_JOBS_PER_KEY (429), all stored jobs under ADAIN_MAX_STORED_JOB_BYTES
    (503)."""
    active = sum(1 for r in store.jobs() if r.owner == identity and not r.status.finished)
    if active >= settings.max_queued_jobs_per_key:
        raise CapReachedError(
            f"{active} jobs of this caller are queued or running, the limit "
            "(ADAIN_MAX_QUEUED_JOBS_PER_KEY); submit more once one has finished",
            QUEUED_JOBS_RETRY_S,
        )
    stored = store.stored_bytes() + upload_bytes
    if stored > settings.max_stored_job_bytes:
        raise JobStorageFullError(
            f"the jobs' storage would hold {stored} bytes with this upload, over the limit of "
            f"{settings.max_stored_job_bytes} (ADAIN_MAX_STORED_JOB_BYTES); retry once older "
            "jobs expire"
        )


def check_job_kind(video: UploadFile | None, content: list[UploadFile] | None) -> None:
    """A video job or a batch job: one of the two fields, not both."""
    if video is not None and content:
        raise InvalidInputError(
            "content: send either `video` (a video job) or `content` images (a batch job), "
            "not both",
            "content",
        )
    if video is None and not content:
        raise InvalidInputError(
            "video: send `video` (a video job) or `content` images (a batch job)", "video"
        )


async def save_upload(upload: UploadFile, target: Path) -> None:
    """The upload copied to disk in chunks (a video is not held in memory)."""
    with target.open("wb") as file:
        while chunk := await upload.read(COPY_CHUNK):
            await run_in_threadpool(file.write, chunk)


@router.post("/jobs", status_code=202, response_model=JobState, responses=SUBMIT_RESPONSES)
@idempotent(202)
async def submit_job(
    response: Response,
    caller: UserDep,
    known_fields: FormFieldsDep,
    services: ServicesDep,
    registry: RegistryDep,
    stylizer: StylizerDep,
    video: Annotated[
        UploadFile | None,
        File(description="The video: MP4, MOV, WebM, animated GIF, ... (a video job)."),
    ] = None,
    content: Annotated[
        list[UploadFile] | None,
        File(
            description="Instead of `video`, a batch job: images (repeatable; PNG, JPEG or "
            "WebP) or one ZIP of them, each stylized as /stylize would."
        ),
    ] = None,
    style: Annotated[
        list[UploadFile] | None,
        File(description="Style images (repeatable). They come first, in the order sent."),
    ] = None,
    style_id: Annotated[
        list[str] | None,
        Form(description="Ids of registered styles (repeatable), after the style files."),
    ] = None,
    alpha: Annotated[
        float, Form(description="Content-style trade-off.", json_schema_extra=bounds("alpha"))
    ] = 1.0,
    weights: Annotated[
        list[str] | None, Form(description="One weight per style: repeated fields or '1,2,1'.")
    ] = None,
    mask: Annotated[
        list[UploadFile] | None,
        File(
            description="One mask per style, or one binary mask for two styles (white = first), "
            "the video's (upright) frame size; the same for every frame."
        ),
    ] = None,
    preserve_color: Annotated[bool, Form(description="Keep the content's colours.")] = False,
    content_size: Annotated[
        int,
        Form(
            description="Shorter side of the output frames; "
            "0 keeps it. Odd sides lose a row or column.",
            json_schema_extra=bounds("content_size"),
        ),
    ] = DEFAULT_SIZE,
    style_size: Annotated[
        int, Form(description="Shorter side; 0 keeps it.", json_schema_extra=bounds("style_size"))
    ] = DEFAULT_SIZE,
    crop: Annotated[bool, Form(description="Centre-crop to a square of the size.")] = False,
    stabilize: Annotated[
        bool,
        Form(
            description="Temporal stabilisation (no flicker); false: "
            "each frame on its own, as /stylize. Video jobs only."
        ),
    ] = True,
    stability: Annotated[
        float,
        Form(
            ge=0,
            le=1,
            allow_inf_nan=False,
            description="With `stabilize`: the flicker/detail trade-off, 0 each frame on its "
            "own (most detail) to 1 the most stable (softer where the scene moves).",
        ),
    ] = DEFAULT_STABILITY,
    output_format: Annotated[
        OutputFormat, Form(alias="format", description="A batch job's images' format.")
    ] = OutputFormat.png,
    quality: Annotated[
        int, Form(ge=1, le=100, description="A batch job's JPEG/WebP quality.")
    ] = 90,
    model: Annotated[
        str | None,
        Form(
            description="full or lite, among the models the service loaded (ADAIN_MODELS); "
            "default ADAIN_MODEL. The job's JSON names it."
        ),
    ] = None,
    webhook: Annotated[
        str | None,
        Form(
            description="An http(s) URL that gets the job's events as signed POSTs (Standard "
            "Webhooks; needs ADAIN_WEBHOOK_SECRET). Non-public addresses are refused."
        ),
    ] = None,
    webhook_events: Annotated[
        list[str] | None,
        Form(
            description="Which events go to `webhook`: start, progress, completed (repeated "
            "fields or comma-separated); default completed."
        ),
    ] = None,
) -> JobState:
    """Stylize a video as a job: 202 at once with its id and `Location`; the frames keep the
    video's count, rate, timing and audio. Style fields as for /stylize. With `content` instead
    of `video`, a batch job: each image (or each of one ZIP's) as /stylize answers it, the
    result a ZIP with a manifest; an image that fails is named there, the others go on."""
    check_job_kind(video, content)
    controls = check_controls(
        styles=len(style or []) + len(style_id or []),
        masks=len(mask or []),
        weights=parse_mix_weights(weights or [], MAX_STYLES),
        models=stylizer.models,
        alpha=alpha,
        preserve_color=preserve_color,
        content_size=content_size,
        style_size=style_size,
        crop=crop,
        model=model,
    )
    target = await checked_webhook(services.webhooks, webhook, webhook_events)
    styles = await read_styles(style, style_id, registry, caller)
    masks = [await m.read() for m in mask or []]
    runner, settings = services.jobs, services.settings
    job_id, inputs = await run_in_threadpool(runner.store.new_upload)
    uploads: list[tuple[str, Path]] = []
    try:
        if video is not None:
            await save_upload(video, inputs / "video")
        for index, upload in enumerate(content or []):
            uploads.append((upload.filename or f"content[{index}]", inputs / f"upload-{index}"))
            await save_upload(upload, uploads[-1][1])
        uploaded = sum(path.stat().st_size for path in inputs.iterdir())
        await run_in_threadpool(check_room, runner.store, caller.identity, settings, uploaded)
    except BaseException:
        await run_in_threadpool(runner.store.discard_upload, job_id)
        raise
    if video is None:
        batch_limits = BatchLimits(
            settings.max_batch_items, settings.max_batch_bytes, settings.max_upload_bytes
        )
        create = partial(
            create_batch_job,
            runner.store,
            job_id,
            caller.identity,
            uploads,
            styles,
            masks,
            controls,
            output_format,
            quality,
            batch_limits,
            services.limits,
        )
    else:
        video_limits = VideoLimits(
            settings.max_video_frames,
            settings.max_video_duration_s,
            settings.max_video_frame_pixels,
            settings.max_job_pixels,
        )
        create = partial(
            create_job,
            runner.store,
            job_id,
            caller.identity,
            styles,
            masks,
            controls,
            stabilize=stabilize,
            video_limits=video_limits,
            limits=services.limits,
            part_frames=settings.job_split_frames if settings.redis_url else 0,
            stability=stability,
        )
    record = await run_in_threadpool(create)
    if target is not None and services.webhooks is not None:
        await run_in_threadpool(services.webhooks.attach, job_id, *target)
    runner.submit(job_id)
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobState(**await job_state(runner.store, record))


@router.get(
    "/jobs",
    response_model=JobList,
    responses=error_responses(AuthenticationError, RateLimitedError, InvalidInputError),
)
async def list_jobs(
    caller: ViewerDep,
    store: StoreDep,
    limit: PageLimit = DEFAULT_PAGE_SIZE,
    cursor: PageCursor = None,
) -> JobList:
    """The caller's jobs (with an admin key, or keys off: every job), oldest first, one page
    at a time as GET /styles."""
    records = await run_in_threadpool(store.jobs)
    positions = queue_positions(records)
    states = [
        JobState(**r.public(), **kind_fields(r), queue_position=positions.get(r.id))
        for r in records
        if caller.role >= Role.admin or r.owner == caller.identity
    ]
    page, next_cursor = page_of(states, lambda state: (state.created, state.id), limit, cursor)
    return JobList(jobs=page, next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobState, responses=VIEW_ERRORS)
async def get_job(job_id: str, caller: ViewerDep, store: StoreDep) -> JobState:
    """The job's status and progress."""
    return JobState(**await job_state(store, await visible_job(job_id, caller, store)))


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse, responses=EVENTS_RESPONSES)
async def job_events(
    job_id: str, request: Request, caller: ViewerDep, store: StoreDep
) -> StreamingResponse:
    """Server-sent events of the job's state, as it changes, ending with the final state. A
    key (an address without keys) holds at most ADAIN_MAX_EVENT_STREAMS_PER_KEY at once."""
    first = await visible_job(job_id, caller, store)
    streams: OpenCounts = request.app.state.event_streams

    async def events() -> AsyncIterator[str]:
        record: JobRecord | None = first
        sent, quiet = None, 0.0
        while record is not None:
            state = json.dumps(await job_state(store, record))
            if state != sent:
                yield f"data: {state}\n\n"
                sent, quiet = state, 0.0
            if record.status.finished or await request.is_disconnected():
                return
            if quiet >= EVENTS_HEARTBEAT_S:  # a comment keeps proxies from closing the stream
                yield ": keep-alive\n\n"
                quiet = 0.0
            await asyncio.sleep(EVENTS_POLL_S)
            quiet += EVENTS_POLL_S
            record = await run_in_threadpool(store.get, job_id)

    streams.take(caller.identity)
    return HeldStreamingResponse(
        partial(streams.release, caller.identity),
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class HeldStreamingResponse(StreamingResponse):
    """A stream that holds something (a caller's place) until it ends, however it ends."""

    def __init__(self, release: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def not_done(record: JobRecord) -> JobNotDoneError:
    if record.status is JobStatus.canceled:
        why = "it was canceled and will never have a result"
    elif record.status is JobStatus.failed:
        why = "it failed (`error` in GET /jobs/{id} says why) and will never have a result"
    else:
        why = "the result is there once it has succeeded"
    return JobNotDoneError(f"job_id: job {record.id} is {record.status.value}; {why}", "job_id")


def byte_range(request: Request, size: int, validators: tuple[str, str]) -> tuple[int, int] | None:
    """(start, end) of the one byte range asked for; None for the whole file. RFC 9110: a
    Range of another unit, one whose If-Range no longer matches (an ETag or Last-Modified of
    `validators`), and several ranges are answered with the whole file; a bytes range that is
    malformed or starts past the end is 416."""
    requested = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if requested is None or (if_range is not None and if_range not in validators):
        return None
    if requested.partition("=")[0].strip().lower() != "bytes":
        return None
    ranges = byte_ranges(requested, size)  # as FileResponse reads it
    if ranges is None:
        raise RangeNotSatisfiableError(
            f"Range {requested[:80]!r} does not fit the file of {size} bytes", size
        )
    return ranges[0] if len(ranges) == 1 else None


async def blob_chunks(blob: Blob, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes start..end of an opened result, read in the thread pool; closed after."""
    try:
        chunks = await run_in_threadpool(blob.read, start, end)
        while chunk := await run_in_threadpool(next, chunks, b""):
            yield chunk
    finally:
        blob.close()


@router.get("/jobs/{job_id}/result", response_class=FileResponse, responses=RESULT_RESPONSES)
async def job_result(
    job_id: str,
    request: Request,
    caller: ViewerDep,
    services: ServicesDep,
    redirect: Annotated[
        bool,
        Query(
            description="false: stream the result through the service even where "
            "ADAIN_RESULT_REDIRECT would redirect (the page does: a browser would send its "
            "API key on to the store)."
        ),
    ] = True,
) -> Response:
    """The stylized video once the job succeeded (409 before); Range requests for seeking.
    The file is opened before the answer starts: a DELETE meanwhile does not cut it short.
    With ADAIN_RESULT_REDIRECT and an object store: a redirect to a short-lived URL of it."""
    store = services.jobs.store
    record = await visible_job(job_id, caller, store)
    if record.status is not JobStatus.succeeded:
        raise not_done(record)
    name, media_type = result_name(record)
    filename = f"stylized-{job_id[:8]}.{name.rsplit('.', 1)[1]}"
    if redirect and services.settings.result_redirect:
        url = await run_in_threadpool(store.result_url, job_id, filename, media_type, name)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    blob = await run_in_threadpool(store.open_result, job_id, name)
    if blob is None:  # removed in between (DELETE, expiry): its record goes next
        record = await visible_job(job_id, caller, store)
        raise not_found(job_id) if record.status is JobStatus.succeeded else not_done(record)
    last_modified = formatdate(blob.modified, usegmt=True)
    try:
        chosen = byte_range(request, blob.size, (blob.etag, last_modified))
        start, end = chosen or (0, blob.size)
        chunks = blob_chunks(blob, start, end)
        first = await anext(chunks, b"")  # the file is read before the answer starts
    except BaseException:
        blob.close()
        raise
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start),
        "Content-Disposition": f'inline; filename="{filename}"',
        "ETag": blob.etag,
        "Last-Modified": last_modified,
    }
    if chosen is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
    return StreamingResponse(
        prepended(first, chunks),
        status_code=206 if chosen is not None else 200,
        headers=headers,
        media_type=media_type,
    )


async def batch_manifest(job_id: str, caller: Caller, store: JobStore) -> BatchManifest:
    """The manifest of a batch job that succeeded (404 for a video job)."""
    record = await visible_job(job_id, caller, store)
    if not is_batch(record):
        raise BatchItemNotFoundError(
            f"job_id: job {job_id} is a video job: it has no items; its result is the video",
            "job_id",
        )
    if record.status is not JobStatus.succeeded:
        raise not_done(record)
    manifest = await run_in_threadpool(read_manifest, store, job_id)
    if manifest is None:  # removed in between (DELETE, expiry)
        raise not_found(job_id)
    return manifest


ITEM_ERRORS = (*VIEWING, JobNotDoneError, BatchItemNotFoundError)


@router.get(
    "/jobs/{job_id}/items", response_model=BatchManifest, responses=error_responses(*ITEM_ERRORS)
)
async def job_items(job_id: str, caller: ViewerDep, store: StoreDep) -> BatchManifest:
    """A batch job's manifest once it succeeded (the result ZIP's `manifest.json`): each item's
    name, size, output name and image size, or its error."""
    return await batch_manifest(job_id, caller, store)


@router.get(
    "/jobs/{job_id}/items/{item}",
    response_class=Response,
    responses={
        200: {
            "description": "The stylized image, as /stylize answers it.",
            "content": {
                f.media_type: {"schema": {**BINARY, "contentMediaType": f.media_type}}
                for f in OutputFormat
            },
        },
        **error_responses(*ITEM_ERRORS),
    },
)
async def job_item(job_id: str, item: str, caller: ViewerDep, store: StoreDep) -> Response:
    """One image of a batch job that succeeded, by its index (from 0) or its output name in the
    manifest; an item that failed: 404 with its error."""
    outcome = find_item(await batch_manifest(job_id, caller, store), item)
    name = str(outcome.output)
    image = await run_in_threadpool(read_item, store, job_id, name)
    if image is None:  # removed in between (DELETE, expiry)
        raise not_found(job_id)
    return Response(
        image,
        media_type=media_type_of(name),
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )


async def prepended(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(*VIEWING, PermissionDeniedError),
)
async def delete_job(job_id: str, caller: ViewerDep, services: ServicesDep) -> Response:
    """A queued or running job: canceled (its partial output removed within a second or two;
    `GET /jobs/{id}` says `canceled` until it expires). A finished job: removed with its result."""
    store = services.jobs.store
    record = await visible_job(job_id, caller, store)
    if record.status.finished:
        await run_in_threadpool(store.delete, job_id)
    else:
        await services.jobs.cancel(job_id)
    return Response(status_code=204)

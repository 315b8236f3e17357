"""Jobs: their records (`service.jobs.records`: a folder, or Redis with workers on) and their
files (`service.jobs.blobs`: the folder, or an S3-compatible object store). Any process that
reaches both (the service, a worker) reads and updates the same jobs; a record is changed by
read-modify-write that no other process interleaves, so a cancel from the API and a progress
report from the job cannot overwrite each other.

    <id>/job.json                 the record (`JobRecord`; in Redis with workers on)
    <id>/inputs/                  the uploaded video; the styles and masks, decoded
    <id>/work/                    segments and checkpoint of a job in progress
    <id>/result.mp4               the result

A process works on local copies in its scratch folder (`<ADAIN_JOBS_DIR>/.scratch/<id>/`):
an upload is checked there before it is stored; a job runs there and stores its segments at
each checkpoint, so that another process (another host) resumes it from the store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import redis
import torch

from models.errors import DomainError, error_body
from service.jobs.blobs import Blob, BlobStore, FolderBlobs, blob_store
from service.jobs.patience import Patient
from service.jobs.records import FolderRecords, Records, RedisRecords, valid_id
from service.settings import Settings

STYLES_FILE = "styles.pt"  # in a job's inputs: its styles and masks as `check_clip` decoded them


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class JobNotFoundError(DomainError):
    """No job with that id, or not the caller's (404: another key's jobs are not revealed)."""


class JobNotDoneError(DomainError):
    """The job has no result (yet): queued, running, failed or canceled (409)."""


class JobStorageFullError(DomainError):
    """ADAIN_MAX_STORED_JOB_BYTES are stored in the jobs' storage: retry once older jobs
    expire or are deleted (503)."""


@dataclass
class JobRecord:
    id: str
    owner: str  # the caller's identity (`service.security.Caller.identity`)
    status: JobStatus
    params: dict[str, Any]
    frames_total: int
    frames_done: int = 0
    progress: float = 0.0
    error: dict[str, str | None] | None = None  # {"detail", "field"} of a failed job
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    expires: float | None = None  # set when the job finishes: the result is removed then
    # A long video's parts, run at once by idle workers (`service.jobs.run`): each
    # {"start", "end", "warmup"} (`media.clip.FrameRange`), "frames_done", "done".
    parts: list[dict[str, Any]] | None = None

    def public(self) -> dict[str, Any]:
        """What GET /jobs/{id} answers: times in ISO 8601, UTC, as GET /styles gives them."""
        return {
            "id": self.id,
            "status": self.status.value,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "model": self.params.get("model"),
            # A stabilised video's flicker/detail trade-off (`media.clip.ClipParams`).
            "stability": self.params.get("stability") if self.params.get("stabilize") else None,
            "error": self.error,
            "created": iso_time(self.created),
            "expires": None if self.expires is None else iso_time(self.expires),
        }


def iso_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="microseconds")


@dataclass
class Checkpoint:
    """Frames done so far: the closed segments and the stabiliser's state after the last."""

    frames_done: int
    segments: list[dict[str, Any]]  # {"file", "first_pts", "frames"} (`media.video.Segment`)
    stabilizer: dict[str, torch.Tensor] | None


JOB = "job"  # the record's document name
CLAIM = "run"  # the lock held by the process running the job (or f"run-{part}")
WHOLE = ""  # the checkpoint folder of a job in one part
RESULT = "result.mp4"
CHECKPOINT = "checkpoint.pt"
SCRATCH = ".scratch"
STORE_PATIENCE_S = 300.0  # a running job waits this long for storage that does not answer


class JobStore:
    def __init__(
        self,
        root: Path,
        ttl_s: float,
        records: Records | None = None,
        blobs: BlobStore | None = None,
        patience_s: float = STORE_PATIENCE_S,
    ) -> None:
        """`root`: this process's folder (the store itself unless `blobs` says otherwise; its
        scratch folder in any case)."""
        self.ttl_s = ttl_s
        self.records = records or FolderRecords(root)
        self.blobs = blobs or FolderBlobs(root)
        self.scratch_root = root / SCRATCH
        self.scratch_root.mkdir(parents=True, exist_ok=True)
        self.patience_s = patience_s

    def scratch(self, job_id: str) -> Path:
        return self.scratch_root / job_id

    def inputs(self, job_id: str) -> Path:
        """The job's inputs in this process's scratch folder (`fetch_inputs` fills it)."""
        return self.scratch(job_id) / "inputs"

    def work(self, job_id: str) -> Path:
        return self.scratch(job_id) / "work"

    def patient(self) -> JobStore:
        """This store as a running job uses it: each call to its records and files retried
        while they do not answer, for up to `patience_s` (`service.jobs.patience`)."""
        return JobStore(
            self.scratch_root.parent,
            self.ttl_s,
            cast(Records, Patient(self.records, self.patience_s)),
            cast(BlobStore, Patient(self.blobs, self.patience_s)),
            self.patience_s,
        )

    # --- submission -------------------------------------------------------------------------

    def new_upload(self) -> tuple[str, Path]:
        """A fresh id and a scratch folder for its inputs, to fill and check before `create`;
        not a job until then (`discard_upload`, or `cleanup` after a crash, removes it)."""
        job_id = secrets.token_hex(16)
        inputs = self.inputs(job_id)
        inputs.mkdir(parents=True)
        return job_id, inputs

    def discard_upload(self, job_id: str) -> None:
        shutil.rmtree(self.scratch(job_id), ignore_errors=True)

    def create(
        self,
        job_id: str,
        owner: str,
        params: dict[str, Any],
        frames_total: int,
        parts: list[dict[str, Any]] | None = None,
    ) -> JobRecord:
        """The job queued: its inputs (the scratch folder's files) stored, then its record.
        A store that does not answer leaves no job (503: the client submits again)."""
        try:
            inputs = self.inputs(job_id)
            for file in sorted(path for path in inputs.rglob("*") if path.is_file()):
                self.blobs.put_file(f"{job_id}/inputs/{file.relative_to(inputs).as_posix()}", file)
            record = JobRecord(job_id, owner, JobStatus.queued, params, frames_total, parts=parts)
            self._write(record)
        except BaseException:
            with contextlib.suppress(Exception):
                self.blobs.delete_prefix(f"{job_id}/")
            raise
        finally:
            self.discard_upload(job_id)
        return record

    # --- records ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.records.read(job_id, JOB)
        return None if raw is None else _record(raw)

    def _write(self, record: JobRecord) -> None:
        record.updated = time.time()
        self.records.write(record.id, JOB, _serialized(record))

    def claim(self, job_id: str, name: str = CLAIM) -> contextlib.AbstractContextManager[bool]:
        """Whether this process may run the job now: a lock held while the job runs, and lost
        soon after its process dies, killed or not. Two processes (replicas, workers) never
        run the same job at once."""
        return self.records.lock(job_id, name)

    def update(self, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """`change(record)` applied and stored, nothing in between; the record as stored.
        Progress and frames done never go down, and a finished job stays as it finished."""

        def apply(raw: bytes) -> bytes | None:
            record = _record(raw)
            if record.status.finished:
                return None
            before = (record.progress, record.frames_done)
            change(record)
            record.progress = min(1.0, max(record.progress, before[0]))
            record.frames_done = max(record.frames_done, before[1])
            if record.status.finished:
                record.expires = time.time() + self.ttl_s
            record.updated = time.time()
            return _serialized(record)

        stored = self.records.change(job_id, JOB, apply)
        if stored is None:
            raise JobNotFoundError(f"job {job_id}: gone", "job_id")
        return _record(stored)

    def fail(self, job_id: str, detail: str, field: str | None) -> JobRecord:
        """The job failed (its error as the API answers errors); its work and inputs removed."""

        def failed(record: JobRecord) -> None:
            record.status, record.error = JobStatus.failed, error_body(detail, field)

        record = self.update(job_id, failed)
        self.remove_work(job_id)
        return record

    def jobs(self) -> list[JobRecord]:
        """Every job, oldest first."""
        records = [self.get(job_id) for job_id in self.records.ids(JOB)]
        return sorted((r for r in records if r is not None), key=lambda r: (r.created, r.id))

    def stored_bytes(self) -> int:
        """The size of every stored file: inputs, work and results of all jobs."""
        return sum(info.size for info in self.blobs.list())

    # --- a job's files while it runs ----------------------------------------------------------

    def fetch_inputs(self, job_id: str) -> Path:
        """The job's stored inputs, copied to this process's scratch folder (kept there from
        an earlier start)."""
        inputs, prefix = self.inputs(job_id), f"{job_id}/inputs/"
        for info in self.blobs.list(prefix):
            local = inputs / info.key.removeprefix(prefix)
            if not local.is_file() or local.stat().st_size != info.size:
                self.blobs.fetch(info.key, local)
        return inputs

    def save_checkpoint(self, job_id: str, checkpoint: Checkpoint, folder: str = WHOLE) -> None:
        """The new segments stored, then the checkpoint that names them (`folder`: a part's,
        under the job's work)."""
        prefix, local = _work_key(job_id, folder), self.work(job_id) / folder
        stored = {info.key.rsplit("/", 1)[1] for info in self.blobs.list(prefix)}
        for segment in checkpoint.segments:
            if segment["file"] not in stored:
                self.blobs.put_file(prefix + segment["file"], local / segment["file"])
        serialized = io.BytesIO()
        torch.save(asdict(checkpoint), serialized)
        self.blobs.put_bytes(prefix + CHECKPOINT, serialized.getvalue())

    def load_checkpoint(self, job_id: str, folder: str = WHOLE) -> Checkpoint | None:
        """The last checkpoint, its segments copied to the scratch folder; None: none yet."""
        prefix, local = _work_key(job_id, folder), self.work(job_id) / folder
        raw = self.blobs.read_bytes(prefix + CHECKPOINT)
        if raw is None:
            return None
        checkpoint = Checkpoint(**torch.load(io.BytesIO(raw), weights_only=True))
        for segment in checkpoint.segments:
            file = local / segment["file"]
            if not file.is_file() and not self.blobs.fetch(prefix + segment["file"], file):
                return None  # a segment is missing: start over rather than lose frames
        return checkpoint

    def save_result(self, job_id: str, produced: Path, name: str = RESULT) -> None:
        self.blobs.put_file(f"{job_id}/{name}", produced)

    def delete_result(self, job_id: str, name: str = RESULT) -> None:
        self.blobs.delete_prefix(f"{job_id}/{name}")

    def open_result(self, job_id: str, name: str = RESULT) -> Blob | None:
        """The result opened for reading (None: there is none): it stays readable to the end
        even if the job is deleted meanwhile."""
        return self.blobs.open(f"{job_id}/{name}")

    def result_url(
        self, job_id: str, filename: str, media_type: str, name: str = RESULT
    ) -> str | None:
        return self.blobs.presigned_url(f"{job_id}/{name}", filename, media_type)

    def has_work(self, job_id: str) -> bool:
        """Whether partial output or inputs of the job remain (a cancel waits for them to go)."""
        return self.blobs.exists(f"{job_id}/work/") or self.blobs.exists(f"{job_id}/inputs/")

    def remove_work(self, job_id: str) -> None:
        """The partial output and the inputs of a job that will not run (again)."""
        self.blobs.delete_prefix(f"{job_id}/work/")
        self.blobs.delete_prefix(f"{job_id}/inputs/")
        shutil.rmtree(self.scratch(job_id), ignore_errors=True)

    def delete(self, job_id: str) -> None:
        self.blobs.delete_prefix(f"{job_id}/")
        self.records.remove(job_id)
        shutil.rmtree(self.scratch(job_id), ignore_errors=True)

    def cleanup(self, now: float | None = None, orphan_age_s: float = 3600) -> list[str]:
        """Removes expired jobs, and stored files a crash left without a record; clears the
        scratch folder (`clear_scratch`); returns the ids of the jobs removed."""
        now = now or time.time()
        removed = []
        for record in self.jobs():
            if record.expires is not None and record.expires <= now:
                self.delete(record.id)
                removed.append(record.id)
        newest: dict[str, float] = {}
        for info in self.blobs.list():
            job_id = info.key.split("/", 1)[0]
            if valid_id(job_id):
                newest[job_id] = max(newest.get(job_id, 0.0), info.modified)
        for job_id, modified in newest.items():
            if job_id not in removed and now - modified > orphan_age_s and self.get(job_id) is None:
                self.delete(job_id)
                removed.append(job_id)
        return removed + self.clear_scratch(now, orphan_age_s)

    def clear_scratch(self, now: float | None = None, upload_age_s: float = 3600) -> list[str]:
        """Removes what this folder's scratch holds of finished jobs (a process killed mid-job
        leaves its copies; whoever resumed the job has its own), and uploads older than
        `upload_age_s` that never became a job; returns their ids. An unfinished job's copies
        stay: a process resuming it here uses them."""
        now = now or time.time()
        cleared = []
        for entry in os.scandir(self.scratch_root):
            if not valid_id(entry.name):
                continue
            record = self.get(entry.name)
            if (record is not None and record.status.finished) or (
                record is None and now - entry.stat().st_mtime > upload_age_s
            ):
                shutil.rmtree(entry.path, ignore_errors=True)
                cleared.append(entry.name)
        return cleared


def _work_key(job_id: str, folder: str) -> str:
    return f"{job_id}/work/{folder}/" if folder else f"{job_id}/work/"


def _serialized(record: JobRecord) -> bytes:
    return json.dumps(asdict(record)).encode()


def _record(raw: bytes) -> JobRecord:
    data = json.loads(raw)
    data["status"] = JobStatus(data["status"])
    return JobRecord(**data)


def job_store(settings: Settings) -> JobStore:
    """The deployment's store: files in ADAIN_STORAGE_URL (or the folder ADAIN_JOBS_DIR),
    records in Redis with ADAIN_REDIS_URL (or that folder)."""
    records: Records | None = None
    if settings.redis_url:
        records = RedisRecords(redis.Redis.from_url(settings.redis_url, socket_timeout=5.0))
    return JobStore(
        settings.jobs_dir,
        settings.job_ttl_s,
        records,
        blob_store(settings.storage_url, settings.jobs_dir),
    )

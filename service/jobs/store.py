"""Jobs on disk under ADAIN_JOBS_DIR: one folder per job with its record, inputs, checkpoint and
result. Any process that mounts the folder (the service, a worker) reads and updates the same
jobs; updates of a record are read-modify-write under a file lock, so a cancel from the API and
a progress report from the job cannot overwrite each other.

    <root>/<id>/job.json            the record (`JobRecord`), replaced atomically
    <root>/<id>/inputs/             the uploaded video; the styles and masks, decoded
    <root>/<id>/work/               segments and checkpoint of a job in progress
    <root>/<id>/result.mp4          the result (`FolderResultStore`)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch

from models.errors import DomainError, error_body
from service.files import held_lock, is_hex_id, write_atomically

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
    """ADAIN_MAX_STORED_JOB_BYTES are stored under ADAIN_JOBS_DIR: retry once older jobs
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

    def public(self) -> dict[str, Any]:
        """What GET /jobs/{id} answers: times in ISO 8601, UTC, as GET /styles gives them."""
        return {
            "id": self.id,
            "status": self.status.value,
            "progress": round(self.progress, 4),
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "model": self.params.get("model"),
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


class ResultStore(Protocol):
    """Where results live: a folder here; an object store could take its place."""

    def save(self, job_id: str, produced: Path) -> None: ...

    def path(self, job_id: str) -> Path | None: ...

    def open(self, job_id: str) -> BinaryIO | None:
        """The result opened for reading (None: there is none): it stays readable to the end
        even if the job is deleted meanwhile."""
        ...

    def delete(self, job_id: str) -> None: ...


class FolderResultStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, job_id: str) -> Path:
        return self.root / job_id / "result.mp4"

    def save(self, job_id: str, produced: Path) -> None:
        os.replace(produced, self._file(job_id))

    def path(self, job_id: str) -> Path | None:
        file = self._file(job_id)
        return file if file.is_file() else None

    def open(self, job_id: str) -> BinaryIO | None:
        try:
            return self._file(job_id).open("rb")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete(self, job_id: str) -> None:
        self._file(job_id).unlink(missing_ok=True)


def valid_id(job_id: str) -> bool:
    """A job's id: 32 hex digits."""
    return is_hex_id(job_id, 32)


class JobStore:
    def __init__(self, root: Path, ttl_s: float, results: ResultStore | None = None) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self.root.mkdir(parents=True, exist_ok=True)
        self.results = results or FolderResultStore(root)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def inputs(self, job_id: str) -> Path:
        return self.folder(job_id) / "inputs"

    def work(self, job_id: str) -> Path:
        return self.folder(job_id) / "work"

    # --- records ----------------------------------------------------------------------------

    def new_folder(self) -> tuple[str, Path]:
        """A fresh id and its inputs folder, to fill before `create`; not a job until then
        (a crash leaves a folder without a record, removed by `cleanup`)."""
        job_id = secrets.token_hex(16)
        inputs = self.inputs(job_id)
        inputs.mkdir(parents=True)
        return job_id, inputs

    def create(
        self, job_id: str, owner: str, params: dict[str, Any], frames_total: int
    ) -> JobRecord:
        record = JobRecord(job_id, owner, JobStatus.queued, params, frames_total)
        self._write(record)
        return record

    def get(self, job_id: str) -> JobRecord | None:
        if not valid_id(job_id):
            return None
        try:
            raw = json.loads((self.folder(job_id) / "job.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        raw["status"] = JobStatus(raw["status"])
        return JobRecord(**raw)

    def _write(self, record: JobRecord) -> None:
        record.updated = time.time()
        write_atomically(self.folder(record.id) / "job.json", json.dumps(asdict(record)).encode())

    @contextlib.contextmanager
    def _locked(self, job_id: str) -> Iterator[None]:
        try:
            lock = open(self.folder(job_id) / ".lock", "a")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, NotADirectoryError):  # the job was deleted meanwhile
            raise JobNotFoundError(f"job {job_id}: gone", "job_id") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def claim(self, job_id: str) -> contextlib.AbstractContextManager[bool]:
        """Whether this process may run the job now: an exclusive lock on it, held while the
        job runs and released by the system when the process ends, killed or not. Two
        processes on one folder (replicas, workers) never run the same job at once."""
        return held_lock(self.folder(job_id) / ".run.lock")

    def update(self, job_id: str, change: Callable[[JobRecord], None]) -> JobRecord:
        """`change(record)` applied and stored under the job's lock; the record as stored.
        Progress and frames done never go down, and a finished job stays as it finished."""
        with self._locked(job_id):
            record = self.get(job_id)
            if record is None:
                raise JobNotFoundError(f"job {job_id}: gone", "job_id")
            if record.status.finished:
                return record
            before = (record.progress, record.frames_done)
            change(record)
            record.progress = min(1.0, max(record.progress, before[0]))
            record.frames_done = max(record.frames_done, before[1])
            if record.status.finished:
                record.expires = time.time() + self.ttl_s
            self._write(record)
            return record

    def fail(self, job_id: str, detail: str, field: str | None) -> JobRecord:
        """The job failed (its error as the API answers errors); its work and inputs removed."""

        def failed(record: JobRecord) -> None:
            record.status, record.error = JobStatus.failed, error_body(detail, field)

        record = self.update(job_id, failed)
        self.remove_work(job_id)
        return record

    def jobs(self) -> list[JobRecord]:
        """Every job, oldest first."""
        records = [self.get(path.name) for path in self.root.iterdir() if valid_id(path.name)]
        return sorted((r for r in records if r is not None), key=lambda r: (r.created, r.id))

    def stored_bytes(self) -> int:
        """The size of every file under the root: inputs, work and results of all jobs."""
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    total += os.stat(os.path.join(folder, name)).st_size
        return total

    # --- checkpoints and files --------------------------------------------------------------

    def save_checkpoint(self, job_id: str, checkpoint: Checkpoint) -> None:
        serialized = io.BytesIO()
        torch.save(asdict(checkpoint), serialized)
        write_atomically(self.work(job_id) / "checkpoint.pt", serialized.getvalue())

    def load_checkpoint(self, job_id: str) -> Checkpoint | None:
        path = self.work(job_id) / "checkpoint.pt"
        if not path.is_file():
            return None
        return Checkpoint(**torch.load(path, weights_only=True))

    def remove_work(self, job_id: str) -> None:
        """The partial output and the inputs of a job that will not run (again)."""
        shutil.rmtree(self.work(job_id), ignore_errors=True)
        shutil.rmtree(self.inputs(job_id), ignore_errors=True)

    def delete(self, job_id: str) -> None:
        self.results.delete(job_id)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def cleanup(self, now: float | None = None, orphan_age_s: float = 3600) -> list[str]:
        """Removes expired jobs, and folders a crash left without a record; returns the ids."""
        now = now or time.time()
        removed = []
        for path in self.root.iterdir():
            if not valid_id(path.name):
                continue
            record = self.get(path.name)
            orphan = record is None and now - path.stat().st_mtime > orphan_age_s
            if orphan or (
                record is not None and record.expires is not None and record.expires <= now
            ):
                self.delete(path.name)
                removed.append(path.name)
        return removed

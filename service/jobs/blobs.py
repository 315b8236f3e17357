"""Where a job's files live (docs/jobs.md): its inputs, the segments and checkpoint of a job in
progress, its result. Two implementations of one small interface, keyed by paths such as
`<job id>/inputs/video`:

- `FolderBlobs`: a folder (ADAIN_JOBS_DIR), the embedded default; on one host, or shared.
- `S3Blobs`: any S3-compatible object store (ADAIN_STORAGE_URL=s3://bucket/prefix) through
  boto3, its endpoint and credentials from the standard AWS_* variables. With it the service
  and the workers share no disk: a worker's folder is scratch only.

A store that does not answer raises `JobFilesUnavailableError` (503 with Retry-After at the
edge); the job runner retries such calls until its patience runs out (`service.jobs.patience`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import urlsplit

from models.errors import DomainError

T = TypeVar("T")
CHUNK = 1024 * 1024
PRESIGNED_URL_S = 900  # a redirect to a result stays valid this long


class JobFilesUnavailableError(DomainError):
    """The jobs' object store does not answer (down, restarting, unreachable): temporary."""


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified: float  # unix seconds


class Blob(Protocol):
    """One stored file opened for reading: what a ranged answer needs."""

    size: int
    etag: str
    modified: float

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end; the request is made before the first chunk is asked for, so a
        file gone meanwhile fails here, before an answer has started."""
        ...

    def close(self) -> None: ...


class BlobStore(Protocol):
    def put_file(self, key: str, source: Path) -> None:
        """A copy of `source` stored under `key` (`source` stays the caller's)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def fetch(self, key: str, target: Path) -> bool:
        """The stored file copied to `target` (False: there is none)."""
        ...

    def read_bytes(self, key: str) -> bytes | None: ...

    def open(self, key: str) -> Blob | None: ...

    def exists(self, prefix: str) -> bool:
        """Whether any file's key starts with `prefix`."""
        ...

    def list(self, prefix: str = "") -> list[BlobInfo]: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def presigned_url(self, key: str, filename: str, media_type: str) -> str | None:
        """A URL that serves the file for a while without the service (None: not offered)."""
        ...


class FolderBlobs:
    """Keys are paths under `root`; files are written to a temporary name and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_file(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.part")
        temporary.unlink(missing_ok=True)
        link_or_copy(source, temporary)
        os.replace(temporary, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        from service.files import write_atomically

        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)

    def fetch(self, key: str, target: Path) -> bool:
        source = self._path(key)
        if not source.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        link_or_copy(source, target)
        return True

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def open(self, key: str) -> Blob | None:
        try:
            file = self._path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return FileBlob(file)

    def exists(self, prefix: str) -> bool:
        return self._path(prefix.rstrip("/")).exists()

    def list(self, prefix: str = "") -> list[BlobInfo]:
        found = []
        for folder, _, files in os.walk(self._path(prefix.rstrip("/")) if prefix else self.root):
            for name in files:
                path = Path(folder, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith("."):  # a process's scratch folder, not stored files
                    continue
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                    stat = path.stat()
                    found.append(BlobInfo(key, stat.st_size, stat.st_mtime))
        return found

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def presigned_url(self, key: str, filename: str, media_type: str) -> str | None:
        return None


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where both are on one file system (the scratch folder is under the root):
    the files are never rewritten in place, so sharing them costs nothing."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class FileBlob:
    """An open file: it stays readable to the end even if it is deleted meanwhile."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        stat = os.fstat(file.fileno())
        self.size = stat.st_size
        self.etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        self.modified = stat.st_mtime

    def read(self, start: int, end: int) -> Iterator[bytes]:
        def chunks(start: int) -> Iterator[bytes]:
            while start < end:
                chunk = os.pread(self.file.fileno(), min(CHUNK, end - start), start)
                if not chunk:
                    return
                start += len(chunk)
                yield chunk

        return chunks(start)

    def close(self) -> None:
        self.file.close()


class S3Blobs:
    """Keys under `prefix` in `bucket`. boto3 reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY itself, but of the regions only AWS_DEFAULT_REGION: AWS_REGION (the
    other SDKs' name) is passed on. Short timeouts so that a store that does not answer costs a
    request seconds, not minutes."""

    def __init__(self, bucket: str, prefix: str = "", create_bucket: bool = True) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        config = Config(
            connect_timeout=2,
            read_timeout=20,
            retries={"max_attempts": 2, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": "path"},
        )
        self.client = boto3.client(
            "s3", config=config, region_name=os.environ.get("AWS_REGION") or None
        )
        if create_bucket:
            self._call(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _status(exc) != 404:
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, operation: Callable[[], T]) -> T:
        """`operation`, its store faults raised as JobFilesUnavailableError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation()
        except ClientError as exc:
            if _status(exc) >= 500 or _status(exc) in (408, 429):
                raise unavailable(exc) from exc
            raise
        except BotoCoreError as exc:  # connection refused, timeouts, ...
            raise unavailable(exc) from exc

    def _found(self, operation: Callable[[], Any]) -> Any:
        """`operation`'s answer, or None where the store has no such file (404)."""
        try:
            return self._call(operation)
        except Exception as exc:
            if _missing(exc):
                return None
            raise

    def put_file(self, key: str, source: Path) -> None:
        self._call(lambda: self.client.upload_file(str(source), self.bucket, self._key(key)))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        )

    def fetch(self, key: str, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        try:
            found = self._found(  # download_file answers None: True once it has downloaded
                lambda: self.client.download_file(self.bucket, self._key(key), str(partial)) or True
            )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if found is None:
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, target)
        return True

    def read_bytes(self, key: str) -> bytes | None:
        answer = self._found(lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key)))
        return None if answer is None else self._call(answer["Body"].read)

    def open(self, key: str) -> Blob | None:
        head = self._found(lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        return None if head is None else S3Blob(self, self._key(key), head)

    def exists(self, prefix: str) -> bool:
        answer = self._call(
            lambda: self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(prefix), MaxKeys=1
            )
        )
        return bool(answer.get("KeyCount"))

    def list(self, prefix: str = "") -> list[BlobInfo]:
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        for page in self._call(lambda: list(pages)):
            for item in page.get("Contents", []):
                found.append(
                    BlobInfo(
                        item["Key"][len(self.prefix) :],
                        item["Size"],
                        item["LastModified"].timestamp(),
                    )
                )
        return found

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(info.key) for info in self.list(prefix)]
        for start in range(0, len(keys), 1000):  # S3's limit per call
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call(
                lambda batch=batch: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            )

    def presigned_url(self, key: str, filename: str, media_type: str) -> str | None:
        return self._call(
            lambda: self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(key),
                    "ResponseContentDisposition": f'inline; filename="{filename}"',
                    "ResponseContentType": media_type,
                },
                ExpiresIn=PRESIGNED_URL_S,
            )
        )


class S3Blob:
    def __init__(self, store: S3Blobs, key: str, head: dict[str, Any]) -> None:
        self.store = store
        self.key = key
        self.size = int(head["ContentLength"])
        self.etag = head["ETag"]
        self.modified = head["LastModified"].timestamp()
        self._body: Any = None

    def read(self, start: int, end: int) -> Iterator[bytes]:
        if end <= start:
            return iter(())
        store = self.store
        answer = store._call(
            lambda: store.client.get_object(
                Bucket=store.bucket,
                Key=self.key,
                Range=f"bytes={start}-{end - 1}",
                IfMatch=self.etag,
            )
        )
        self._body = answer["Body"]
        return self._body.iter_chunks(CHUNK)

    def close(self) -> None:
        if self._body is not None:
            self._body.close()


def _status(exc: Exception) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _missing(exc: Exception) -> bool:
    """A 404 (or a 412: the file changed since it was opened) from the store."""
    return _status(exc) in (404, 412) or getattr(exc, "response", {}).get("Error", {}).get(
        "Code"
    ) in ("404", "NoSuchKey")


def unavailable(exc: Exception) -> JobFilesUnavailableError:
    return JobFilesUnavailableError(
        f"the jobs' object store does not answer ({type(exc).__name__}); try again shortly"
    )


def blob_store(storage_url: str, jobs_dir: Path) -> BlobStore:
    """ADAIN_STORAGE_URL: empty for the folder ADAIN_JOBS_DIR, or s3://bucket/prefix."""
    if not storage_url:
        return FolderBlobs(jobs_dir)
    parts = urlsplit(storage_url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"ADAIN_STORAGE_URL: s3://bucket/prefix expected, not {storage_url!r}")
    return S3Blobs(parts.netloc, parts.path)

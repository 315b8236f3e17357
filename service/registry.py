"""Registered styles: image bytes + metadata, on disk (default) or in Redis (shared by replicas).

A style's id is the sha256 of its bytes, so registering the same file again is idempotent: of
concurrent registrations of one file exactly one creates the style (an atomic create: a hard
link on disk, HSETNX in Redis), the others get the stored record. A fault of the store (Redis
gone, the styles folder unreadable or full) is a temporary domain error, answered 503 (507 for
a full disk) until the store is back; a corrupt record is skipped and logged, never fatal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from starlette.concurrency import run_in_threadpool

from models.errors import DomainError
from service import metrics

log = logging.getLogger("service.registry")


class StyleNotFoundError(DomainError):
    """No registered style has the id asked for."""


class RedisUnavailableError(DomainError):
    """Redis, which holds the registry, does not answer: temporary, retry shortly."""


class StorageUnavailableError(DomainError):
    """The styles folder cannot be read or written (missing volume, not a folder, I/O error)."""


class StorageFullError(StorageUnavailableError):
    """The styles folder's disk (or quota) is full."""


@contextmanager
def redis_faults(action: str) -> Iterator[None]:
    """Redis errors inside become `RedisUnavailableError`, logged and counted."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("redis unavailable", extra={"action": action, "error": repr(exc)})
        metrics.DEPENDENCY_ERRORS.labels("redis").inc()
        if isinstance(exc, ResponseError) and str(exc).startswith("OOM"):
            raise StorageFullError(
                "the style registry cannot store the style: Redis is out of memory (maxmemory)"
            ) from exc
        raise RedisUnavailableError(
            f"the style registry is unavailable: Redis does not answer ({type(exc).__name__}); "
            "retry shortly"
        ) from exc


@contextmanager
def disk_faults(action: str) -> Iterator[None]:
    """File-system errors inside become `StorageFullError` (ENOSPC, EDQUOT) or
    `StorageUnavailableError`, logged with the path and counted."""
    try:
        yield
    except OSError as exc:
        log.warning("styles folder unavailable", extra={"action": action, "error": repr(exc)})
        metrics.DEPENDENCY_ERRORS.labels("styles_dir").inc()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(
                f"the style registry cannot {action}: its disk is full (ADAIN_STYLES_DIR)"
            ) from exc
        reason = exc.strerror or type(exc).__name__
        raise StorageUnavailableError(
            f"the style registry cannot {action}: {reason} (ADAIN_STYLES_DIR); retry later"
        ) from exc


@dataclass(frozen=True)
class StyleRecord:
    id: str
    name: str
    width: int
    height: int
    created: str  # ISO 8601, UTC


def parse_record(raw: bytes | str) -> StyleRecord | None:
    """The record stored as JSON, or None (logged) when it is corrupt."""
    try:
        fields = json.loads(raw)
        if isinstance(fields, dict):
            return StyleRecord(**fields)
    except (ValueError, TypeError):
        pass
    log.warning("skipped a corrupt style record", extra={"record": repr(raw[:200])})
    return None


def style_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_record(data: bytes, name: str, width: int, height: int) -> StyleRecord:
    """A record created now; an empty name becomes the id's first 12 digits."""
    id_ = style_id(data)
    created = datetime.now(UTC).isoformat(timespec="microseconds")
    return StyleRecord(id_, name or id_[:12], width, height, created)


class StyleRegistry(Protocol):
    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        """Store a style; returns (the stored record, whether it is new)."""
        ...

    async def get(self, id_: str) -> StyleRecord | None: ...

    async def image(self, id_: str) -> bytes | None: ...

    async def list(self) -> list[StyleRecord]: ...

    async def delete(self, id_: str) -> bool: ...


def valid_id(id_: str) -> bool:
    """Ids are 64 hex digits; anything else (e.g. '../x') never reaches the file system."""
    return len(id_) == 64 and all(c in "0123456789abcdef" for c in id_)


def write_temporary(folder: Path, prefix: str, data: bytes) -> Path:
    """A new file in `folder` holding `data`, flushed to the disk."""
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=prefix)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder and rename: readers never see half a file."""
    temporary = write_temporary(path.parent, f".{path.name}.", data)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class DiskRegistry:
    """`<dir>/<id>.image` (the uploaded bytes) and `<dir>/<id>.json` (the record).

    The record is written last, so a style exists exactly when its JSON does. A folder that
    cannot be created at start is logged; the registry answers 503 until it can be.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            with disk_faults("create its folder"):
                folder.mkdir(parents=True, exist_ok=True)
        except StorageUnavailableError:
            pass  # logged; the next registration tries again

    def paths(self, id_: str) -> tuple[Path, Path]:
        return self.folder / f"{id_}.image", self.folder / f"{id_}.json"

    def read(self, record_path: Path) -> StyleRecord | None:
        try:
            return parse_record(record_path.read_bytes())
        except FileNotFoundError:
            return None

    def create(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        """The record is hard-linked into place, which fails when it exists: of concurrent
        registrations of one file one creates, the others read its record."""
        self.folder.mkdir(parents=True, exist_ok=True)
        image_path, record_path = self.paths(record.id)
        stored = self.read(record_path)
        if stored is not None:
            return stored, False
        write_atomically(image_path, data)  # the same id is the same bytes: replacing is harmless
        encoded = json.dumps(asdict(record)).encode()
        temporary = write_temporary(self.folder, f".{record_path.name}.", encoded)
        try:
            os.link(temporary, record_path)
            return record, True
        except FileExistsError:
            stored = self.read(record_path)
            if stored is not None:
                return stored, False
            os.replace(temporary, record_path)  # the one there is corrupt: this repairs it
            return record, True
        finally:
            temporary.unlink(missing_ok=True)

    def read_image(self, id_: str) -> bytes | None:
        image_path, record_path = self.paths(id_)
        if self.read(record_path) is None:
            return None
        try:
            return image_path.read_bytes()
        except FileNotFoundError:
            return None

    def read_all(self) -> list[StyleRecord]:
        try:  # not Path.glob, which reads an unreadable folder as an empty one
            with os.scandir(self.folder) as entries:
                names = [entry.name for entry in entries if entry.name.endswith(".json")]
        except FileNotFoundError:
            return []  # nothing registered yet
        paths = [self.folder / name for name in names if not name.startswith(".")]
        records = [record for path in paths if (record := self.read(path)) is not None]
        return sorted(records, key=lambda r: (r.created, r.id))

    def remove(self, id_: str) -> bool:
        image_path, record_path = self.paths(id_)
        try:
            record_path.unlink()  # first: the style is gone as soon as this returns
        except FileNotFoundError:
            return False
        image_path.unlink(missing_ok=True)
        return True

    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        with disk_faults("store the style"):
            return await run_in_threadpool(self.create, record, data)

    async def get(self, id_: str) -> StyleRecord | None:
        if not valid_id(id_):
            return None
        with disk_faults("read the style"):
            return await run_in_threadpool(self.read, self.paths(id_)[1])

    async def image(self, id_: str) -> bytes | None:
        if not valid_id(id_):
            return None
        with disk_faults("read the style"):
            return await run_in_threadpool(self.read_image, id_)

    async def list(self) -> list[StyleRecord]:
        with disk_faults("list the styles"):
            return await run_in_threadpool(self.read_all)

    async def delete(self, id_: str) -> bool:
        if not valid_id(id_):
            return False
        with disk_faults("delete the style"):
            return await run_in_threadpool(self.remove, id_)


class RedisRegistry:
    """Hash `adain:styles` (id -> record JSON) and `adain:style:<id>` (the image bytes)."""

    records_key = "adain:styles"
    image_prefix = "adain:style:"

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        # Image first, record second (HSETNX: the first writer wins), as on disk.
        with redis_faults("add"):
            await self.client.set(self.image_prefix + record.id, data)
            encoded = json.dumps(asdict(record))
            if await self.client.hsetnx(self.records_key, record.id, encoded):
                return record, True
            raw = await self.client.hget(self.records_key, record.id)
        stored = None if raw is None else parse_record(raw)
        if stored is not None:
            return stored, False
        with redis_faults("add"):  # deleted meanwhile, or corrupt: this record replaces it
            await self.client.hset(self.records_key, record.id, encoded)
        return record, True

    async def get(self, id_: str) -> StyleRecord | None:
        with redis_faults("get"):
            raw = await self.client.hget(self.records_key, id_)
        return None if raw is None else parse_record(raw)

    async def image(self, id_: str) -> bytes | None:
        with redis_faults("image"):
            if await self.client.hexists(self.records_key, id_):
                return await self.client.get(self.image_prefix + id_)
        return None

    async def list(self) -> list[StyleRecord]:
        with redis_faults("list"):
            raw = await self.client.hvals(self.records_key)
        records = [record for value in raw if (record := parse_record(value)) is not None]
        return sorted(records, key=lambda r: (r.created, r.id))

    async def delete(self, id_: str) -> bool:
        with redis_faults("delete"):
            deleted = await self.client.hdel(self.records_key, id_)
            await self.client.delete(self.image_prefix + id_)
        return bool(deleted)

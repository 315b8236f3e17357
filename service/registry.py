"""Registered styles: image bytes + metadata, on disk (default) or in Redis (shared by replicas).

A style's id is the sha256 of its bytes, so registering the same file again is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from starlette.concurrency import run_in_threadpool

from models.errors import DomainError


class StyleNotFoundError(DomainError):
    """No registered style has the id asked for."""


@dataclass(frozen=True)
class StyleRecord:
    id: str
    name: str
    width: int
    height: int
    created: str  # ISO 8601, UTC


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


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder and rename: readers never see half a file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class DiskRegistry:
    """`<dir>/<id>.image` (the uploaded bytes) and `<dir>/<id>.json` (the record).

    The record is written last, so a style exists exactly when its JSON does.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def paths(self, id_: str) -> tuple[Path, Path]:
        return self.folder / f"{id_}.image", self.folder / f"{id_}.json"

    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        existing = await self.get(record.id)
        if existing is not None:
            return existing, False
        image_path, record_path = self.paths(record.id)
        await run_in_threadpool(write_atomically, image_path, data)
        await run_in_threadpool(write_atomically, record_path, json.dumps(asdict(record)).encode())
        return record, True

    async def get(self, id_: str) -> StyleRecord | None:
        if not valid_id(id_):
            return None
        try:
            return StyleRecord(**json.loads(self.paths(id_)[1].read_text()))
        except FileNotFoundError:
            return None

    async def image(self, id_: str) -> bytes | None:
        if not valid_id(id_) or not self.paths(id_)[1].exists():
            return None
        try:
            return await run_in_threadpool(self.paths(id_)[0].read_bytes)
        except FileNotFoundError:
            return None

    async def list(self) -> list[StyleRecord]:
        records = [StyleRecord(**json.loads(p.read_text())) for p in self.folder.glob("*.json")]
        return sorted(records, key=lambda r: (r.created, r.id))

    async def delete(self, id_: str) -> bool:
        if await self.get(id_) is None:
            return False
        image_path, record_path = self.paths(id_)
        record_path.unlink(missing_ok=True)  # first: the style is gone as soon as this returns
        image_path.unlink(missing_ok=True)
        return True


class RedisRegistry:
    """Hash `adain:styles` (id -> record JSON) and `adain:style:<id>` (the image bytes)."""

    records_key = "adain:styles"
    image_prefix = "adain:style:"

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        # Image first, record second (HSETNX: the first writer wins), as on disk.
        await self.client.set(self.image_prefix + record.id, data)
        created = await self.client.hsetnx(self.records_key, record.id, json.dumps(asdict(record)))
        if created:
            return record, True
        existing = await self.get(record.id)
        assert existing is not None
        return existing, False

    async def get(self, id_: str) -> StyleRecord | None:
        raw = await self.client.hget(self.records_key, id_)
        return None if raw is None else StyleRecord(**json.loads(raw))

    async def image(self, id_: str) -> bytes | None:
        if await self.client.hexists(self.records_key, id_):
            return await self.client.get(self.image_prefix + id_)
        return None

    async def list(self) -> list[StyleRecord]:
        raw = await self.client.hvals(self.records_key)
        records = [StyleRecord(**json.loads(value)) for value in raw]
        return sorted(records, key=lambda r: (r.created, r.id))

    async def delete(self, id_: str) -> bool:
        deleted = await self.client.hdel(self.records_key, id_)
        await self.client.delete(self.image_prefix + id_)
        return bool(deleted)

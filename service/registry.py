"""Registered styles: image bytes + metadata, on disk (default) or in Redis (shared by replicas).

A style's id is the sha256 of its bytes, so registering the same file again is idempotent: of
concurrent registrations of one file exactly one creates the style (an atomic create: a hard
link on disk, HSETNX in Redis), the others get the stored record. A style also has a name,
unique per owner (the API key that registered it; one owner when keys are off), claimed by the
same kind of atomic create before the record is written, and usable wherever an id is.

A fault of the store (Redis gone, the styles folder unreadable or full) is a temporary domain
error, answered 503 (507 for a full disk) until the store is back; a corrupt record is skipped
and logged, never fatal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from starlette.concurrency import run_in_threadpool

from models.errors import DomainError, InvalidInputError
from service import metrics
from service.files import is_hex_id, write_atomically, write_temporary

log = logging.getLogger("service.registry")


class StyleNotFoundError(DomainError):
    """No registered style has the id asked for."""


class NameTakenError(DomainError):
    """Another style of the same owner has the name asked for (409)."""


class AlreadyRegisteredError(DomainError):
    """The image is registered already under another name, which it keeps (409): a style
    has one name, so a second one would be dropped without a word."""


class AmbiguousNameError(InvalidInputError):
    """Styles of several owners have the name, none of them the caller's: use an id."""


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
    owner: str | None = None  # the registering key's identity when keys are on; never shown


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


def record_json(record: StyleRecord) -> str:
    """The record as stored: without an owner when keys are off (the format before owners)."""
    fields = asdict(record)
    if record.owner is None:
        del fields["owner"]
    return json.dumps(fields)


def style_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_record(
    data: bytes, name: str, width: int, height: int, owner: str | None = None
) -> StyleRecord:
    """A record created now; an empty name becomes the id's first 12 digits."""
    id_ = style_id(data)
    created = datetime.now(UTC).isoformat(timespec="microseconds")
    return StyleRecord(id_, name or id_[:12], width, height, created, owner)


def valid_id(id_: str) -> bool:
    """A style's id: 64 hex digits (its image's SHA-256)."""
    return is_hex_id(id_, 64)


# --- names -----------------------------------------------------------------------------------

MAX_NAME_LENGTH = 200
# A name claimed by a registration that never wrote its record (the process died in between)
# is free again after this long; a younger claim belongs to a registration still in progress.
UNFINISHED_CLAIM_S = 60.0


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a style (a phrase), or None when it can."""
    if not name.strip():
        return "is empty"
    if name != name.strip():
        return "starts or ends with a space"
    if len(name) > MAX_NAME_LENGTH:
        return f"has {len(name)} characters; the limit is {MAX_NAME_LENGTH}"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "has control characters"
    if "/" in name:
        return "has a '/' (names are used in URLs: /styles/{name})"
    if valid_id(name.lower()):
        return "is 64 hex digits, which is how ids are written"
    return None


def derived_name(file_name_stem: str, id_: str) -> str:
    """A valid name made from an upload's file name: the rejected characters dropped."""
    kept = "".join(c for c in file_name_stem if c != "/" and unicodedata.category(c)[0] != "C")
    kept = kept.strip()[:MAX_NAME_LENGTH].strip()
    return kept if kept and name_problem(kept) is None else id_[:12]


def name_key(name: str) -> str:
    """Names are compared as a reader would: 'Candy' and 'candy' are one name."""
    return unicodedata.normalize("NFKC", name).casefold()


def name_taken(name: str, holder: str) -> NameTakenError:
    return NameTakenError(
        f"name {name[:80]!r} is taken by another style (id {holder[:12]}...): choose another "
        "name, or use that style",
        "name",
    )


class StyleRegistry(Protocol):
    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        """Store a style; returns (the stored record, whether it is new). Raises
        `NameTakenError` when the owner has another style of that name."""
        ...

    async def get(self, id_: str) -> StyleRecord | None: ...

    async def find(self, reference: str, owner: str | None) -> StyleRecord | None:
        """The style with this id, or this name: the owner's, else the only one of that name."""
        ...

    async def image(self, id_: str) -> bytes | None: ...

    async def list(self) -> list[StyleRecord]: ...

    async def delete(self, id_: str) -> bool: ...


class NamedRegistry:
    """What both stores share: names claimed around the record's creation, lookups by name.

    A store provides the record operations (`get`, `store_style`, `remove_style`) and the name
    claims (`claim_name`, `release_name`, `name_holders`)."""

    async def get(self, id_: str) -> StyleRecord | None:
        raise NotImplementedError

    async def store_style(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        raise NotImplementedError

    async def remove_style(self, id_: str) -> bool:
        raise NotImplementedError

    async def claim_name(self, record: StyleRecord) -> bool:
        """Claims the record's name for its owner: True when this call made the claim, False
        when the name already points at this id. Raises `NameTakenError` otherwise."""
        raise NotImplementedError

    async def release_name(self, record: StyleRecord) -> None:
        """Drops the claim of the record's name if it points at the record."""
        raise NotImplementedError

    async def name_holders(self, name: str, owner: str | None) -> tuple[str | None, list[str]]:
        """(the id the owner's claim of `name` points at, the ids of every owner's claim)."""
        raise NotImplementedError

    async def add(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        stored = await self.get(record.id)
        if stored is not None:
            return stored, False
        claimed = await self.claim_name(record)
        try:
            stored, created = await self.store_style(record, data)
        except BaseException:
            if claimed:
                with suppress(DomainError):  # left behind, it frees itself (UNFINISHED_CLAIM_S)
                    await self.release_name(record)
            raise
        same_name = (name_key(stored.name), stored.owner) == (name_key(record.name), record.owner)
        if claimed and not same_name:  # a concurrent registration of the file won, named
            await self.release_name(record)
        return stored, created

    async def find(self, reference: str, owner: str | None) -> StyleRecord | None:
        if valid_id(reference):
            return await self.get(reference)
        if name_problem(reference) is not None:
            return None
        own, holders = await self.name_holders(reference, owner)
        if own is None and len(set(holders)) > 1:
            raise AmbiguousNameError(
                f"{len(set(holders))} styles of other owners are named {reference[:80]!r}: "
                "use the id of the one you mean (GET /styles)",
                "style_id",
            )
        chosen = own or (holders[0] if holders else None)
        return None if chosen is None else await self.get(chosen)

    async def delete(self, id_: str) -> bool:
        record = await self.get(id_)
        if record is None or not await self.remove_style(id_):
            return False
        await self.release_name(record)
        return True



async def find_style(registry: StyleRegistry, reference: str, owner: str | None) -> StyleRecord:
    """The style an id or a name refers to (the owner's name first), or a 404 naming
    `style_id`. The one look-up of /styles, /stylize, /jobs and live mode."""
    record = await registry.find(reference, owner)
    if record is None:
        raise StyleNotFoundError(f"no style with id or name {reference[:80]!r}", "style_id")
    return record


async def style_image(
    registry: StyleRegistry, reference: str, owner: str | None, field: str
) -> bytes:
    """The image of the style an id or name refers to; a 404 whose message names `field`
    (`style_id[2]`, say)."""
    try:
        record = await find_style(registry, reference, owner)
        data = await registry.image(record.id)
    except StyleNotFoundError as error:
        raise StyleNotFoundError(f"{field}: {error.detail}", "style_id") from None
    if data is None:  # deleted in between
        raise StyleNotFoundError(
            f"{field}: no style with id or name {reference[:80]!r}", "style_id"
        )
    return data

def digest_of(text: str) -> str:
    """A file name for any text (names and owners may hold any character)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DiskRegistry(NamedRegistry):
    """`<dir>/<id>.image` (the uploaded bytes), `<dir>/<id>.json` (the record) and
    `<dir>/names/<name digest>/<owner digest>` (the id that owner's name points at).

    The record is written last, so a style exists exactly when its JSON does. A folder that
    cannot be created at start is logged; the registry answers 503 until it can be.
    The methods ending in `_file(s)` are the blocking file operations the others run off
    the event loop.
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

    def name_folder(self, name: str) -> Path:
        return self.folder / "names" / digest_of(name_key(name))

    def claim_path(self, name: str, owner: str | None) -> Path:
        return self.name_folder(name) / digest_of(owner or "")

    def read_record_file(self, record_path: Path) -> StyleRecord | None:
        try:
            return parse_record(record_path.read_bytes())
        except FileNotFoundError:
            return None

    def write_style_files(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        """The record is hard-linked into place, which fails when it exists: of concurrent
        registrations of one file one creates, the others read its record."""
        self.folder.mkdir(parents=True, exist_ok=True)
        image_path, record_path = self.paths(record.id)
        stored = self.read_record_file(record_path)
        if stored is not None:
            return stored, False
        write_atomically(image_path, data)  # the same id is the same bytes: replacing is harmless
        encoded = record_json(record).encode()
        temporary = write_temporary(self.folder, f".{record_path.name}.", encoded)
        try:
            os.link(temporary, record_path)
            return record, True
        except FileExistsError:
            stored = self.read_record_file(record_path)
            if stored is not None:
                return stored, False
            os.replace(temporary, record_path)  # the one there is corrupt: this repairs it
            return record, True
        finally:
            temporary.unlink(missing_ok=True)

    def read_image_file(self, id_: str) -> bytes | None:
        image_path, record_path = self.paths(id_)
        if self.read_record_file(record_path) is None:
            return None
        try:
            return image_path.read_bytes()
        except FileNotFoundError:
            return None

    def read_record_files(self) -> list[StyleRecord]:
        try:  # not Path.glob, which reads an unreadable folder as an empty one
            with os.scandir(self.folder) as entries:
                names = [entry.name for entry in entries if entry.name.endswith(".json")]
        except FileNotFoundError:
            return []  # nothing registered yet
        paths = [self.folder / name for name in names if not name.startswith(".")]
        records = [record for path in paths if (record := self.read_record_file(path)) is not None]
        return sorted(records, key=lambda r: (r.created, r.id))

    def remove_style_files(self, id_: str) -> bool:
        image_path, record_path = self.paths(id_)
        try:
            record_path.unlink()  # first: the style is gone as soon as this returns
        except FileNotFoundError:
            return False
        image_path.unlink(missing_ok=True)
        return True

    @staticmethod
    def read_claim_file(path: Path) -> str | None:
        try:
            holder = path.read_text().strip()
        except FileNotFoundError:
            return None
        return holder if valid_id(holder) else None

    def write_claim_file(self, record: StyleRecord) -> bool:
        path = self.claim_path(record.name, record.owner)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = write_temporary(path.parent, ".claim.", record.id.encode())
        try:
            try:
                os.link(temporary, path)  # fails when the name is claimed: an atomic create
                return True
            except FileExistsError:
                pass
            holder = self.read_claim_file(path)
            if holder == record.id:
                return False
            if holder is not None:
                unfinished = time.time() - path.stat().st_mtime < UNFINISHED_CLAIM_S
                if unfinished or self.paths(holder)[1].exists():
                    raise name_taken(record.name, holder)
            os.replace(temporary, path)  # a claim whose registration never finished
            return True
        finally:
            temporary.unlink(missing_ok=True)

    def remove_claim_file(self, record: StyleRecord) -> None:
        path = self.claim_path(record.name, record.owner)
        if self.read_claim_file(path) == record.id:
            path.unlink(missing_ok=True)
            with suppress(OSError):  # not empty: other owners' claims of the name
                path.parent.rmdir()

    def read_claim_files(self, name: str, owner: str | None) -> tuple[str | None, list[str]]:
        folder = self.name_folder(name)
        try:
            with os.scandir(folder) as entries:
                files = [entry.name for entry in entries if not entry.name.startswith(".")]
        except FileNotFoundError:
            return None, []
        holders = [holder for f in files if (holder := self.read_claim_file(folder / f))]
        return self.read_claim_file(self.claim_path(name, owner)), holders

    async def store_style(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        with disk_faults("store the style"):
            return await run_in_threadpool(self.write_style_files, record, data)

    async def get(self, id_: str) -> StyleRecord | None:
        if not valid_id(id_):
            return None
        with disk_faults("read the style"):
            return await run_in_threadpool(self.read_record_file, self.paths(id_)[1])

    async def image(self, id_: str) -> bytes | None:
        if not valid_id(id_):
            return None
        with disk_faults("read the style"):
            return await run_in_threadpool(self.read_image_file, id_)

    async def list(self) -> list[StyleRecord]:
        with disk_faults("list the styles"):
            return await run_in_threadpool(self.read_record_files)

    async def remove_style(self, id_: str) -> bool:
        if not valid_id(id_):
            return False
        with disk_faults("delete the style"):
            return await run_in_threadpool(self.remove_style_files, id_)

    async def claim_name(self, record: StyleRecord) -> bool:
        with disk_faults("store the style"):
            return await run_in_threadpool(self.write_claim_file, record)

    async def release_name(self, record: StyleRecord) -> None:
        with disk_faults("delete the style"):
            await run_in_threadpool(self.remove_claim_file, record)

    async def name_holders(self, name: str, owner: str | None) -> tuple[str | None, list[str]]:
        with disk_faults("read the style"):
            return await run_in_threadpool(self.read_claim_files, name, owner)


class RedisRegistry(NamedRegistry):
    """Hash `adain:styles` (id -> record JSON), `adain:style:<id>` (the image bytes) and one
    hash per name, `adain:style-name:<name>` (owner -> {"id", "claimed"})."""

    records_key = "adain:styles"
    image_prefix = "adain:style:"
    name_prefix = "adain:style-name:"

    def __init__(self, client: Redis) -> None:
        self.client = client

    async def store_style(self, record: StyleRecord, data: bytes) -> tuple[StyleRecord, bool]:
        # Image first, record second (HSETNX: the first writer wins), as on disk.
        with redis_faults("add"):
            await self.client.set(self.image_prefix + record.id, data)
            encoded = record_json(record)
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

    async def remove_style(self, id_: str) -> bool:
        with redis_faults("delete"):
            deleted = await self.client.hdel(self.records_key, id_)
            await self.client.delete(self.image_prefix + id_)
        return bool(deleted)

    @staticmethod
    def parse_claim(raw: bytes | str | None) -> tuple[str, float] | None:
        """(id, when claimed) of a claim, or None when absent or unreadable."""
        try:
            claim = json.loads(raw) if raw is not None else None
            return (claim["id"], float(claim["claimed"])) if valid_id(claim["id"]) else None
        except (ValueError, TypeError, KeyError):
            return None

    async def claim_name(self, record: StyleRecord) -> bool:
        key, owner = self.name_prefix + name_key(record.name), record.owner or ""
        value = json.dumps({"id": record.id, "claimed": time.time()})
        with redis_faults("add"):
            if await self.client.hsetnx(key, owner, value):  # an atomic create
                return True
            claim = self.parse_claim(await self.client.hget(key, owner))
            if claim is not None and claim[0] == record.id:
                return False
            if claim is not None and (
                time.time() - claim[1] < UNFINISHED_CLAIM_S
                or await self.client.hexists(self.records_key, claim[0])
            ):
                raise name_taken(record.name, claim[0])
            await self.client.hset(key, owner, value)  # a claim whose registration never finished
        return True

    async def release_name(self, record: StyleRecord) -> None:
        key, owner = self.name_prefix + name_key(record.name), record.owner or ""
        with redis_faults("delete"):
            claim = self.parse_claim(await self.client.hget(key, owner))
            if claim is not None and claim[0] == record.id:
                await self.client.hdel(key, owner)

    async def name_holders(self, name: str, owner: str | None) -> tuple[str | None, list[str]]:
        with redis_faults("get"):
            raw = await self.client.hgetall(self.name_prefix + name_key(name))
        claims = {
            (slot.decode() if isinstance(slot, bytes) else slot): claim
            for slot, value in raw.items()
            if (claim := self.parse_claim(value)) is not None
        }
        own = claims.get(owner or "")
        return (own[0] if own else None), [claim[0] for claim in claims.values()]

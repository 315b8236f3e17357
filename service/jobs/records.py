"""Where jobs' records live (docs/jobs.md): small JSON documents per job (`job`: its state,
`webhook`: its deliveries), changed by read-modify-write that no other process interleaves, and
the locks that let one process at a time run a job or deliver its webhooks.

- `FolderRecords`: files in the job's folder, `fcntl` locks; the embedded default, and any
  deployment whose processes share the folder.
- `RedisRecords`: keys in the deployment's Redis, with ADAIN_REDIS_URL (workers on). Records
  change many times a second while jobs run and must change atomically across hosts: Redis
  gives that (WATCH/MULTI), an object store does not, so the files go to the store and the
  records to Redis. Locks are keys with an expiry that their holder renews: a holder killed
  with SIGKILL loses its lock within `LOCK_TTL_S`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import redis

from service.files import held_lock, is_hex_id, write_atomically
from service.registry import RedisUnavailableError

# The document's current content -> its new content, or None to leave it as it is.
Change = Callable[[bytes], bytes | None]

LOCK_TTL_S = 15.0  # a lock whose holder died is free again this long after its last renewal
KEY = "adain:job:{}:{}"  # job id, document name
INDEX = "adain:jobs:{}"  # document name -> set of the ids that have one
LOCK = "adain:job-lock:{}:{}"  # job id, lock name


class Records(Protocol):
    def read(self, job_id: str, name: str) -> bytes | None: ...

    def write(self, job_id: str, name: str, data: bytes) -> None: ...

    def change(self, job_id: str, name: str, change: Change) -> bytes | None:
        """`change(current)` stored, no other change between its read and its write; returns
        the document as stored (None: there is none, and none is made)."""
        ...

    def ids(self, name: str) -> list[str]:
        """The jobs that have a document `name`."""
        ...

    def remove(self, job_id: str) -> None:
        """Every document and lock of the job."""
        ...

    def lock(self, job_id: str, name: str) -> contextlib.AbstractContextManager[bool]:
        """Whether this process holds the job's lock `name` now (False: another one does);
        held until the block ends or the process dies."""
        ...


def valid_id(job_id: str) -> bool:
    """A job's id: 32 hex digits."""
    return is_hex_id(job_id, 32)


class FolderRecords:
    """`<root>/<id>/<name>.json`, beside the job's files when the blobs share the folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, job_id: str, name: str) -> Path:
        return self.root / job_id / f"{name}.json"

    def read(self, job_id: str, name: str) -> bytes | None:
        if not valid_id(job_id):
            return None
        try:
            return self._file(job_id, name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write(self, job_id: str, name: str, data: bytes) -> None:
        (self.root / job_id).mkdir(parents=True, exist_ok=True)
        write_atomically(self._file(job_id, name), data)

    def change(self, job_id: str, name: str, change: Change) -> bytes | None:
        try:
            lock = open(self.root / job_id / ".lock", "a")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, NotADirectoryError):  # the job was deleted meanwhile
            return None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.read(job_id, name)
                changed = None if current is None else change(current)
                if changed is None:
                    return current
                with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                    write_atomically(self._file(job_id, name), changed)
                return changed
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def ids(self, name: str) -> list[str]:
        return [
            entry.name
            for entry in os.scandir(self.root)
            if valid_id(entry.name) and os.path.isfile(self._file(entry.name, name))
        ]

    def remove(self, job_id: str) -> None:
        folder = self.root / job_id
        for file in (*folder.glob("*.json"), *folder.glob(".*lock")):
            file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # files of the job's blobs remain: not empty
            folder.rmdir()

    def lock(self, job_id: str, name: str) -> contextlib.AbstractContextManager[bool]:
        return held_lock(self.root / job_id / f".{name}.lock")


class RedisRecords:
    """Documents as Redis strings, an index set per document name, locks that expire."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise RedisUnavailableError(
                "the jobs' records (Redis) do not answer; try again shortly", None
            ) from exc

    def read(self, job_id: str, name: str) -> bytes | None:
        if not valid_id(job_id):
            return None
        with self._answering():
            return self.client.get(KEY.format(job_id, name))  # type: ignore[return-value]

    def write(self, job_id: str, name: str, data: bytes) -> None:
        with self._answering():
            pipe = self.client.pipeline()
            pipe.set(KEY.format(job_id, name), data)
            pipe.sadd(INDEX.format(name), job_id)
            pipe.execute()

    def change(self, job_id: str, name: str, change: Change) -> bytes | None:
        key = KEY.format(job_id, name)
        outcome: list[bytes | None] = []

        def transaction(pipe: redis.client.Pipeline) -> None:
            current = pipe.get(key)
            changed = None if current is None else change(current)  # type: ignore[arg-type]
            outcome[:] = [current if changed is None else changed]
            if changed is not None:
                pipe.multi()
                pipe.set(key, changed)

        with self._answering():
            self.client.transaction(transaction, key)
        return outcome[0]

    def ids(self, name: str) -> list[str]:
        with self._answering():
            members = self.client.smembers(INDEX.format(name))
        return sorted(m.decode() for m in members)  # type: ignore[union-attr]

    def remove(self, job_id: str) -> None:
        with self._answering():
            names = [
                key.decode().rsplit(":", 1)[1]
                for key in self.client.scan_iter(match=KEY.format(job_id, "*"))
            ]
            pipe = self.client.pipeline()
            for name in names:
                pipe.delete(KEY.format(job_id, name))
                pipe.srem(INDEX.format(name), job_id)
            pipe.execute()

    @contextlib.contextmanager
    def lock(self, job_id: str, name: str) -> Iterator[bool]:
        key, token = LOCK.format(job_id, name), secrets.token_hex(8)
        with self._answering():
            held = bool(self.client.set(key, token, nx=True, px=int(LOCK_TTL_S * 1000)))
        if not held:
            yield False
            return
        renewing = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(key, token, renewing), daemon=True, name=f"lock-{name}"
        )
        renewer.start()
        try:
            yield True
        finally:
            renewing.set()
            renewer.join()
            with contextlib.suppress(redis.RedisError, OSError):
                self._release(key, token)

    def _renew(self, key: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(LOCK_TTL_S / 3):
            with contextlib.suppress(redis.RedisError, OSError):  # renewed at the next turn
                if self._extend(key, token) == 0:
                    return  # lost (expired while Redis was away): nothing to renew

    # Extend or release a lock only while it is still this holder's.
    _EXTEND = (
        "if redis.call('get', KEYS[1]) == ARGV[1] "
        "then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )
    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] "
        "then return redis.call('del', KEYS[1]) else return 0 end"
    )

    def _extend(self, key: str, token: str) -> int:
        return int(self.client.eval(self._EXTEND, 1, key, token, int(LOCK_TTL_S * 1000)))  # type: ignore[arg-type]

    def _release(self, key: str, token: str) -> int:
        return int(self.client.eval(self._RELEASE, 1, key, token))  # type: ignore[arg-type]

"""Files the service keeps (style registry, job store): written so that readers see the old
file or the new one, never half of one, even after a SIGKILL; and the ids that name them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

HEX_DIGITS = frozenset("0123456789abcdef")


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


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[bool]:
    """Whether this process holds the exclusive lock on the file `path` now (False: another
    process does, or its folder is gone). Released on exit, and by the system when the
    process ends, killed or not."""
    try:
        lock = open(path, "a")  # noqa: SIM115 (held open)
    except (FileNotFoundError, NotADirectoryError):  # deleted meanwhile
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_hex_id(value: str, digits: int) -> bool:
    """Ids are `digits` lower-case hex digits; anything else (e.g. '../x') never reaches the
    file system."""
    return len(value) == digits and all(c in HEX_DIGITS for c in value)

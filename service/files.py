"""Files the service keeps (style registry, job store): written so that readers see the old
file or the new one, never half of one, even after a SIGKILL; and the ids that name them."""

from __future__ import annotations

import os
import tempfile
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


def is_hex_id(value: str, digits: int) -> bool:
    """Ids are `digits` lower-case hex digits; anything else (e.g. '../x') never reaches the
    file system."""
    return len(value) == digits and all(c in HEX_DIGITS for c in value)

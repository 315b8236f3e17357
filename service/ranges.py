"""Whether Starlette's `FileResponse` serves a Range header, asked before it answers: what it
would refuse in plain text (416) is refused as JSON instead (`RangeNotSatisfiableError`).

Starlette's parser is private (`FileResponse._parse_range_header`); it is used here alone, so a
Starlette that renames or changes it breaks this one module, and tests/service/test_ranges.py
says so by name.
"""

from __future__ import annotations

from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable


def serves_range(header: str, size: int) -> bool:
    """True when `FileResponse` answers the Range `header` for a file of `size` bytes."""
    try:
        FileResponse._parse_range_header(header, size)
    except (MalformedRangeHeader, RangeNotSatisfiable):
        return False
    return True

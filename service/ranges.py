"""The byte ranges of a Range header as Starlette's `FileResponse` reads them, asked before
answering: what it would refuse in plain text (416) is refused as JSON instead
(`RangeNotSatisfiableError`), and a result streamed from an open file serves the same ranges.

Starlette's parser is private (`FileResponse._parse_range_header`); it is used here alone, so a
Starlette that renames or changes it breaks this one module, and tests/service/test_ranges.py
says so by name.
"""

from __future__ import annotations

from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable


def byte_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The (start, end) ranges `FileResponse` answers for the Range `header` on a file of
    `size` bytes (end exclusive); None when it would refuse the header."""
    try:
        return FileResponse._parse_range_header(header, size)
    except (MalformedRangeHeader, RangeNotSatisfiable):
        return None

"""Errors a caller can act on, raised without any HTTP in sight.

Each says what went wrong (its message, written for the person who sent the input) and which
input is at fault (`field`: the form field or option, None when no single input is). The library
raises `InvalidInputError`; the service adds its own kinds (unreadable images, a busy engine) and
maps every class to an HTTP status in one table, `service.errors.HTTP_ERRORS`.
"""

from __future__ import annotations


class DomainError(Exception):
    """A failure with a message for the user and the input at fault."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidInputError(DomainError, ValueError):
    """A value the caller can correct: out of range, the wrong count, the wrong size."""


def error_body(detail: str, field: str | None) -> dict[str, str | None]:
    """The one shape of an error a client reads: HTTP answers (`service.errors`) and the error of
    a failed job alike."""
    return {"detail": detail, "field": field}

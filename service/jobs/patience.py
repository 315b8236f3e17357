"""Patience for a job in progress: its calls to the records (Redis) and the files (the object
store) are retried, with doubling waits, while those do not answer, for up to a set time. A
job outlives a restart of either; the API, meanwhile, answers 503 at once (the client retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from service.jobs.blobs import JobFilesUnavailableError
from service.registry import RedisUnavailableError

log = logging.getLogger("service.jobs")

T = TypeVar("T")
TEMPORARY = (JobFilesUnavailableError, RedisUnavailableError)
FIRST_WAIT_S = 0.25
MAX_WAIT_S = 10.0


def patiently(operation: Callable[[], T], patience_s: float, what: str) -> T:
    """`operation`, retried while it fails for a store that does not answer."""
    deadline = time.monotonic() + patience_s
    wait = FIRST_WAIT_S
    while True:
        try:
            return operation()
        except TEMPORARY:
            if time.monotonic() + wait > deadline:
                raise
            log.warning("job storage unavailable; retrying", extra={"call": what, "in_s": wait})
            time.sleep(wait)
            wait = min(wait * 2, MAX_WAIT_S)


class Patient:
    """`inner` (a `Records` or a `BlobStore`) with each method call made `patiently`. A call
    that returns a context manager (a lock) is not retried: its caller retries."""

    def __init__(self, inner: Any, patience_s: float) -> None:
        self._inner = inner
        self._patience_s = patience_s

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return patiently(lambda: attribute(*args, **kwargs), self._patience_s, name)

        return call

"""Caps per caller on what stays open (docs/security.md): a caller is an API key, or the
client's address with keys off (`service.security.Caller.identity`). One caller holding many
job event streams or live streams would take what every caller shares (connections, the
event loop's polling, the live places); past its cap it gets `CapReachedError`, 429 with
Retry-After and the setting named. The counts are this process's: each replica has its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from models.errors import DomainError


class CapReachedError(DomainError):
    """The caller already holds as many as its cap allows (429); `detail` names the setting,
    `retry_after_s` when one may have ended."""

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class OpenCounts:
    """How many of one kind of thing each caller holds open, at most `limit` each."""

    def __init__(self, limit: int, what: str, setting: str, retry_after_s: int) -> None:
        self.limit = limit
        self.what = what  # "job event streams", for the message
        self.setting = setting
        self.retry_after_s = retry_after_s
        self.held: dict[str, int] = {}

    def check(self, identity: str) -> None:
        """Raises `CapReachedError` when `identity` holds `limit` already."""
        if self.held.get(identity, 0) >= self.limit:
            raise CapReachedError(
                f"{self.limit} {self.what} of this caller are open, the limit ({self.setting}); "
                "close one or retry later",
                self.retry_after_s,
            )

    def take(self, identity: str) -> None:
        self.check(identity)
        self.held[identity] = self.held.get(identity, 0) + 1

    def release(self, identity: str) -> None:
        left = self.held.get(identity, 0) - 1
        if left > 0:
            self.held[identity] = left
        else:
            self.held.pop(identity, None)

    @contextmanager
    def holding(self, identity: str) -> Iterator[None]:
        """One taken for the block (taken before it starts: `CapReachedError` past the cap)."""
        self.take(identity)
        try:
            yield
        finally:
            self.release(identity)

"""Request body limits enforced while the body streams in, before anything buffers it: its
size, and the time it may take to arrive (a client stalling mid-upload holds a connection)."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import DomainError


class BodyTooLargeError(DomainError):
    """The body is larger than ADAIN_MAX_UPLOAD_BYTES (413). Raised into the app's `receive`
    once the body passed the limit, to stop it reading."""


class BodyTimeoutError(DomainError):
    """The body did not arrive in full within ADAIN_BODY_TIMEOUT_S (408)."""


class BodySizeLimit:
    """Pure ASGI middleware: `BodyTooLargeError` (413, connection closed) when a request body is
    larger than `max_bytes`, and `BodyTimeoutError` (408, connection closed) when it has not
    arrived in full `timeout_s` after the request started. Both are raised out of the
    middleware and answered by `service.logs.RequestContext` through the error table.

    A declared Content-Length above the limit is refused at once; otherwise the bytes of the
    `http.request` messages are counted, so chunked bodies without a length are caught too.
    The deadline is for the whole body, not each read: a client trickling a byte at a time
    cannot hold the connection longer than a stalled one.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 60.0,
                 per_path: dict[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        # path -> (its own limit, the setting's name): video uploads are larger than images.
        self.per_path = per_path or {}

    def too_large(self, max_bytes: int | None = None, setting: str = "ADAIN_MAX_UPLOAD_BYTES"
                  ) -> BodyTooLargeError:
        limit = self.max_bytes if max_bytes is None else max_bytes
        return BodyTooLargeError(f"request body larger than the limit of {limit} bytes ({setting})")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self.per_path.get(scope["path"], (self.max_bytes,
                                                               "ADAIN_MAX_UPLOAD_BYTES"))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise self.too_large(max_bytes, setting)

        received = 0
        failure: DomainError | None = None  # the body was too large or too slow
        body_complete = False
        response_started = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, failure, body_complete
            if body_complete:  # the app waits for the client to disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                failure = BodyTimeoutError(
                    f"the request body did not arrive within {self.timeout_s:g} s "
                    "(ADAIN_BODY_TIMEOUT_S)"
                )
                raise failure from None
            body_complete = not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    failure = self.too_large(max_bytes, setting)
                    raise failure
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # The app may turn our error into its own response (FastAPI: 400 "error parsing
            # the body"): dropped, ours is sent instead.
            if failure is not None:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except (BodyTooLargeError, BodyTimeoutError) as error:
            if error is not failure:
                raise
        if failure is not None and not response_started:
            raise failure

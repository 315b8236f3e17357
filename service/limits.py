"""Request body limits enforced while the body streams in, before anything buffers it: its
size, and the time it may take to arrive (a client stalling mid-upload holds a connection)."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import DomainError


class BodyTooLargeError(Exception):
    """Raised into the app's `receive` once the body passed the limit, to stop it reading."""


class BodyTimeoutError(DomainError):
    """The body did not arrive in full within ADAIN_BODY_TIMEOUT_S (408)."""


class BodySizeLimit:
    """Pure ASGI middleware: 413 JSON when a request body is larger than `max_bytes`, and
    `BodyTimeoutError` (408, connection closed) when it has not arrived in full `timeout_s`
    after the request started.

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self.per_path.get(scope["path"], (self.max_bytes,
                                                               "ADAIN_MAX_UPLOAD_BYTES"))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self.refuse(send, max_bytes, setting)
            return

        received = 0
        exceeded = False
        timed_out: BodyTimeoutError | None = None
        body_complete = False
        response_started = False
        deadline = time.monotonic() + self.timeout_s

        async def limited_receive() -> Message:
            nonlocal received, exceeded, timed_out, body_complete
            if body_complete:  # the app waits for the client to disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                timed_out = BodyTimeoutError(
                    f"the request body did not arrive within {self.timeout_s:g} s "
                    "(ADAIN_BODY_TIMEOUT_S)")
                raise timed_out from None
            body_complete = not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # The app may turn BodyTooLargeError or BodyTimeoutError into its own error response
            # (FastAPI: 400 "error parsing the body"): send ours instead.
            if exceeded or timed_out is not None:
                if message["type"] == "http.response.start" and exceeded and not response_started:
                    response_started = True
                    await self.refuse(send, max_bytes, setting)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            if not response_started:
                await self.refuse(send, max_bytes, setting)
            return
        except BodyTimeoutError:
            pass
        if timed_out is not None and not response_started:
            # Answered by `service.logs.RequestContext` through the error table, with
            # `Connection: close`: the connection is released.
            raise timed_out

    async def refuse(self, send: Send, max_bytes: int, setting: str) -> None:
        body = json.dumps({
            "detail": f"request body larger than the limit of {max_bytes} bytes ({setting})",
            "field": None,
        }).encode()
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        })
        await send({"type": "http.response.body", "body": body})

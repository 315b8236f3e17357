"""Request body size limit enforced while the body streams in, before anything buffers it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(Exception):
    """Raised into the app's `receive` once the body passed the limit, to stop it reading."""


class BodySizeLimit:
    """Pure ASGI middleware: 413 JSON when a request body is larger than `max_bytes`.

    A declared Content-Length above the limit is refused at once; otherwise the bytes of the
    `http.request` messages are counted, so chunked bodies without a length are caught too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self.refuse(send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # The app may turn BodyTooLargeError into its own error response: send the 413 instead.
            if exceeded:
                if message["type"] == "http.response.start" and not response_started:
                    response_started = True
                    await self.refuse(send)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            if not response_started:
                await self.refuse(send)

    async def refuse(self, send: Send) -> None:
        body = json.dumps({
            "detail": f"request body larger than the limit of {self.max_bytes} bytes "
                      "(ADAIN_MAX_UPLOAD_BYTES)",
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

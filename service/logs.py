"""Structured logs: one JSON object per line, with the request id of the request being served."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import DomainError
from service import metrics
from service.errors import domain_error_response, refuse_handshake, unexpected_error_response

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("service.access")


class JsonFormatter(logging.Formatter):
    # Attributes every LogRecord has; anything else was passed with `extra=` and is logged too.
    # uvicorn adds `color_message` (its message with terminal colours): not for JSON.
    standard = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
        "message", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current:
            entry["request_id"] = current
        entry.update({k: v for k, v in record.__dict__.items() if k not in self.standard})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# The formats `websockets` logs a received / sent frame with.
WEBSOCKET_FRAME_LOGS = ("< %s", "> %s")


def configure_logging(level: str) -> None:
    """JSON lines on stderr for our loggers and uvicorn's (its access log is replaced by ours)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # The WebSocket library logs every frame at debug (through uvicorn's logger), the live
    # feed's message with its key too: frames never reach the log, whatever the level.
    handler.addFilter(lambda record: record.msg not in WEBSOCKET_FRAME_LOGS)


class RequestContext:
    """Pure ASGI middleware: request id (X-Request-ID in and out), access log, metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            except DomainError as error:  # OriginGuard's, before the handshake is accepted
                await refuse_handshake(scope, receive, send, error)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        current = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        token = request_id.set(current)
        start = time.perf_counter()
        status: int | None = None  # None until the response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", current.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except DomainError as error:
            # Raised by the middleware (OriginGuard, the body's size and time limits), outside
            # the app's exception handlers: the same table answers.
            if status is not None:
                raise
            await domain_error_response(error)(scope, receive, send_with_id)
        except Exception:
            access_log.exception("unhandled error")
            if status is not None:
                raise
            # Answered here, so the server logs the failure once, with the request id.
            await unexpected_error_response()(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            # The route template (/styles/{id}), not the raw path: bounded label values.
            route_name = getattr(route, "path", "unmatched")
            status = status or 500  # the client went away before any response
            labels = (scope["method"], route_name, str(status))
            metrics.REQUESTS.labels(*labels).inc()
            metrics.REQUEST_SECONDS.labels(*labels).observe(seconds)
            access_log.info(
                "%s %s %d", scope["method"], scope["path"], status,
                extra={"method": scope["method"], "path": scope["path"], "status": status,
                       "duration_ms": round(seconds * 1000, 2)},
            )
            request_id.reset(token)

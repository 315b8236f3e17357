"""Running the app under uvicorn with the service's connection-level limits: what `adain serve`
and the test servers (`python -m service.server`) start.

uvicorn's httptools parser has no limit on the request line or the headers: a client could send
one header of hundreds of megabytes and the server would hold it all. `BoundedHttpToolsProtocol`
counts the bytes of each request's head as they arrive and answers 414 (request line) or 431
(headers) as soon as a limit is passed, without reading the rest. Forwarded headers
(X-Forwarded-For, X-Forwarded-Proto) are trusted only from the proxies the operator names.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from models.errors import DomainError
from service.errors import (
    HeadersTooLargeError,
    RequestLineTooLongError,
    TooManyConnectionsError,
    domain_error_response,
    raw_error_response,
)
from service.settings import Settings

# Answered whatever ADAIN_MAX_CONNECTIONS says: they are cheap, and a probe refused for load
# gets a busy replica restarted.
PROBE_PATHS = (b"/healthz", b"/readyz")


async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    error = TooManyConnectionsError(
        "the server holds its limit of connections and requests (ADAIN_MAX_CONNECTIONS); "
        "retry shortly"
    )
    await domain_error_response(error)(scope, receive, send)


class HeadRefusedError(Exception):
    """Raised in a parser callback to stop parsing a head past a limit (`refusal` says which)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a cap on each request's request line and on its whole head (request line
    and headers). Subclassed per server by `bounded_protocol` with the two limits.

    The URL reaches `on_url` piece by piece as it arrives; a header reaches `on_header` only
    once complete (httptools holds the pieces), so the bytes of an unfinished head are also
    counted as they arrive (`data_received`).

    It overrides uvicorn's parser callbacks, which are not public API: tests/service/
    test_server.py fails by name when a uvicorn release changes them."""

    max_request_line_bytes: int  # ADAIN_MAX_REQUEST_LINE_BYTES, set by `bounded_protocol`
    max_head_bytes: int  # ADAIN_MAX_HEADER_BYTES, set by `bounded_protocol`

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.in_head = False  # between a request's first byte and the end of its headers
        self.head_bytes = 0  # the URL and the complete headers
        self.head_received = 0  # bytes received while the head was unfinished
        self.refusal: DomainError | None = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_bytes = self.head_received = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.max_request_line_bytes:
            self.refuse(
                RequestLineTooLongError(
                    f"the request line is longer than {self.max_request_line_bytes} bytes "
                    "(ADAIN_MAX_REQUEST_LINE_BYTES)"
                )
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self.check_head(len(self.url) + self.head_bytes)

    def on_headers_complete(self) -> None:
        """uvicorn's own check of ADAIN_MAX_CONNECTIONS answers a plain-text 503 to every
        path: here the health probes are answered past it (a busy replica is not a dead
        one), and the others get the JSON error with Retry-After."""
        self.in_head = False
        limit, app = self.limit_concurrency, self.app
        over = limit is not None and max(len(self.connections), len(self.tasks)) >= limit
        self.limit_concurrency = None
        if over and self.url.partition(b"?")[0] not in PROBE_PATHS:
            self.app = too_many_connections
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency, self.app = limit, app

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.in_head and not self.transport.is_closing():
            # The head is unfinished, so this read belonged to it (all of it but the end of a
            # previous pipelined request: the count errs by less than one read).
            self.head_received += len(data)
            try:
                self.check_head(self.head_received)
            except HeadRefusedError:
                self.send_400_response("")

    def check_head(self, size: int) -> None:
        if size > self.max_head_bytes:
            self.refuse(
                HeadersTooLargeError(
                    f"the request's headers are larger than {self.max_head_bytes} bytes "
                    "(ADAIN_MAX_HEADER_BYTES)"
                )
            )

    def refuse(self, error: DomainError) -> None:
        self.refusal = error
        raise HeadRefusedError(error.detail)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which a refusal raised in a callback is: the
        refusal's own answer instead, then the connection is closed unread."""
        if self.refusal is None:
            super().send_400_response(msg)
            return
        self.in_head = False
        self.transport.write(raw_error_response(self.refusal))
        self.transport.close()


def bounded_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_request_line_bytes": settings.max_request_line_bytes,
            "max_head_bytes": settings.max_header_bytes,
        },
    )


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    """The app and uvicorn's options from the settings."""
    from service.main import create_app  # the app loads torch: not needed to read this module

    trusted_proxies = settings.forwarded_allow_ip_list
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(settings),
        # create_app installs the JSON logging; uvicorn must not replace it.
        log_config=None,
        # Connections and requests past ADAIN_MAX_CONNECTIONS get 503 at once.
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_s,
        # uvicorn trusts X-Forwarded-* from 127.0.0.1 unless told otherwise: any local process
        # (or a proxy on the host passing the client's header through) could pick the client
        # address the rate limit counts. Only the proxies named in the setting are trusted.
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies or [],
    )


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server that says on stdout, once it listens, the address to open."""

    def __init__(self, config: uvicorn.Config, address: str) -> None:
        super().__init__(config)
        self.address = address

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"adain-serve on {self.address} (open it in a browser)", flush=True)


def page_address(host: str, port: int) -> str:
    """The page's URL on this machine: a wildcard address is opened as the loopback one."""
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{local}]:{port}/" if ":" in local else f"http://{local}:{port}/"


def serve(settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Serve (on `sockets` when the caller bound them) until SIGTERM or Ctrl-C, then drain the
    requests in flight and exit 0."""
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; handled here, the process
    # then exits 0, which is what service managers expect of a clean stop.
    signal.signal(signal.SIGTERM, exit_cleanly)
    port = sockets[0].getsockname()[1] if sockets else settings.port
    server = AnnouncingServer(uvicorn_config(settings), page_address(settings.host, port))
    server.run(sockets=sockets)


def exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    serve(Settings())

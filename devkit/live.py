"""A client of the live feed (WebSocket /live) for tests and benchmarks, on `websockets`' sync API.

with live_stream(server.url, {"style_id": style, "size": 256}) as stream:
    stream.send_frame(jpeg_bytes)
    header, image = stream.result()      # {"frame": 0, "dropped": 0, ...}, JPEG bytes
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from websockets.sync.client import ClientConnection, connect


def live_url(http_url: str) -> str:
    """ws://host:port/live of a server at http://host:port."""
    return http_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/live"


class UnexpectedMessageError(AssertionError):
    pass


@dataclass
class LiveStream:
    connection: ClientConnection
    ready: dict[str, object]  # the server's answer to the first message

    def send_frame(self, data: bytes) -> None:
        self.connection.send(data)

    def send_settings(self, settings: dict[str, object]) -> None:
        self.connection.send(json.dumps(settings))

    def message(self, timeout_s: float = 60) -> dict[str, object]:
        """The next text message, as JSON (binary where text was expected is an error)."""
        received = self.connection.recv(timeout_s)
        if not isinstance(received, str):
            raise UnexpectedMessageError(f"expected JSON text, got {len(received)} bytes")
        return json.loads(received)

    def result(self, timeout_s: float = 60) -> tuple[dict[str, object], bytes]:
        """The next processed frame: its JSON header and the stylized image."""
        header = self.message(timeout_s)
        if "frame" not in header:
            raise UnexpectedMessageError(f"expected a frame's header, got {header}")
        image = self.connection.recv(timeout_s)
        if not isinstance(image, bytes):
            raise UnexpectedMessageError(f"expected the frame's image, got text {image!r}")
        return header, image


@contextmanager
def live_connection(
    http_url: str, origin: str | None = None, headers: dict[str, str] | None = None
) -> Iterator[ClientConnection]:
    """The open WebSocket (no message sent yet). No compression: frames are JPEGs already."""
    with connect(
        live_url(http_url),
        origin=origin,
        additional_headers=headers,
        compression=None,
        max_size=64 * 1024 * 1024,
        open_timeout=30,
        proxy=None,
    ) as connection:
        yield connection


@contextmanager
def live_stream(
    http_url: str,
    settings: dict[str, object],
    origin: str | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[LiveStream]:
    """A stream whose first message (`settings`) the server has accepted."""
    with live_connection(http_url, origin, headers) as connection:
        connection.send(json.dumps(settings))
        stream = LiveStream(connection, {})
        stream.ready = stream.message()
        if stream.ready.get("ready") is not True:
            raise UnexpectedMessageError(f"the server refused the settings: {stream.ready}")
        yield stream

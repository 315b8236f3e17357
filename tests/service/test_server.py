"""`service.server.BoundedHttpToolsProtocol` overrides callbacks of uvicorn's httptools
protocol, which are not public API: these checks fail by name when a uvicorn release renames
them, changes their parameters, or stops keeping the URL where the subclass reads it. (What
the limits do is tested against a real server: test_trust.py, test_error_table.py.)"""

from __future__ import annotations

import inspect

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.server import BoundedHttpToolsProtocol, bounded_protocol
from service.settings import Settings

# callback -> its parameters after self, as the subclass calls and overrides it
HOOKS = {
    "on_message_begin": [],
    "on_url": ["url"],
    "on_header": ["name", "value"],
    "on_headers_complete": [],
    "data_received": ["data"],
    "send_400_response": ["msg"],
}


@pytest.mark.parametrize("name", HOOKS)
def test_uvicorn_has_each_callback_the_subclass_overrides(name: str) -> None:
    method = getattr(HttpToolsProtocol, name, None)
    assert method is not None, f"uvicorn's HttpToolsProtocol has no {name} any more"
    assert list(inspect.signature(method).parameters)[1:] == HOOKS[name], name
    assert name in vars(BoundedHttpToolsProtocol)  # the list is the subclass's own


def test_uvicorn_keeps_the_url_where_the_subclass_reads_it() -> None:
    assert "self.url" in inspect.getsource(HttpToolsProtocol.on_url)


def test_the_limits_come_from_the_settings() -> None:
    settings = Settings(max_request_line_bytes=4096, max_header_bytes=9000)
    protocol = bounded_protocol(settings)
    assert (protocol.max_request_line_bytes, protocol.max_head_bytes) == (4096, 9000)
    default = bounded_protocol(Settings())
    assert default.max_request_line_bytes == Settings().max_request_line_bytes

"""docker/nginx.conf: accepted by Debian's nginx, and in step with the service's limits."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import httpx

from devkit.server import free_port
from service.errors import domain_error_response
from service.limits import BodySizeLimit
from service.settings import Settings
from tests.docker.deployfiles import (
    NGINX,
    NGINX_CONF,
    needs_nginx,
    nginx_config_for,
    nginx_size_bytes,
    running_nginx,
)


def nginx_test(config: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `config`, with every path nginx writes under `folder`."""
    (folder / "nginx.conf").write_text(config)
    return subprocess.run(
        [NGINX, "-t", "-e", "stderr", "-p", str(folder), "-c", str(folder / "nginx.conf"),
         "-g", f"pid {folder / 'nginx.pid'};"],
        capture_output=True, text=True, timeout=60,
    )


def service_413_body(
    max_bytes: int = Settings().max_upload_bytes, setting: str = "ADAIN_MAX_UPLOAD_BYTES"
) -> dict[str, object]:
    """What the service itself answers to a too large body: its middleware's error, through the
    error table."""
    limit = BodySizeLimit(app=None, max_bytes=max_bytes)  # type: ignore[arg-type]
    return json.loads(bytes(domain_error_response(limit.too_large(max_bytes, setting)).body))


def video_413_body() -> dict[str, object]:
    return service_413_body(Settings().max_video_bytes, "ADAIN_MAX_VIDEO_BYTES")


def location_block(text: str, header: str) -> str:
    """The directives of `location <header> { ... }` (no nested blocks in this file)."""
    match = re.search(rf"location {re.escape(header)} \{{(.*?)\}}", text, re.S)
    assert match, f"docker/nginx.conf has no `location {header}`"
    return match.group(1)


@needs_nginx
def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    # The replicas' compose names do not resolve here: only the addresses are rewritten.
    result = nginx_test(nginx_config_for([18001, 18002], 18080), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
def test_nginx_rejects_a_broken_configuration(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is refused."""
    config = nginx_config_for([18001, 18002], 18080).replace("least_conn;", "least_connections;")
    result = nginx_test(config, tmp_path)
    assert result.returncode != 0
    assert "least_connections" in result.stderr


def test_balancing_retries_and_timeouts_suit_inference() -> None:
    text = NGINX_CONF.read_text()
    assert re.search(r"upstream adain \{\s*(#.*\n\s*)*least_conn;", text)
    retry = re.search(r"^\s*proxy_next_upstream\s+([^;]+);", text, re.M)
    assert retry
    assert {"error", "timeout", "http_502", "http_503"} <= set(retry.group(1).split())
    for server in re.findall(r"^\s*server\s+\S+:\d+\s+([^;]+);", text, re.M):
        assert "max_fails=" in server and "fail_timeout=" in server
    read_timeout = re.search(r"^\s*proxy_read_timeout\s+(\d+)s;", text, re.M)
    assert read_timeout and int(read_timeout.group(1)) >= 60  # nginx's default of 60 s is short


def test_body_limit_matches_the_service() -> None:
    text = NGINX_CONF.read_text()
    limit = Settings().max_upload_bytes
    assert nginx_size_bytes(text, "client_max_body_size") == limit
    # Its 413 answer is the service's own, word for word.
    answer = re.search(r"return 413 '([^']*)';", text)
    assert answer
    assert json.loads(answer.group(1)) == service_413_body()
    assert str(limit) in answer.group(1)


@needs_nginx
def test_nginx_refuses_too_large_bodies_as_the_service_does(tmp_path: Path) -> None:
    """Refused by nginx itself (no replica is even running), with the service's JSON 413."""
    port = free_port()
    config = nginx_config_for([free_port(), free_port()], port)
    with running_nginx(config, tmp_path, port) as url:
        too_large = b"\0" * (Settings().max_upload_bytes + 1)
        response = httpx.post(f"{url}/stylize", content=too_large, timeout=60)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/json"
        assert response.json() == service_413_body()
        # A body at the limit passes nginx and reaches the (absent) replicas: 502, not 413.
        at_limit = httpx.post(f"{url}/stylize", content=too_large[:-1], timeout=60)
        assert at_limit.status_code == 502


def test_video_uploads_stream_to_one_replica_up_to_the_video_limit() -> None:
    uploads = location_block(NGINX_CONF.read_text(), "= /jobs")
    assert nginx_size_bytes(uploads, "client_max_body_size") == Settings().max_video_bytes
    # Streamed, not spooled to nginx's disk; never replayed on another replica (a second job).
    assert re.search(r"^\s*proxy_request_buffering off;", uploads, re.M)
    retry = re.search(r"^\s*proxy_next_upstream\s+([^;]+);", uploads, re.M)
    assert retry and "non_idempotent" not in retry.group(1)
    text = NGINX_CONF.read_text()
    answer = re.search(r"location @video_too_large \{.*?return 413 '([^']*)';", text, re.S)
    assert answer and json.loads(answer.group(1)) == video_413_body()


def test_progress_events_are_not_buffered_and_outlive_the_heartbeat() -> None:
    from service.routes.jobs import EVENTS_HEARTBEAT_S

    events = location_block(NGINX_CONF.read_text(), "~ ^/jobs/[^/]+/events$")
    assert re.search(r"^\s*proxy_buffering off;", events, re.M)
    timeout = re.search(r"^\s*proxy_read_timeout\s+(\d+)([smh]);", events, re.M)
    assert timeout
    seconds = int(timeout.group(1)) * {"s": 1, "m": 60, "h": 3600}[timeout.group(2)]
    assert seconds > 2 * EVENTS_HEARTBEAT_S
    # The location matches the route's path.
    assert re.fullmatch(r"^/jobs/[^/]+/events$", "/jobs/0123abcd/events")


@needs_nginx
def test_nginx_takes_video_sized_uploads_and_refuses_larger_ones(tmp_path: Path) -> None:
    """Through the real nginx (no replica running): a body over the image limit but under the
    video limit reaches the replicas (502 here) on /jobs, and is refused on /stylize; a declared
    body over the video limit gets the service's JSON 413 at once."""
    port = free_port()
    config = nginx_config_for([free_port(), free_port()], port)
    with running_nginx(config, tmp_path, port) as url:
        body = b"\0" * (Settings().max_upload_bytes + 1)
        assert httpx.post(f"{url}/jobs", content=body, timeout=60).status_code == 502
        assert httpx.post(f"{url}/stylize", content=body, timeout=60).status_code == 413
        too_large = Settings().max_video_bytes + 1
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {too_large}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert json.loads(payload) == video_413_body()

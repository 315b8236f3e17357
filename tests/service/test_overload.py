"""Overload against a real server: past the queue, 503 + Retry-After at once, and every accepted
request still gets its correct image; a client that leaves before its turn costs no computation;
SIGTERM under load finishes the accepted requests."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit import REPO
from devkit.images import encode, random_image
from devkit.server import (
    RunningServer,
    free_port,
    running_server,
    stop,
    wait_until_ready,
)

QUEUE_SIZE = 2
BURST = 16  # simultaneous requests, far more than the queue holds
CONTENTS = [encode(random_image(96, 96, seed=300 + i)) for i in range(2)]
STYLE = encode(random_image(64, 64, seed=310))
FORM = {"content_size": "0", "style_size": "64"}


@pytest.fixture(scope="module")
def small_queue_server(server_env: dict[str, str]) -> Iterator[RunningServer]:
    """One job at a time, at most QUEUE_SIZE jobs held."""
    env = {**server_env, "ADAIN_QUEUE_SIZE": str(QUEUE_SIZE), "ADAIN_MAX_BATCH_SIZE": "1"}
    with running_server(env) as running:
        yield running


def stylize(server: RunningServer, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/stylize",
        data=FORM,
        timeout=120,
        files=[("content", ("c.png", content)), ("style", ("s.png", STYLE))],
    )


def pixels(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as image:
        return np.asarray(image.convert("RGB"))


def burst(server: RunningServer, count: int) -> list[httpx.Response]:
    """`count` requests released together (a barrier), alternating the contents."""
    start = threading.Barrier(count)

    def one(index: int) -> httpx.Response:
        start.wait()
        return stylize(server, CONTENTS[index % len(CONTENTS)])

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def queue_depth(server: RunningServer) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(r"^adain_queue_depth ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, "adain_queue_depth missing from /metrics"
    return float(match.group(1))


def wait_for_queue_depth(server: RunningServer, depth: int, what: str) -> None:
    deadline = time.monotonic() + 60
    while queue_depth(server) < depth:
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_excess_requests_get_503_and_accepted_ones_the_right_image(
    small_queue_server: RunningServer,
) -> None:
    # Sequential references; they also cache the style, so each request is one engine job.
    expected = [pixels(stylize(small_queue_server, content)) for content in CONTENTS]

    responses = burst(small_queue_server, BURST)
    statuses = [r.status_code for r in responses]
    print(f"{BURST} simultaneous requests, queue {QUEUE_SIZE}: statuses {statuses}")
    assert set(statuses) <= {200, 503}, [
        r.text for r in responses if r.status_code not in (200, 503)
    ]
    assert statuses.count(200) >= QUEUE_SIZE  # the first ones always fit
    assert statuses.count(503) >= 1
    for index, response in enumerate(responses):
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            body = response.json()
            assert set(body) == {"detail", "field"}
            assert f"ADAIN_QUEUE_SIZE={QUEUE_SIZE}" in body["detail"]
        else:
            assert response.headers["x-batch-size"] == "1"
            np.testing.assert_array_equal(pixels(response), expected[index % len(CONTENTS)])

    assert queue_depth(small_queue_server) == 0  # nothing leaked from the refused requests
    np.testing.assert_array_equal(pixels(stylize(small_queue_server, CONTENTS[0])), expected[0])


def metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def send_and_leave_open(server: RunningServer, content: bytes) -> socket.socket:
    """A whole POST /stylize written to a raw socket, the answer not read: closing the socket
    is a client that gives up."""
    request = httpx.Request(
        "POST",
        f"{server.url}/stylize",
        data=FORM,
        files=[("content", ("c.png", content)), ("style", ("s.png", STYLE))],
    )
    body = request.read()
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    client = socket.create_connection(("127.0.0.1", server.port))
    client.sendall(f"POST /stylize HTTP/1.1\r\n{head}\r\n".encode() + body)
    return client


def test_a_client_that_leaves_before_its_turn_is_dropped(
    small_queue_server: RunningServer,
) -> None:
    """One job at a time: while a large image is stylized, a second client sends its request and
    closes the connection. Its queued job is dropped, not computed; the first gets its image and
    the server keeps serving."""
    server = small_queue_server
    pixels(stylize(server, CONTENTS[0]))  # caches the style: each request is one engine job
    large = encode(random_image(384, 384, seed=320))
    dropped_before = metric(server, "adain_jobs_dropped_total")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(stylize, server, large)
        # The large image is being stylized, then the second job waits behind it.
        wait_for_queue_depth(server, 1, "the first request never reached the engine")
        leaving = send_and_leave_open(server, CONTENTS[1])
        wait_for_queue_depth(server, 2, "the second request never reached the engine")
        leaving.close()
        deadline = time.monotonic() + 120
        while metric(server, "adain_jobs_dropped_total") < dropped_before + 1:
            assert time.monotonic() < deadline, "the abandoned job was not dropped"
            time.sleep(0.05)
        assert slow.result(timeout=120).status_code == 200
    assert metric(server, "adain_jobs_dropped_total") == dropped_before + 1
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any(r["message"].startswith("dropped 1 queued job") for r in records), records[-5:]
    assert any(r.get("path") == "/stylize" and r.get("status") == 499 for r in records)
    assert queue_depth(server) == 0
    pixels(stylize(server, CONTENTS[1]))  # and the server keeps serving


@contextmanager
def adain_serve(env: dict[str, str], log_path: Path) -> Iterator[RunningServer]:
    """`adain serve`, the image's CMD (not the helper's bare uvicorn): its exit status is the
    one Docker and Kubernetes see."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={**clean, **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url, process, 180, log_path)
            yield RunningServer(url, port, process, log_path)
        finally:
            stop(process)


def test_sigterm_under_load_finishes_accepted_requests(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """uvicorn stops accepting on SIGTERM, lets the requests in flight finish, and the engine
    drains its queue in the lifespan's shutdown: every accepted request gets its image, and
    the process exits 0."""
    count = 6
    env = {**server_env, "ADAIN_QUEUE_SIZE": str(2 * count), "ADAIN_MAX_BATCH_SIZE": "1"}
    large = encode(random_image(512, 512, seed=330))
    with adain_serve(env, tmp_path / "server.log") as server:
        expected = [pixels(stylize(server, content)) for content in CONTENTS]
        with ThreadPoolExecutor(count + 1) as pool:
            slow = pool.submit(stylize, server, large)
            wait_for_queue_depth(server, 1, "the large image never reached the engine")
            queued = [
                pool.submit(stylize, server, CONTENTS[i % len(CONTENTS)]) for i in range(count)
            ]
            # SIGTERM once every request is in the engine, behind the large image: accepted
            # and truly in flight. (A connection uvicorn has not read a request from yet is
            # closed unanswered, as it should be: nothing of it was accepted.)
            wait_for_queue_depth(server, count + 1, "the requests never reached the engine")
            server.process.send_signal(signal.SIGTERM)
            assert slow.result(timeout=120).status_code == 200
            responses = [future.result(timeout=120) for future in queued]
        exit_code = server.process.wait(60)
    for index, response in enumerate(responses):
        np.testing.assert_array_equal(pixels(response), expected[index % len(CONTENTS)])
    logs = server.logs()
    assert "Application shutdown complete" in logs, logs[-3000:]
    assert exit_code == 0, logs[-3000:]

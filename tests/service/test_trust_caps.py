"""Issue 33's class 4 against a real server: one caller cannot take what everyone shares. Caps
per key (per address without keys) on job event streams, queued jobs and live streams, a bound
on stored job bytes, live handshakes that never authenticate, live messages checked as they
arrive, health probes past ADAIN_MAX_CONNECTIONS, and GET /jobs in pages. Issue 34 item 10:
one time format, and a second name for a registered image is not dropped silently."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devkit.images import encode, random_image
from devkit.live import LiveStream, live_connection
from devkit.server import RunningServer, running_server
from devkit.videos import make_video

USER_A, USER_B, USER_C = "caps-user-a-0123456789", "caps-user-b-0123456789", "caps-user-c-012345"
ADMIN = "caps-admin-0123456789"
RATE_LIMIT = 40
EVENT_STREAMS = 2
QUEUED_JOBS = 2
STORED_BYTES = 3_000_000
LIVE_SESSIONS, LIVE_PER_KEY = 3, 1
AUTH_TIMEOUT_S = 1.0
MAX_PENDING = 4  # settings changes waiting for a frame (service.live.MAX_PENDING_SETTINGS)
MAX_CONNECTIONS = 24
STYLE = encode(random_image(48, 48, seed=3401))
SMALL = {"style_size": "48", "content_size": "0", "stabilize": "false"}


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("caps-jobs")


@pytest.fixture(scope="module")
def server(server_env: dict[str, str], jobs_dir: Path) -> Iterator[RunningServer]:
    env = {
        **server_env,
        "ADAIN_JOBS_DIR": str(jobs_dir),
        "ADAIN_API_KEYS": f"{USER_A},{USER_B},{USER_C}",
        "ADAIN_ADMIN_KEYS": ADMIN,
        "ADAIN_RATE_LIMIT": str(RATE_LIMIT),
        "ADAIN_MAX_EVENT_STREAMS_PER_KEY": str(EVENT_STREAMS),
        "ADAIN_MAX_QUEUED_JOBS_PER_KEY": str(QUEUED_JOBS),
        "ADAIN_MAX_STORED_JOB_BYTES": str(STORED_BYTES),
        "ADAIN_LIVE_MAX_SESSIONS": str(LIVE_SESSIONS),
        "ADAIN_LIVE_MAX_SESSIONS_PER_KEY": str(LIVE_PER_KEY),
        "ADAIN_LIVE_AUTH_TIMEOUT_S": str(AUTH_TIMEOUT_S),
        "ADAIN_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WARMUP": "false",
    }
    with running_server(env) as running:
        yield running


def submit(server: RunningServer, video: bytes, caller: str, **form: Any) -> httpx.Response:
    files = [("video", ("clip.mp4", video)), ("style", ("s.png", STYLE))]
    return httpx.post(
        f"{server.url}/jobs",
        files=files,
        data={**SMALL, **form},
        headers=key(caller),
        timeout=60,
    )


def long_clip(seed: int = 0) -> bytes:
    """A job that keeps the runner busy for a while (stabilised, 96 x 64, 80 frames)."""
    return make_video(frames=80, width=96, height=64, audio=False, seed=seed)


def assert_limited(response: httpx.Response, status: int, setting: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) > 0
    assert setting in response.json()["detail"]


@contextmanager
def cancelled_after(server: RunningServer, caller: str, job_ids: list[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for job_id in job_ids:
            httpx.delete(f"{server.url}/jobs/{job_id}", headers=key(caller), timeout=30)


# --- job event streams, queued jobs, stored bytes ------------------------------------------


def test_event_streams_are_capped_per_key(server: RunningServer) -> None:
    response = submit(server, long_clip(), USER_A, stabilize="true")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    url = f"{server.url}/jobs/{job_id}/events"
    with cancelled_after(server, USER_A, [job_id]), ExitStack() as streams:
        for _ in range(EVENT_STREAMS):
            stream = streams.enter_context(httpx.stream("GET", url, headers=key(USER_A)))
            assert stream.status_code == 200
        assert_limited(
            httpx.get(url, headers=key(USER_A), timeout=10), 429, "ADAIN_MAX_EVENT_STREAMS_PER_KEY"
        )
        admin = streams.enter_context(httpx.stream("GET", url, headers=key(ADMIN)))
        assert admin.status_code == 200  # another key's streams are its own
        streams.close()
        time.sleep(0.5)  # the server notices the closed streams at its next poll
        with httpx.stream("GET", url, headers=key(USER_A)) as again:
            assert again.status_code == 200


def test_queued_jobs_are_capped_per_key(server: RunningServer) -> None:
    ids = []
    with cancelled_after(server, USER_B, ids):
        for seed in range(QUEUED_JOBS):
            response = submit(server, long_clip(seed), USER_B, stabilize="true")
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert_limited(submit(server, long_clip(), USER_B), 429, "ADAIN_MAX_QUEUED_JOBS_PER_KEY")
        other = submit(server, make_video(frames=2, width=32, height=32, audio=False), USER_C)
        assert other.status_code == 202, other.text
        ids.append(other.json()["id"])


def stored_bytes(jobs_dir: Path) -> int:
    return sum(path.stat().st_size for path in jobs_dir.rglob("*") if path.is_file())


def padded(clip: bytes, size: int) -> bytes:
    """The MP4 with a top-level `free` box of `size` bytes after it: readers skip it."""
    return clip + (size + 8).to_bytes(4, "big") + b"free" + bytes(size)


def test_stored_job_bytes_are_bounded(server: RunningServer, jobs_dir: Path) -> None:
    """The runner busy with a long job, uploads of 1 MB from several keys wait queued; past
    ADAIN_MAX_STORED_JOB_BYTES the next is 503, and nothing of it stays."""
    ids: list[tuple[str, str]] = []
    long_job = submit(server, long_clip(3), USER_A, stabilize="true")
    assert long_job.status_code == 202, long_job.text
    ids.append((USER_A, long_job.json()["id"]))
    upload = padded(make_video(frames=2, width=32, height=32, audio=False), 1_000_000)
    statuses = []
    try:
        for caller in [USER_A, USER_B, USER_C, ADMIN] * 2:
            before = {p.name for p in jobs_dir.iterdir()}
            response = submit(server, upload, caller)
            statuses.append(response.status_code)
            if response.status_code != 202:
                break
            ids.append((caller, response.json()["id"]))
        assert_limited(response, 503, "ADAIN_MAX_STORED_JOB_BYTES")
        assert {p.name for p in jobs_dir.iterdir()} == before  # the refused upload removed
        assert stored_bytes(jobs_dir) <= STORED_BYTES
        assert set(statuses[:-1]) == {202} and len(statuses) >= 2
    finally:
        for caller, job_id in ids:
            httpx.delete(f"{server.url}/jobs/{job_id}", headers=key(caller), timeout=30)


# --- GET /jobs in pages; one time format ----------------------------------------------------


def test_job_list_is_paged_and_times_are_iso_8601(server: RunningServer) -> None:
    clip = make_video(frames=2, width=32, height=32, audio=False)
    ids = []
    with cancelled_after(server, USER_C, ids):
        for _ in range(3):
            response = submit(server, clip, USER_C)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
            while httpx.get(f"{server.url}/jobs/{ids[-1]}", headers=key(USER_C)).json()[
                "status"
            ] not in ("succeeded", "failed"):
                time.sleep(0.1)
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{server.url}/jobs", params=params, headers=key(USER_C)).json()
            assert len(page["jobs"]) <= 2
            seen += [job["id"] for job in page["jobs"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [i for i in seen if i in ids] == ids and pages >= 2
        job = httpx.get(f"{server.url}/jobs/{ids[0]}", headers=key(USER_C)).json()
        for moment in (job["created"], job["expires"]):
            assert datetime.fromisoformat(moment).utcoffset().total_seconds() == 0
        registered = httpx.post(
            f"{server.url}/styles", files={"file": ("a.png", STYLE)}, headers=key(ADMIN)
        ).json()
        assert datetime.fromisoformat(registered["created"]).utcoffset().total_seconds() == 0
        bad = httpx.get(f"{server.url}/jobs", params={"cursor": "nonsense"}, headers=key(USER_C))
        assert bad.status_code == 422 and bad.json()["field"] == "cursor"


def test_a_registered_image_under_a_new_name_is_not_dropped_silently(
    server: RunningServer,
) -> None:
    image = encode(random_image(40, 40, seed=3402))
    first = httpx.post(
        f"{server.url}/styles",
        files={"file": ("x.png", image)},
        data={"name": "harbour"},
        headers=key(ADMIN),
    )
    assert first.status_code == 201, first.text
    again = httpx.post(
        f"{server.url}/styles",
        files={"file": ("x.png", image)},
        data={"name": "harbour"},
        headers=key(ADMIN),
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    renamed = httpx.post(
        f"{server.url}/styles",
        files={"file": ("x.png", image)},
        data={"name": "quay"},
        headers=key(ADMIN),
    )
    assert renamed.status_code == 409, renamed.text
    assert renamed.json()["field"] == "name"
    assert (
        "'harbour'" in renamed.json()["detail"] and first.json()["id"] in renamed.json()["detail"]
    )
    assert httpx.get(f"{server.url}/styles/quay", headers=key(ADMIN)).status_code == 404


# --- live streams ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_style(server: RunningServer) -> str:
    answer = httpx.post(
        f"{server.url}/styles",
        files={"file": ("live.png", encode(random_image(64, 64, seed=3403)))},
        headers=key(ADMIN),
        timeout=60,
    )
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])


def settings(style_id: str, **more: object) -> dict[str, object]:
    return {"style_id": style_id, "size": 64, "style_size": 0, "stabilize": False, **more}


def ready_stream(connection: Any, style_id: str, **more: object) -> LiveStream:
    stream = LiveStream(connection, {})
    stream.send_settings(settings(style_id, **more))
    stream.ready = stream.message()
    assert stream.ready.get("ready") is True, stream.ready
    return stream


def test_silent_keyless_sockets_hold_no_live_place(server: RunningServer, live_style: str) -> None:
    """More silent sockets (keys on, no key sent) than places: a client with a key still gets
    a stream, and the silent ones are closed after ADAIN_LIVE_AUTH_TIMEOUT_S."""
    with ExitStack() as sockets:
        silent = [
            sockets.enter_context(live_connection(server.url)) for _ in range(LIVE_SESSIONS + 1)
        ]
        with live_connection(server.url, headers=key(USER_A)) as keyed:
            stream = ready_stream(keyed, live_style)
            assert stream.ready["settings"]["size"] == 64
        started = time.monotonic()
        for connection in silent:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    connection.recv(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
        assert time.monotonic() - started < AUTH_TIMEOUT_S + 3


def test_live_streams_are_capped_per_key(server: RunningServer, live_style: str) -> None:
    with live_connection(server.url, headers=key(USER_B)) as first:
        ready_stream(first, live_style)
        with (
            pytest.raises(InvalidStatus) as refused,
            live_connection(server.url, headers=key(USER_B)),
        ):
            pass
        response = refused.value.response
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0
        assert b"ADAIN_LIVE_MAX_SESSIONS_PER_KEY" in response.body
        # The same key in the first message is refused the same way, after it is read.
        with live_connection(server.url) as by_message:
            by_message.send(json.dumps(settings(live_style, key=USER_B)))
            message = json.loads(by_message.recv(10))
            assert message["status"] == 429
            assert "ADAIN_LIVE_MAX_SESSIONS_PER_KEY" in message["detail"]
        with live_connection(server.url, headers=key(USER_C)) as other:
            ready_stream(other, live_style)


def test_keyless_handshakes_count_against_the_rate_limit(server: RunningServer) -> None:
    """A handshake that sends its key in the first message counts once per address when it
    opens (docs/live.md), whether or not it ever sends a key: past the limit, 429."""
    statuses = []
    while 429 not in statuses and len(statuses) <= 2 * RATE_LIMIT + 1:
        try:
            with live_connection(server.url):
                statuses.append(101)
        except InvalidStatus as refused:
            statuses.append(refused.response.status_code)
    assert statuses[-1] == 429, statuses
    assert len(statuses) <= 2 * RATE_LIMIT + 1


def rss_mb(server: RunningServer) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def test_text_messages_are_checked_as_they_arrive(server: RunningServer, live_style: str) -> None:
    """While a large frame is being stylized: ten settings changes and a 4 MiB text. Past the
    4 waiting changes, and the 4 MiB text, are refused at once, before the frame's result
    (before: all queued until the frame was done, the 4 MiB text included); then a client
    that never reads sends 40 of them: memory stays flat."""
    with live_connection(server.url, headers=key(USER_C)) as connection:
        stream = ready_stream(connection, live_style, size=384)
        stream.send_frame(encode(random_image(512, 384, seed=3404), "JPEG"))
        for index in range(10):
            stream.send_settings({"alpha": 0.5 + index / 100})
        large = json.dumps({"alpha": 0.5, "pad": "x" * (4 * 1024 * 1024)})
        connection.send(large)
        early = []
        while "frame" not in (message := stream.message(120)):
            early.append(message)
        connection.recv(60)  # the frame's image
        refused = [m for m in early if m.get("field") == "settings"]
        assert any("4096" in m["detail"] for m in refused), early
        assert sum("waiting" in m["detail"] for m in refused) == 10 - MAX_PENDING
        readies = [stream.message(60) for _ in range(MAX_PENDING)]
        assert all(m.get("ready") is True for m in readies), readies
        before = rss_mb(server)
        for _ in range(40):
            connection.send(large)
        connection.ping().wait(30)  # every message before it has been read by the server
        assert rss_mb(server) - before < 60


# --- health probes past ADAIN_MAX_CONNECTIONS --------------------------------------------


def test_health_probes_are_answered_past_the_connection_cap(server: RunningServer) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 2):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            connection.sendall(b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends
            held.append(connection)
        time.sleep(0.3)
        busy = httpx.get(f"{server.url}/styles", headers=key(USER_A), timeout=10)
        assert_limited(busy, 503, "ADAIN_MAX_CONNECTIONS")
        for path in ("/healthz", "/readyz"):
            assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 200, path
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.3)
    assert httpx.get(f"{server.url}/styles", headers=key(USER_A), timeout=10).status_code == 200

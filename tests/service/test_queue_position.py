"""A queued job's `queue_position` (service/jobs/position.py) against real servers: jobs
queued behind a running one in the in-process mode, in GET /jobs/{id}, GET /jobs and the
events; and on a Redis queue that no process takes jobs from."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_redis, running_server
from devkit.videos import make_video

USER_A, USER_B = "queue-user-a-0123456789", "queue-user-b-0123456789"
STYLE = encode(random_image(40, 40, seed=3301))
SMALL = {"style_size": "32", "content_size": "0", "stabilize": "false"}
LONG_VIDEO = make_video(frames=300, width=192, height=128, audio=False)  # minutes on this CPU
SHORT_VIDEO = make_video(frames=4, width=64, height=48, audio=False)


def env(server_env: dict[str, str], jobs_dir: Path) -> dict[str, str]:
    return {
        **server_env,
        "ADAIN_JOBS_DIR": str(jobs_dir),
        "ADAIN_API_KEYS": f"{USER_A},{USER_B}",
        "ADAIN_MAX_VIDEO_FRAMES": "300",
        "ADAIN_MAX_OUTPUT_PIXELS": "65536",
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WARMUP": "false",
    }


def submit(server: RunningServer, video: bytes, caller: str = USER_A) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/jobs",
        files=[("video", ("clip.mp4", video)), ("style", ("s.png", STYLE))],
        data=SMALL,
        headers={"X-API-Key": caller},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def state(server: RunningServer, job_id: str, caller: str = USER_A) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/jobs/{job_id}", headers={"X-API-Key": caller}, timeout=30)
    return answer.json()


def listed_positions(server: RunningServer, caller: str) -> dict[str, int | None]:
    answer = httpx.get(f"{server.url}/jobs", headers={"X-API-Key": caller}, timeout=30)
    return {job["id"]: job["queue_position"] for job in answer.json()["jobs"]}


def cancel(server: RunningServer, job_id: str, caller: str = USER_A) -> None:
    answer = httpx.delete(f"{server.url}/jobs/{job_id}", headers={"X-API-Key": caller}, timeout=30)
    assert answer.status_code == 204


@pytest.fixture
def server(server_env: dict[str, str], tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(env(server_env, tmp_path / "jobs")) as running:
        yield running


def test_jobs_queued_behind_a_running_one_know_their_place(server: RunningServer) -> None:
    running = submit(server, LONG_VIDEO)["id"]
    deadline = time.monotonic() + 60
    while state(server, running)["status"] != "running":
        assert time.monotonic() < deadline, "the first job never started"
        time.sleep(0.1)
    assert state(server, running)["queue_position"] is None

    first = submit(server, SHORT_VIDEO)
    assert first["status"] == "queued" and first["queue_position"] == 0  # in the 202 too
    second = submit(server, SHORT_VIDEO, caller=USER_B)["id"]
    third = submit(server, SHORT_VIDEO)["id"]
    # Counted over every caller's queued jobs; 0-based.
    assert [state(server, job)["queue_position"] for job in (first["id"], third)] == [0, 2]
    assert state(server, second, USER_B)["queue_position"] == 1
    assert listed_positions(server, USER_A) == {running: None, first["id"]: 0, third: 2}
    assert listed_positions(server, USER_B) == {second: 1}

    # The events of the last one: its place, then its new place once one ahead leaves.
    with httpx.stream(
        "GET", f"{server.url}/jobs/{third}/events", headers={"X-API-Key": USER_A}, timeout=60
    ) as events:
        positions = []
        for line in events.iter_lines():
            if not line.startswith("data: "):
                continue
            positions.append(json.loads(line.removeprefix("data: "))["queue_position"])
            if len(positions) == 1:
                cancel(server, first["id"])  # canceled: no longer ahead
            elif len(positions) == 2:
                cancel(server, third)
            else:
                break
    assert positions == [2, 1, None]
    assert state(server, second, USER_B)["queue_position"] == 0
    assert state(server, first["id"])["queue_position"] is None  # canceled

    # The running job ends: the next one runs and has no place any more.
    cancel(server, running)
    deadline = time.monotonic() + 60
    while state(server, second, USER_B)["status"] == "queued":
        assert time.monotonic() < deadline, "the queued job never started"
        time.sleep(0.1)
    assert state(server, second, USER_B)["queue_position"] is None


def test_on_a_redis_queue_positions_follow_submission(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """Workers' mode with no process taking jobs: every job waits, in submission order."""
    with (
        running_redis() as url,
        running_server(
            {
                **env(server_env, tmp_path / "jobs"),
                "ADAIN_REDIS_URL": url,
                "ADAIN_SERVE_RUNS_JOBS": "false",
            }
        ) as server,
    ):
        jobs = [submit(server, SHORT_VIDEO, caller=c)["id"] for c in (USER_A, USER_B, USER_A)]
        assert listed_positions(server, USER_A) == {jobs[0]: 0, jobs[2]: 2}
        assert state(server, jobs[1], USER_B)["queue_position"] == 1
        cancel(server, jobs[0])
        assert state(server, jobs[1], USER_B)["queue_position"] == 0
        assert state(server, jobs[2])["queue_position"] == 1

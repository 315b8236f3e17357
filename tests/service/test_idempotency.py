"""Idempotent submission (service/idempotency.py) against real servers: an `Idempotency-Key` on
POST /jobs and POST /styles replays the first answer for the same body (whatever the multipart
boundary), 422 for another body, per caller; in the process and in a real redis-server."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_redis, running_server
from devkit.videos import make_video
from service.idempotency import (
    Entry,
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    IdempotentRequest,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    replay,
)

USER_A, USER_B, ADMIN = "idem-user-a-0123456789", "idem-user-b-0123456789", "idem-admin-012345"
STYLE = encode(random_image(40, 40, seed=3201))
OTHER_STYLE = encode(random_image(40, 40, seed=3202))
VIDEO = make_video(frames=4, width=64, height=48, audio=False)
JOB_FIELDS = [("style_size", "32"), ("content_size", "0"), ("stabilize", "false")]


def env(server_env: dict[str, str], tmp: Path) -> dict[str, str]:
    return {
        **server_env,
        "ADAIN_JOBS_DIR": str(tmp / "jobs"),
        "ADAIN_STYLES_DIR": str(tmp / "styles"),
        "ADAIN_API_KEYS": f"{USER_A},{USER_B}",
        "ADAIN_ADMIN_KEYS": ADMIN,
        "ADAIN_MAX_OUTPUT_PIXELS": "65536",
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WARMUP": "false",
    }


@pytest.fixture(scope="module")
def server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with running_server(env(server_env, tmp_path_factory.mktemp("idempotency"))) as running:
        yield running


def multipart(
    fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]], boundary: str
) -> bytes:
    """A multipart/form-data body written out with the given boundary."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    for name, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def post(
    server: RunningServer,
    path: str,
    fields: list[tuple[str, str]],
    files: list[tuple[str, str, bytes]],
    caller: str,
    idempotency_key: str | None,
) -> httpx.Response:
    boundary = secrets.token_hex(12)  # a new boundary each time: the same body all the same
    headers = {"X-API-Key": caller, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    body = multipart(fields, files, boundary)
    return httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=60)


def submit_job(
    server: RunningServer, caller: str, key: str | None, style: bytes = STYLE
) -> httpx.Response:
    files = [("video", "clip.mp4", VIDEO), ("style", "s.png", style)]
    return post(server, "/jobs", JOB_FIELDS, files, caller, key)


def job_ids(server: RunningServer, caller: str) -> list[str]:
    answer = httpx.get(f"{server.url}/jobs", headers={"X-API-Key": caller}, timeout=30)
    return [job["id"] for job in answer.json()["jobs"]]


def test_a_retried_job_submission_replays_the_first_answer(server: RunningServer) -> None:
    key = f'"{secrets.token_hex(16)}"'  # a Structured Field string, as the draft writes it
    first = submit_job(server, USER_A, key)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = submit_job(server, USER_A, key)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"] == f"/jobs/{first.json()['id']}"
    assert job_ids(server, USER_A).count(first.json()["id"]) == 1
    assert len(job_ids(server, USER_A)) == 1  # the retry made no second job

    # Another body under the same key: 422 naming the header; no job made.
    other = submit_job(server, USER_A, key, style=OTHER_STYLE)
    assert other.status_code == 422, other.text
    assert other.json()["field"] == "Idempotency-Key"
    assert len(job_ids(server, USER_A)) == 1

    # Keys are per caller: another key's request with the same key is its own job.
    theirs = submit_job(server, USER_B, key)
    assert theirs.status_code == 202 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.json()["id"] != first.json()["id"]

    # Without a key, a retry is a second job.
    assert submit_job(server, USER_B, None).json()["id"] != theirs.json()["id"]
    assert len(job_ids(server, USER_B)) == 2


def test_concurrent_retries_make_one_job(server: RunningServer) -> None:
    """Sent at once: one request creates the job; each other one gets 409 (still being
    created) or, if it came after, the replayed answer."""
    key = secrets.token_hex(16)
    before = set(job_ids(server, ADMIN))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: submit_job(server, ADMIN, key), range(4)))
    fresh = [a for a in answers if a.status_code == 202 and "Idempotent-Replayed" not in a.headers]
    assert len(fresh) == 1, [a.status_code for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["field"] == "Idempotency-Key"
        else:
            assert answer.status_code == 202 and answer.json()["id"] == fresh[0].json()["id"]
    assert set(job_ids(server, ADMIN)) - before == {fresh[0].json()["id"]}


def test_a_failed_request_frees_its_key(server: RunningServer) -> None:
    """An error is not kept: the retry, fixed, is processed."""
    key = secrets.token_hex(16)
    files = [("video", "clip.mp4", b"not a video"), ("style", "s.png", STYLE)]
    assert post(server, "/jobs", JOB_FIELDS, files, USER_A, key).status_code == 415
    # The same body again is processed again (not a replayed error).
    assert post(server, "/jobs", JOB_FIELDS, files, USER_A, key).status_code == 415
    files[0] = ("video", "clip.mp4", VIDEO)
    # Another body: a key whose first request failed holds nothing to compare with.
    answer = post(server, "/jobs", JOB_FIELDS, files, USER_A, key)
    assert answer.status_code == 202 and "Idempotent-Replayed" not in answer.headers


@pytest.mark.parametrize("bad", ["", '""', "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_refused(server: RunningServer, bad: str) -> None:
    headers = {"X-API-Key": ADMIN, "Idempotency-Key": bad}
    answer = httpx.post(
        f"{server.url}/styles",
        files={"file": ("s.png", STYLE)},
        headers={k: v.encode() if k == "Idempotency-Key" else v for k, v in headers.items()},
        timeout=30,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "Idempotency-Key"


def register(server: RunningServer, name: str, key: str, data: bytes = STYLE) -> httpx.Response:
    return post(server, "/styles", [("name", name)], [("file", "s.png", data)], ADMIN, key)


def test_a_retried_style_registration_replays_the_first_answer(server: RunningServer) -> None:
    key = secrets.token_hex(16)
    image = encode(random_image(36, 36, seed=3203))
    first = register(server, "harbour-idem", key, image)
    assert first.status_code == 201, first.text
    again = register(server, "harbour-idem", key, image)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # The same key and file with another name is another body.
    renamed = register(server, "quay-idem", key, image)
    assert renamed.status_code == 422 and renamed.json()["field"] == "Idempotency-Key"
    # A second registration of the image under a new key answers as the registry does (200).
    assert register(server, "harbour-idem", secrets.token_hex(16), image).status_code == 200


def pending(
    fingerprint: str, store: MemoryIdempotencyStore | RedisIdempotencyStore
) -> IdempotentRequest:
    return IdempotentRequest("k", fingerprint, "POST /jobs", store, 60)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_stores_hold_a_key_for_one_request(backend: str) -> None:
    """What a second request finds while the first holds the key, and after it answered."""

    async def scenario(store: MemoryIdempotencyStore | RedisIdempotencyStore) -> None:
        request = pending("fp1", store)
        assert await store.claim("caller:k", Entry("fp1"), 60) is None
        held = await store.claim("caller:k", Entry("fp1"), 60)
        assert held == Entry("fp1")
        with pytest.raises(IdempotencyKeyInUseError):
            replay(held, request)
        with pytest.raises(IdempotencyKeyReusedError):
            replay(held, pending("fp2", store))
        await store.keep("caller:k", Entry("fp1", 202, {"id": "x"}, {"location": "/jobs/x"}), 60)
        answer = replay(await store.claim("caller:k", Entry("fp1"), 60) or Entry(""), request)
        assert answer.status_code == 202 and answer.body == b'{"id":"x"}'
        assert answer.headers["location"] == "/jobs/x"
        assert answer.headers["idempotent-replayed"] == "true"
        await store.release("caller:k")
        assert await store.claim("caller:k", Entry("fp2"), 60) is None  # free again
        assert await store.claim("other:k", Entry("fp1"), 0.2) is None
        await asyncio.sleep(0.3)
        assert await store.claim("other:k", Entry("fp3"), 60) is None  # expired

    if backend == "memory":
        asyncio.run(scenario(MemoryIdempotencyStore()))
        return
    with running_redis() as url:

        async def on_redis() -> None:
            client = redis.asyncio.Redis.from_url(url)
            try:
                await scenario(RedisIdempotencyStore(client))
            finally:
                await client.aclose()

        asyncio.run(on_redis())


def test_with_redis_the_key_is_kept_there(server_env: dict[str, str], tmp_path: Path) -> None:
    """ADAIN_REDIS_URL set: the entry lives in Redis (what the replicas share), replayed."""
    with (
        running_redis() as url,
        running_server({**env(server_env, tmp_path), "ADAIN_REDIS_URL": url}) as server,
    ):
        key = secrets.token_hex(16)
        image = encode(random_image(36, 36, seed=3204))
        first = register(server, "redis-idem", key, image)
        assert first.status_code == 201, first.text
        assert len(redis.Redis.from_url(url).keys("adain:idempotency:*")) == 1
        again = register(server, "redis-idem", key, image)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
        assert register(server, "other-idem", key, image).status_code == 422
        job = submit_job(server, USER_A, key)  # the same key on another endpoint: its own
        assert job.status_code == 202 and "Idempotent-Replayed" not in job.headers
        assert submit_job(server, USER_A, key).json()["id"] == job.json()["id"]

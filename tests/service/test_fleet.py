"""A fleet that shares only Redis and an object store (docs/jobs.md), all real: redis-server
(persistent), SeaweedFS (S3), the service and `adain worker` processes, each with its own empty
ADAIN_JOBS_DIR (scratch only), and a webhook receiver that refuses its first deliveries.

A video job submitted with an Idempotency-Key and a webhook: the replayed key gives the same
job; its worker is SIGKILLed mid-job and the other worker resumes it from the store; the store
is killed and started again while the job runs; meanwhile the API answers 503 with Retry-After
and nothing is lost; the job ends with every frame; the receiver, once it recovers, gets
`completed`, every delivery signed."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
from PIL import Image
from standardwebhooks.webhooks import Webhook

from devkit.images import encode, random_image
from devkit.server import (
    ObjectStore,
    RedisServer,
    RunningServer,
    restartable_redis,
    running_object_store,
    running_server,
)
from tests.service.test_queue import (
    STYLE,
    assert_complete,
    clip,
    job,
    queue_env,
    start_worker,
    stop_worker,
    wait_finished,
    wait_until,
    workers,
)
from tests.service.test_webhooks import REFUSED_FIRST, SECRET, Receiver
from tests.service.test_webhooks import receiver as receiver  # the fixture

BUCKET, PREFIX = "adain-fleet", "jobs"
FRAMES = 120
SPLIT_FRAMES = 70  # a clip of twice this many frames or more comes in parts


@dataclass
class Fleet:
    server: RunningServer
    redis: RedisServer
    store: ObjectStore
    env: dict[str, str]
    tmp: Path

    def worker_env(self, name: str) -> dict[str, str]:
        """A worker's own settings: the shared ones, and a folder nobody else has."""
        folder = self.tmp / f"worker-{name}"
        folder.mkdir(exist_ok=True)
        return {**self.env, "ADAIN_JOBS_DIR": str(folder)}

    def stored_keys(self, job_id: str) -> list[str]:
        client = boto3.client("s3", endpoint_url=self.store.endpoint, **credentials(self.store))
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{job_id}/")
        return [item["Key"].split("/", 2)[2] for item in listed.get("Contents", [])]


def credentials(store: ObjectStore) -> dict[str, str]:
    return {
        "aws_access_key_id": store.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": store.env["AWS_SECRET_ACCESS_KEY"],
        "region_name": store.env["AWS_REGION"],
    }


@pytest.fixture(scope="module")
def fleet(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    with (
        restartable_redis(tmp_path_factory.mktemp("fleet-redis")) as redis,
        running_object_store(tmp_path_factory.mktemp("fleet-s3")) as store,
    ):
        service_folder = tmp / "service"
        env = {
            **queue_env(server_env, redis.url, service_folder),
            **store.env,
            "ADAIN_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
            "ADAIN_WEBHOOK_SECRET": SECRET,
            "ADAIN_WEBHOOK_ALLOW_PRIVATE": "true",
            "ADAIN_WEBHOOK_RETRY_S": "0.3",
            "ADAIN_JOB_SPLIT_FRAMES": str(SPLIT_FRAMES),
        }
        with running_server({**env, "ADAIN_SERVE_RUNS_JOBS": "false"}) as server:
            yield Fleet(server, redis, store, env, tmp)


def post_job(url: str, video: bytes, key: str, **form: str) -> httpx.Response:
    return httpx.post(
        f"{url}/jobs",
        files=[("video", ("clip.mp4", video)), ("style", ("s.png", STYLE))],
        data={"style_size": "48", "content_size": "0", "stabilize": "true", **form},
        headers={"Idempotency-Key": key},
        timeout=60,
    )


def test_a_job_outlives_its_worker_and_the_store_with_nothing_shared_but_them(
    fleet: Fleet, receiver: tuple[Receiver, str]
) -> None:
    state, hook = receiver
    url, video = fleet.server.url, clip(FRAMES, seed=41)
    form = {"webhook": hook, "webhook_events": "start,completed"}

    first = start_worker(fleet.worker_env("first"))
    try:
        assert FRAMES < 2 * SPLIT_FRAMES, "one part: one worker at a time"
        answer = post_job(url, video, "fleet-video", **form)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        again = post_job(url, video, "fleet-video", **form)
        assert again.status_code == 202 and again.json()["id"] == job_id
        assert again.headers["idempotent-replayed"] == "true"
        # Killed once the store holds a checkpoint with some frames, well before the end.
        wait_until(
            lambda: (
                "work/checkpoint.pt" in fleet.stored_keys(job_id)
                and job(url, job_id)["frames_done"] >= 10
            ),
            180,
            "a checkpoint in the store",
        )
        first.process.kill()
        first.process.wait()
        killed_at = job(url, job_id)["frames_done"]
        assert killed_at < FRAMES
    finally:
        stop_worker(first)

    second = start_worker(fleet.worker_env("second"), metrics=True)
    try:
        wait_until(lambda: job(url, job_id)["frames_done"] > killed_at, 120, "the job to resume")
        fleet.store.kill()
        try:
            refused = post_job(url, clip(4, seed=42), "while-down")
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) > 0 and refused.json()["detail"]
            assert job(url, job_id)["status"] == "running", "the records (Redis) still answer"
        finally:
            fleet.store.start()
        final = wait_finished(url, job_id, timeout_s=300)
        assert final["status"] == "succeeded", final
        assert 0 < second.frames_stylized() < FRAMES, "resumed, not started over"
    finally:
        stop_worker(second)
    assert_complete(url, job_id, video)
    ranged = httpx.get(f"{url}/jobs/{job_id}/result", headers={"Range": "bytes=0-99"}, timeout=30)
    assert ranged.status_code == 206 and len(ranged.content) == 100
    # The store keeps the result only; the processes' folders keep nothing of the job once
    # a worker starts again on the killed one's folder.
    assert fleet.stored_keys(job_id) == ["result.mp4"]
    stop_worker(start_worker(fleet.worker_env("first")))
    for folder in fleet.tmp.iterdir():
        assert not [p for p in folder.rglob("*") if job_id in p.as_posix() and p.is_file()]

    deadline = time.monotonic() + 60
    while not any(json.loads(r.body)["type"] == "job.completed" for r in state.accepted()):
        assert time.monotonic() < deadline, [r.body for r in state.received]
        time.sleep(0.2)
    signer = Webhook(SECRET)
    for request in state.received:
        signer.verify(request.body, request.headers)
    kinds = [json.loads(r.body)["type"] for r in state.accepted()]
    assert kinds == ["job.start", "job.completed"]
    assert len(state.received) == len(state.accepted()) + REFUSED_FIRST


def test_a_result_can_be_fetched_from_the_store_by_a_redirect(fleet: Fleet) -> None:
    """ADAIN_RESULT_REDIRECT: 307 to a presigned URL of the store, the same bytes as streamed
    through a replica without it (on the same Redis and store)."""
    env = {**fleet.env, "ADAIN_RESULT_REDIRECT": "true", "ADAIN_JOBS_DIR": str(fleet.tmp / "r")}
    with running_server(env) as redirecting:  # runs queued jobs itself (the default)
        answer = post_job(redirecting.url, clip(4, seed=43), "redirected")
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert wait_finished(redirecting.url, job_id)["status"] == "succeeded"
        moved = httpx.get(f"{redirecting.url}/jobs/{job_id}/result", timeout=30)
        assert moved.status_code == 307, moved.text
        location = moved.headers["location"]
        assert location.startswith(fleet.store.endpoint) and "Signature" in location
        through = httpx.get(f"{redirecting.url}/jobs/{job_id}/result?redirect=false", timeout=30)
        assert through.status_code == 200, "the page's way: streamed, the key never leaves"
    direct = httpx.get(location, timeout=30)
    assert direct.status_code == 200 and direct.headers["content-type"] == "video/mp4"
    streamed = httpx.get(f"{fleet.server.url}/jobs/{job_id}/result", timeout=30)
    assert streamed.status_code == 200 and streamed.content == direct.content


def test_a_long_video_is_stylized_by_idle_workers_at_once(fleet: Fleet) -> None:
    """A clip of three parts on two workers: both stylize some of it, at the same time, and
    the joined result has every frame at its time; no part's work is left in the store."""
    url, video = fleet.server.url, clip(3 * SPLIT_FRAMES, seed=44)
    workers = [start_worker(fleet.worker_env(name), metrics=True) for name in ("p", "q")]
    try:
        answer = post_job(url, video, "long-video")
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        both_busy = wait_until(
            lambda: (
                all(w.frames_stylized() > 0 for w in workers)
                and job(url, job_id)["status"] == "running"
            ),
            180,
            "both workers to stylize parts of it",
        )
        assert both_busy
        assert wait_finished(url, job_id, timeout_s=300)["status"] == "succeeded"
    finally:
        for worker in workers:
            stop_worker(worker)
    assert_complete(url, job_id, video)
    assert fleet.stored_keys(job_id) == ["result.mp4"]


def test_a_batch_job_runs_on_the_fleet(fleet: Fleet) -> None:
    """Several images in one job, run by a worker from the store: a ZIP with its manifest, and
    each image on its own, equal to what /stylize answers for it."""
    url = fleet.server.url
    contents = [encode(random_image(72, 56, seed=4500 + i)) for i in range(3)]
    with workers(fleet.env | {"ADAIN_JOBS_DIR": str(fleet.tmp / "batch-worker")}):
        answer = httpx.post(
            f"{url}/jobs",
            files=[("content", (f"{i}.png", c)) for i, c in enumerate(contents)]
            + [("style", ("s.png", STYLE))],
            data={"style_size": "48", "content_size": "0"},
            timeout=60,
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        final = wait_finished(url, job_id)
    assert final["status"] == "succeeded" and final["items_done"] == 3, final
    archive = zipfile.ZipFile(
        io.BytesIO(httpx.get(f"{url}/jobs/{job_id}/result", timeout=30).content)
    )
    manifest = json.loads(archive.read("manifest.json"))
    assert [item["error"] for item in manifest["items"]] == [None] * 3
    for index, content in enumerate(contents):
        item = httpx.get(f"{url}/jobs/{job_id}/items/{index}", timeout=30)
        assert item.status_code == 200
        assert item.content == archive.read(manifest["items"][index]["output"])
        expected = httpx.post(
            f"{url}/stylize",
            files=[("content", ("c.png", content)), ("style", ("s.png", STYLE))],
            data={"style_size": "48", "content_size": "0"},
            timeout=60,
        )
        assert np.abs(pixels(item.content) - pixels(expected.content)).max() <= 2
    assert set(fleet.stored_keys(job_id)) >= {"result.zip", "manifest.json"}
    assert not [key for key in fleet.stored_keys(job_id) if key.startswith(("work/", "inputs/"))]


def pixels(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.int16)

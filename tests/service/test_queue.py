"""Video jobs over worker processes (docs/jobs.md), all real: a uvicorn service and `adain worker`
processes on a real redis-server (persistent, restarted by the tests), real encoded clips in and
real MP4s out. Faults: a worker SIGKILLed mid-job, Redis restarted mid-job, a job whose input
fails in the worker, DELETE of a job running on another worker; the service running jobs
itself (ADAIN_SERVE_RUNS_JOBS); `adain worker` without Redis."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import redis

from devkit import REPO
from devkit.images import encode, random_image
from devkit.server import (
    RedisServer,
    RunningServer,
    free_port,
    log_path,
    restartable_redis,
    running_server,
)
from devkit.videos import make_video
from service.jobs.queue import METRICS_EVERY_S, NAMESPACE, QUEUE_NAME, STARTS_KEY

STYLE = encode(random_image(48, 48, seed=2001))
FORM = {"style_size": "48", "content_size": "0", "stabilize": "false"}
HEARTBEAT_S = 2.0


def queue_env(server_env: dict[str, str], redis_url: str, jobs_dir: Path) -> dict[str, str]:
    """What the service and its workers share: Redis, the job folder, short checkpoints and
    heartbeats so that faults show within seconds."""
    return {
        **server_env,
        "ADAIN_REDIS_URL": redis_url,
        "ADAIN_JOBS_DIR": str(jobs_dir),
        "ADAIN_JOB_CHECKPOINT_S": "0.3",
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WORKER_HEARTBEAT_S": str(HEARTBEAT_S),
        "ADAIN_WARMUP": "false",
        "ADAIN_WORKER_METRICS_PORT": "0",
    }


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str | None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def frames_stylized(self) -> float:
        assert self.metrics_url
        text = httpx.get(self.metrics_url, timeout=5).text
        return float(re.search(r"^adain_job_frames_total (\S+)$", text, re.M).group(1))


def start_worker(env: dict[str, str], metrics: bool = False) -> Worker:
    """`adain worker` (this worktree's code) in its own process, once it says it is ready."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
    port = free_port() if metrics else 0
    log_file = log_path("adain-worker-")
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from cli.app import app; app(['worker'])"],
            cwd=REPO,
            env={**clean, **env, "ADAIN_WORKER_METRICS_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = Worker(process, log_file, f"http://127.0.0.1:{port}/metrics" if port else None)
    deadline = time.monotonic() + 120
    while "worker ready" not in worker.logs():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"worker did not start:\n{worker.logs()}")
        time.sleep(0.1)
    return worker


def stop_worker(worker: Worker) -> None:
    if worker.process.poll() is None:
        worker.process.terminate()
        try:
            worker.process.wait(30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


@contextmanager
def workers(env: dict[str, str], count: int = 1) -> Iterator[list[Worker]]:
    started = [start_worker(env) for _ in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            stop_worker(worker)


@dataclass
class Deployment:
    server: RunningServer
    redis: RedisServer
    env: dict[str, str]
    jobs_dir: Path

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)


@pytest.fixture(scope="module")
def deployment(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """The service (ADAIN_SERVE_RUNS_JOBS=false: only workers run jobs) on a persistent Redis."""
    jobs_dir = tmp_path_factory.mktemp("queue-jobs")
    with restartable_redis(tmp_path_factory.mktemp("queue-redis")) as server_redis:
        env = queue_env(server_env, server_redis.url, jobs_dir)
        with running_server({**env, "ADAIN_SERVE_RUNS_JOBS": "false"}) as server:
            yield Deployment(server, server_redis, env, jobs_dir)


def clip(frames: int, seed: int = 0) -> bytes:
    return make_video(frames=frames, width=96, height=64, audio=False, seed=seed)


def submit(url: str, video: bytes, **form: str) -> str:
    response = httpx.post(
        f"{url}/jobs",
        files=[("video", ("clip.mp4", video)), ("style", ("s.png", STYLE))],
        data={**FORM, **form},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/jobs/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def wait_finished(url: str, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        state = job(url, job_id)
        return state if state["status"] in ("succeeded", "failed", "canceled") else None

    return wait_until(finished, timeout_s, f"job {job_id} to finish")


def input_timestamps(data: bytes) -> list[Fraction]:
    with av.open(io.BytesIO(data)) as container:
        return [f.pts * f.time_base for f in container.decode(video=0)]


def result(url: str, job_id: str) -> bytes:
    response = httpx.get(f"{url}/jobs/{job_id}/result", timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def assert_complete(url: str, job_id: str, video: bytes) -> list[np.ndarray]:
    """Succeeded, and the output has every input frame once: the same count at the same times
    (none lost, none twice)."""
    state = job(url, job_id)
    assert state["status"] == "succeeded", state
    data = result(url, job_id)
    with av.open(io.BytesIO(data)) as container:
        decoded = list(container.decode(video=0))
        times = [f.pts * f.time_base for f in decoded]
        pixels = [f.to_ndarray(format="rgb24").astype(np.float32) for f in decoded]
    expected = input_timestamps(video)
    assert len(times) == len(expected) == state["frames_total"]
    assert times == expected
    return pixels


def starts(deployment: Deployment, job_id: str) -> int:
    value = deployment.client().get(STARTS_KEY.format(job_id))
    return int(value or 0)


# --- the tests -------------------------------------------------------------------------------


def test_a_worker_runs_the_job_the_service_queued(deployment: Deployment) -> None:
    url = deployment.server.url
    video = clip(10, seed=1)
    with workers(deployment.env) as (worker,):
        job_id = submit(url, video)
        wait_finished(url, job_id)
        assert_complete(url, job_id, video)
    assert starts(deployment, job_id) == 1
    # The service ran none of it (ADAIN_SERVE_RUNS_JOBS=false): the worker did.
    assert re.search(rf'"job succeeded".*"{job_id}"', worker.logs())
    assert "job succeeded" not in deployment.server.logs()
    # The folder's counts are refreshed every METRICS_EVERY_S: within two refreshes.
    deadline = time.monotonic() + 2 * METRICS_EVERY_S + 5
    while True:
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        if re.search(r'^adain_jobs\{state="succeeded"\} [1-9]', metrics, re.M):
            break
        assert time.monotonic() < deadline, metrics
        time.sleep(0.5)
    assert re.search(r"^adain_job_queue_length 0\.0$", metrics, re.M)


def test_the_queue_length_counts_jobs_no_worker_took(deployment: Deployment) -> None:
    url = deployment.server.url
    ids = [submit(url, clip(4, seed=10 + i)) for i in range(2)]
    length = deployment.client().llen(f"{NAMESPACE}:{QUEUE_NAME}")
    assert length == 2
    wait_until(
        lambda: re.search(
            r"^adain_job_queue_length 2\.0$", httpx.get(f"{url}/metrics", timeout=10).text, re.M
        ),
        15,
        "the gauge to show 2 waiting",
    )
    assert all(job(url, i)["status"] == "queued" for i in ids)
    with workers(deployment.env):
        for job_id in ids:
            assert wait_finished(url, job_id)["status"] == "succeeded"
    assert deployment.client().llen(f"{NAMESPACE}:{QUEUE_NAME}") == 0


def test_a_killed_worker_s_job_finishes_on_the_next_with_every_frame_once(
    deployment: Deployment,
) -> None:
    url = deployment.server.url
    video = clip(48, seed=2)
    first = start_worker(deployment.env)
    try:
        job_id = submit(url, video)
        # Killed once a checkpoint holds some frames, well before the end.
        checkpoint = deployment.jobs_dir / job_id / "work" / "checkpoint.pt"
        wait_until(
            lambda: checkpoint.exists() and job(url, job_id)["frames_done"] >= 8,
            120,
            "a checkpoint",
        )
        first.process.kill()
        first.process.wait()
        killed_at = job(url, job_id)
        assert killed_at["status"] == "running" and killed_at["frames_done"] < 48, killed_at
    finally:
        stop_worker(first)
    second = start_worker(deployment.env, metrics=True)
    try:
        state = wait_finished(url, job_id)
        assert state["status"] == "succeeded", state
        # Resumed from the checkpoint: the second worker stylized fewer than all the frames.
        assert 0 < second.frames_stylized() < 48
    finally:
        stop_worker(second)
    interrupted = assert_complete(url, job_id, video)
    assert starts(deployment, job_id) == 2

    # The same clip without a fault: the same pictures (per-frame stylization is deterministic;
    # H.264 at CRF 18 differs a little across segment boundaries).
    with workers(deployment.env):
        reference_id = submit(url, video)
        wait_finished(url, reference_id)
    reference = assert_complete(url, reference_id, video)
    for index, (a, b) in enumerate(zip(interrupted, reference, strict=True)):
        assert np.abs(a - b).mean() < 3.0, index


def test_a_stopped_worker_hands_its_job_back_at_once(deployment: Deployment) -> None:
    """SIGTERM (docker stop, a rolling update): the job checkpoints at the next frame and goes
    back to the queue without waiting for the heartbeat to expire, and without counting as a
    start; the next worker resumes it."""
    url = deployment.server.url
    video = clip(40, seed=11)
    first = start_worker(deployment.env)
    try:
        job_id = submit(url, video)
        wait_until(lambda: job(url, job_id)["frames_done"] >= 4, 120, "the job to run")
        first.process.terminate()
        try:
            code = first.process.wait(90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not stop:\n{first.logs()}") from None
        assert code == 0, first.logs()
    finally:  # never left running to take the next tests' jobs
        first.process.kill()
        first.process.wait()
    assert "job interrupted" in first.logs()
    assert job(url, job_id)["status"] == "running"
    with workers(deployment.env, count=1):
        wait_finished(url, job_id)
    assert_complete(url, job_id, video)
    assert starts(deployment, job_id) == 1


def test_jobs_finish_across_a_redis_restart(deployment: Deployment) -> None:
    """One job running and one waiting when Redis restarts: both finish, the waiting one
    because Redis kept it in its append-only file."""
    url = deployment.server.url
    running_video, waiting_video = clip(40, seed=3), clip(6, seed=4)
    with workers(deployment.env) as (worker,):
        running = submit(url, running_video)
        waiting = submit(url, waiting_video)
        wait_until(lambda: job(url, running)["frames_done"] >= 4, 120, "the job to run")
        deployment.redis.stop()
        time.sleep(1.5)
        deployment.redis.start()
        for job_id in (running, waiting):
            wait_finished(url, job_id)
    assert_complete(url, running, running_video)
    assert_complete(url, waiting, waiting_video)
    assert starts(deployment, running) == 1, "the running job was not started twice"
    assert "connection error" in worker.logs().lower()  # it did see Redis go


def test_a_job_failing_for_its_input_fails_with_the_error_and_is_not_retried(
    deployment: Deployment,
) -> None:
    """An input that passed the service's checks but fails where the job runs (here: the
    uploaded video replaced by garbage while the job waited)."""
    url = deployment.server.url
    job_id = submit(url, clip(4, seed=5))
    (deployment.jobs_dir / job_id / "inputs" / "video").write_bytes(b"not a video at all" * 64)
    with workers(deployment.env):
        state = wait_finished(url, job_id)
        assert state["status"] == "failed", state
        assert state["error"]["detail"]
        # Not retried: one start, nothing waiting or delayed, still failed a while later.
        time.sleep(HEARTBEAT_S * 2)
        assert starts(deployment, job_id) == 1
        assert job(url, job_id)["status"] == "failed"
    client = deployment.client()
    assert client.llen(f"{NAMESPACE}:{QUEUE_NAME}") == 0
    assert client.hlen(f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs") == 0


def test_a_job_whose_worker_dies_every_time_is_given_up(deployment: Deployment) -> None:
    """Redelivery is bounded: with ADAIN_JOB_MAX_RETRIES=0 a job gets one start; after its
    worker is killed the next worker records it failed instead of running it again."""
    url = deployment.server.url
    env = {**deployment.env, "ADAIN_JOB_MAX_RETRIES": "0"}
    first = start_worker(env)
    try:
        job_id = submit(url, clip(60, seed=9))
        wait_until(lambda: job(url, job_id)["frames_done"] >= 2, 120, "the job to run")
        first.process.kill()
        first.process.wait()
    finally:
        stop_worker(first)
    with workers(env):
        state = wait_finished(url, job_id)
    assert state["status"] == "failed", state
    assert "given up after 1 start" in state["error"]["detail"]
    assert starts(deployment, job_id) == 2
    assert not (deployment.jobs_dir / job_id / "work").exists()


def test_delete_reaches_a_job_running_on_another_worker(deployment: Deployment) -> None:
    url = deployment.server.url
    with workers(deployment.env) as (worker,):
        job_id = submit(url, clip(60, seed=6))
        wait_until(lambda: job(url, job_id)["frames_done"] >= 2, 120, "the job to run")
        response = httpx.delete(f"{url}/jobs/{job_id}", timeout=30)
        assert response.status_code == 204, response.text
        assert job(url, job_id)["status"] == "canceled"
        folder = deployment.jobs_dir / job_id
        # The worker stops between two frames and removes the partial output.
        wait_until(
            lambda: not (folder / "work").exists() and not (folder / "inputs").exists(),
            20,
            "the worker to drop the canceled job",
        )
        frames = job(url, job_id)["frames_done"]
        assert frames < 60
        # The worker is free again: the next job runs.
        video = clip(4, seed=7)
        after = submit(url, video)
        wait_finished(url, after)
        assert_complete(url, after, video)
        assert job(url, job_id)["frames_done"] == frames, "the canceled job did not go on"
    assert "job canceled" in worker.logs()


def test_two_workers_finish_a_batch_while_one_is_killed_and_redis_restarts(
    deployment: Deployment,
) -> None:
    """The issue's "done when": every job of a batch of short clips finishes, complete, while a
    worker is killed and Redis restarted in the middle."""
    url = deployment.server.url
    videos = [clip(24, seed=20 + i) for i in range(4)]
    first, second = start_worker(deployment.env), start_worker(deployment.env)
    replacement: Worker | None = None
    try:
        ids = [submit(url, video) for video in videos]
        wait_until(
            lambda: sum(job(url, i)["frames_done"] for i in ids) >= 12,
            120,
            "the batch to be under way",
        )
        first.process.kill()
        first.process.wait()
        deployment.redis.stop()
        time.sleep(1.0)
        deployment.redis.start()
        replacement = start_worker(deployment.env)
        for job_id in ids:
            wait_finished(url, job_id, timeout_s=240)
    finally:
        for worker in (first, second, replacement):
            if worker is not None:
                stop_worker(worker)
    for job_id, video in zip(ids, videos, strict=True):
        assert_complete(url, job_id, video)


def test_the_service_runs_queued_jobs_itself_when_set(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    """ADAIN_SERVE_RUNS_JOBS=true (the default) with Redis and no worker: the service's own
    engine takes the job from the queue."""
    with restartable_redis() as own_redis:
        env = queue_env(server_env, own_redis.url, tmp_path / "jobs")
        with running_server(env) as server:
            video = clip(6, seed=8)
            job_id = submit(server.url, video)
            wait_finished(server.url, job_id)
            assert_complete(server.url, job_id, video)
            assert redis.Redis.from_url(own_redis.url).get(STARTS_KEY.format(job_id)) == b"1"


def test_a_worker_without_redis_says_so(server_env: dict[str, str]) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAIN_")}
    result = subprocess.run(
        [sys.executable, "-c", "from cli.app import app; app(['worker'])"],
        cwd=REPO,
        env={**clean, **server_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "ADAIN_REDIS_URL" in result.stderr

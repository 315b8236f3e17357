"""Video jobs over worker processes: a Dramatiq queue on the deployment's Redis (docs/jobs.md).

The service sends one message per job (its id); a worker process takes it and runs the one job
function (`service.jobs.run.run_job`) on it. Everything else a job has (inputs, record,
progress, cancellation, checkpoints, result) lives in the jobs' store (`service.jobs.store`:
records in Redis, files in the object store or a shared folder), not in the message, so a
message redelivered after its worker died resumes the job at its last checkpoint.

Why Dramatiq: its Redis broker hands a dead worker's messages back by heartbeat, not after a
visibility timeout, so a long job is never given to a second worker while the first runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import TimeLimit

from media.clip import ClipSettings, FrameBackend
from service import metrics
from service.engine import Engine
from service.jobs.local import EngineBackend, LocalRunner
from service.jobs.records import LOCK_TTL_S
from service.jobs.run import run_job
from service.jobs.store import JobRecord, JobStatus, JobStore
from service.registry import RedisUnavailableError

log = logging.getLogger("service.jobs")

QUEUE_NAME = "adain-jobs"
ACTOR_NAME = "run_video_job"
NAMESPACE = "adain-dramatiq"
# Dramatiq looks for dead workers on a random share of its Redis commands (per million); its
# default (1 in 1000) leaves a dead worker's job waiting for minutes on a quiet queue.
MAINTENANCE_CHANCE = 100_000
# Starts of one job, counted across workers: a job that kills every worker running it (out of
# memory, say) must stop being redelivered. Kept as long as a job can live.
STARTS_KEY = "adain:job-starts:{}"
STARTS_TTL_S = 7 * 24 * 3600
METRICS_EVERY_S = 5.0


@dataclass(frozen=True)
class QueueConfig:
    """Built from the settings (`service.jobs.worker.queue_config`)."""

    redis_url: str
    heartbeat_s: float  # a worker silent this long is dead: its message is requeued
    max_retries: int  # restarts after an unexpected error or a dead worker
    min_backoff_s: float = 1.0


class JobInterruptedRetry(dramatiq.Retry):
    """This process stops (SIGTERM, shutdown): the job checkpointed, back to the queue now.
    Not a failed start: never counted against the job's retries."""


class JobClaimedRetry(JobInterruptedRetry):
    """Another process holds the job's claim: it runs the job, or it died and its claim is
    about to expire (`service.jobs.records.LOCK_TTL_S`); the message comes back after that."""


# run(message): the job or part the message names (`message_of`) to its end (succeeded,
# failed for its input, canceled) from its last checkpoint; raises JobInterruptedRetry when
# this process stops first.
JobFunction = Callable[[str], None]
# give_up(job_id, reason): the job recorded failed, once its starts are used up.
GiveUp = Callable[[str, str], None]


def make_broker(config: QueueConfig, socket_timeout_s: float = 10.0) -> RedisBroker:
    """The broker both sides use. Without Dramatiq's TimeLimit (10 minutes by default), which
    would cut a long video short: a job's length is bounded by the video limits."""
    broker = RedisBroker(
        url=config.redis_url,
        namespace=NAMESPACE,
        heartbeat_timeout=int(config.heartbeat_s * 1000),
        maintenance_chance=MAINTENANCE_CHANCE,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=min(socket_timeout_s, 5.0),
        health_check_interval=5,
    )
    for middleware in list(broker.middleware):
        if isinstance(middleware, TimeLimit):
            broker.middleware.remove(middleware)
    return broker


def declare_actor(
    broker: RedisBroker, config: QueueConfig, run: JobFunction | None, give_up: GiveUp | None
) -> dramatiq.Actor:
    """The one actor, on `broker`. A sender declares it with run=None: it never runs jobs."""

    def run_video_job(message: str) -> None:
        if run is None or give_up is None:
            raise RuntimeError("this process only sends jobs")
        # Every start counts, whether the last one raised or its worker died: at most
        # max_retries + 1 starts, then the job is failed instead of redelivered forever.
        starts = count_start(broker.client, message, +1)
        if starts > config.max_retries + 1:
            give_up(
                message,
                f"given up after {starts - 1} start(s): each time the worker "
                "running it died or failed (out of memory?)",
            )
            return
        try:
            run(message)
        except JobInterruptedRetry:
            # A clean stop is not a failed start (uncounted unless Redis is down right now).
            with contextlib.suppress(redis.RedisError, OSError):
                count_start(broker.client, message, -1)
            raise
        except Exception as exc:
            if starts > config.max_retries:
                log.exception("job failed on its last start", extra={"job": message})
                give_up(message, f"the job failed unexpectedly ({type(exc).__name__})")
                return
            log.warning("job start failed; retried", extra={"job": message, "error": repr(exc)})
            raise

    def retry_when(retries: int, exception: Exception) -> bool:
        # Interruptions always go back; other errors were counted by the starts above.
        return isinstance(exception, JobInterruptedRetry) or retries < config.max_retries

    return dramatiq.actor(
        run_video_job,
        actor_name=ACTOR_NAME,
        queue_name=QUEUE_NAME,
        broker=broker,
        retry_when=retry_when,
        min_backoff=int(config.min_backoff_s * 1000),
        max_backoff=int(max(config.min_backoff_s, 30.0) * 1000),
    )


def message_of(job_id: str, part: int | None) -> str:
    """What a message carries: the job's id, and `/<part>` for a part of a long video's."""
    return job_id if part is None else f"{job_id}/{part}"


def parse_message(message: str) -> tuple[str, int | None]:
    job_id, _, part = message.partition("/")
    return job_id, int(part) if part else None


def count_start(client: redis.Redis, job_id: str, change: int) -> int:
    key = STARTS_KEY.format(job_id)
    pipe = client.pipeline()
    pipe.incrby(key, change)
    pipe.expire(key, STARTS_TTL_S)
    starts, _ = pipe.execute()
    return int(starts)


class JobQueue:
    """The queue as a sender sees it: hand a job over, measure the queue."""

    def __init__(self, config: QueueConfig) -> None:
        # Short timeouts: a submission waits at most this for a Redis that does not answer.
        self.broker = make_broker(config, socket_timeout_s=2.0)
        self._actor = declare_actor(self.broker, config, run=None, give_up=None)

    def submit(self, message: str) -> None:
        try:
            self._actor.send(message)
        except (redis.RedisError, OSError, dramatiq.errors.ConnectionError) as exc:
            raise RedisUnavailableError(
                "the job queue (Redis) does not answer; try again shortly", None
            ) from exc

    def length(self) -> int:
        """Jobs in the queue, waiting or being run (a message stays until its job ends; retries
        wait in the delay queue): what the workers' autoscaler scales on."""
        pipe = self.broker.client.pipeline()
        pipe.hlen(f"{NAMESPACE}:{QUEUE_NAME}.msgs")
        pipe.hlen(f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs")
        return sum(int(count) for count in pipe.execute())

    def close(self) -> None:
        self.broker.close()


class QueueWorker:
    """Dramatiq's worker in this process, one job at a time: the networks are one per process,
    and a prefetched second message would wait here instead of going to an idle worker."""

    def __init__(self, config: QueueConfig, run: JobFunction, give_up: GiveUp) -> None:
        self.broker = make_broker(config)
        declare_actor(self.broker, config, run, give_up)
        self._worker = dramatiq.Worker(
            self.broker, queues={QUEUE_NAME}, worker_threads=1, worker_timeout=500
        )
        # Dramatiq's prefetch is twice the threads unless an environment variable says
        # otherwise; read when the worker starts.
        self._worker.queue_prefetch = 1

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Waits for the job in hand to stop (the caller made `should_stop` true first)."""
        self._worker.stop(timeout=int(timeout_s * 1000))
        self.broker.close()


def job_handlers(
    store: JobStore, backend: FrameBackend, settings: ClipSettings, should_stop: Callable[[], bool]
) -> tuple[JobFunction, GiveUp]:
    """What a queue worker runs: `run_job` on this process's backend, the same function as the
    one-machine runner's; and how it records a job it gives up."""

    def run(message: str) -> None:
        job_id, part = parse_message(message)
        record = run_job(job_id, store, backend, settings, should_stop, part=part)
        if record is None:
            if should_stop():
                raise JobInterruptedRetry("this worker is stopping", delay=0)
            current = store.get(job_id)
            if current is not None and not current.status.finished:
                # Claimed by another process: if that one died, this message resumes the job
                # once its claim has expired; if it lives, the job is over by then.
                raise JobClaimedRetry("claimed by another process", delay=int(LOCK_TTL_S * 1000))
            log.info("job not run here: gone or finished", extra={"job": job_id})
            return
        observe_finished(record)

    def give_up(message: str, reason: str) -> None:
        job_id, _ = parse_message(message)
        if store.get(job_id) is None:
            return
        observe_finished(store.fail(job_id, reason, None))
        log.warning("job given up", extra={"job": job_id, "detail": reason})

    return run, give_up


def observe_finished(record: JobRecord) -> None:
    if record.status.finished:
        metrics.JOB_SECONDS.labels(record.status.value).observe(
            max(0.0, record.updated - record.created)
        )


def refresh_metrics(store: JobStore, queue: JobQueue | None) -> None:
    """Jobs by state from their records, the queue's length from Redis."""
    counts = dict.fromkeys(JobStatus, 0)
    for record in store.jobs():
        counts[record.status] += 1
    for status, count in counts.items():
        metrics.JOBS.labels(status.value).set(count)
    if queue is not None:
        # /readyz reports Redis; meanwhile the gauge keeps its last value.
        with contextlib.suppress(redis.RedisError, OSError):
            metrics.JOB_QUEUE_LENGTH.set(queue.length())


class QueueRunner(LocalRunner):
    """The service's side with ADAIN_REDIS_URL set: jobs go to the queue; the service also
    takes some from it through its engine (ADAIN_SERVE_RUNS_JOBS), frames interleaved with
    /stylize as in the one-machine mode. Cancel and cleanup are the one-machine runner's: they
    go through the job's record (in Redis), which reaches a job running on any worker."""

    def __init__(
        self,
        store: JobStore,
        engine: Engine,
        settings: ClipSettings,
        config: QueueConfig,
        runs_jobs: bool,
    ) -> None:
        super().__init__(store, engine, settings)
        self.config = config
        self.runs_jobs = runs_jobs
        self.queue = JobQueue(config)
        self._worker: QueueWorker | None = None

    async def start(self) -> None:
        if self.runs_jobs:
            backend = EngineBackend(self.engine, asyncio.get_running_loop())
            run, give_up = job_handlers(self.store, backend, self.settings, lambda: self._stopping)
            self._worker = QueueWorker(self.config, run, give_up)
            self._worker.start()
        self._tasks = [asyncio.create_task(self._clean()), asyncio.create_task(self._metrics())]

    def submit(self, job_id: str) -> None:
        """A message per part of the job (one for a job in one part)."""
        try:
            record = self.store.get(job_id)
            parts = range(len(record.parts)) if record is not None and record.parts else [None]
            for part in parts:
                self.queue.submit(message_of(job_id, part))
        except RedisUnavailableError:
            self.store.delete(job_id)  # never a job that nobody will run
            raise

    async def close(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._worker is not None:
            await asyncio.to_thread(self._worker.stop)
        self.queue.close()

    async def _metrics(self) -> None:
        while True:
            await asyncio.to_thread(refresh_metrics, self.store, self.queue)
            await asyncio.sleep(METRICS_EVERY_S)

"""`adain worker`: a process that loads the networks once and runs video jobs from the queue
(docs/jobs.md). Any number of them, on any host that reaches Redis and the jobs' store (an
object store, or a folder they share).

SIGTERM or SIGINT stops it cleanly: the job in hand checkpoints at the next frame and goes back
to the queue at once, for another worker (or this one, restarted) to resume.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from media.clip import ModelBackend
from models.pipeline import build_pipeline
from service.jobs.queue import QueueConfig, QueueWorker, job_handlers
from service.jobs.store import job_store
from service.logs import configure_logging
from service.settings import Settings

log = logging.getLogger("service.worker")


def queue_config(settings: Settings) -> QueueConfig:
    return QueueConfig(settings.redis_url, settings.worker_heartbeat_s, settings.job_max_retries)


def run_worker(settings: Settings) -> None:
    """Runs until SIGTERM/SIGINT. Raises ValueError without ADAIN_REDIS_URL (nothing to take
    jobs from)."""
    if not settings.redis_url:
        raise ValueError("adain worker needs ADAIN_REDIS_URL: the queue it takes jobs from")
    configure_logging(settings.log_level)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopping: the job in hand checkpoints and goes back to the queue")
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # The service's models (ADAIN_MODELS), so that any job it accepted runs here too.
    pipelines = {
        model.value: build_pipeline(settings.pipeline_config(model))
        for model in settings.model_list
    }
    pipeline = pipelines[settings.model.value]
    store = job_store(settings)
    store.clear_scratch()  # what a killed predecessor left in this folder
    backend = ModelBackend(pipelines)
    run, give_up = job_handlers(store, backend, settings.clip_settings(), stop.is_set)
    worker = QueueWorker(queue_config(settings), run, give_up)
    if settings.worker_metrics_port:  # its frames and job durations; the states: the service
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
    log.info(
        "worker ready",
        extra={
            "device": str(pipeline.device),
            "dtype": str(pipeline.net.dtype),
            "models": list(pipelines),
            "storage": settings.storage_url or str(settings.jobs_dir),
        },
    )
    worker.start()
    stop.wait()
    worker.stop()
    log.info("worker stopped")

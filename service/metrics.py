"""Prometheus metrics, exported at GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("adain_requests_total", "HTTP requests", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "adain_request_duration_seconds", "HTTP request latency", ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge("adain_queue_depth", "Engine work items waiting or running")
BATCH_SIZE = Histogram(
    "adain_batch_size", "Stylize items per device batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)
)
INFERENCE_SECONDS = Histogram(
    "adain_inference_seconds", "Time on the networks per batch", ["kind"], buckets=LATENCY_BUCKETS
)
STYLE_CACHE = Counter("adain_style_cache_total", "Style statistics lookups", ["result"])
DEPENDENCY_ERRORS = Counter(
    "adain_dependency_errors_total",
    "Failed calls to a store (redis, styles_dir); the cache is skipped, the registry answers 503",
    ["dependency"],
)
# The metric keeps its published name; "jobs" there are the engine's work items.
ITEMS_DROPPED = Counter(
    "adain_jobs_dropped", "Queued engine work items skipped because their caller had gone"
)

LIVE_STREAMS = Gauge("adain_live_streams", "Open live streams (WebSocket /live)")
LIVE_FRAMES = Counter(
    "adain_live_frames_total",
    "Live frames by outcome: stylized, dropped (late), failed",
    ["outcome"],
)


def record_batch(kind: str, size: int, seconds: float) -> None:
    INFERENCE_SECONDS.labels(kind).observe(seconds)
    if kind == "stylize":
        BATCH_SIZE.observe(size)

# Video jobs (docs/jobs.md). The queue and the states are read from Redis and the job records by
# whoever exports them (the service; each worker); frames and durations are counted where the
# job runs.
JOB_QUEUE_LENGTH = Gauge(
    "adain_job_queue_length", "Video jobs in the task queue: waiting, being run or to be retried"
)
JOBS = Gauge("adain_jobs", "Jobs in the store, by state", ["state"])
JOB_FRAMES = Counter("adain_job_frames_total", "Video frames stylized by jobs in this process")
JOB_SECONDS = Histogram(
    "adain_job_duration_seconds", "Video jobs from submission to their end, by outcome",
    ["status"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)

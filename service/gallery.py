"""The preset gallery: a few public-domain artworks (service/presets/, their sources and
licences in SOURCES.md there) registered as named styles when the service starts, so that a
first visit has styles to try. Registering is idempotent (a style's id is its bytes' hash);
ADAIN_PRESETS=false turns the gallery off."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from PIL import Image

from models.errors import DomainError
from service.registry import StyleRegistry, new_record

log = logging.getLogger("service.gallery")

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# In the gallery's order (the registry lists the oldest first); each is PRESETS_DIR/<name>.jpg.
PRESET_NAMES = (
    "starry-night",
    "great-wave",
    "the-scream",
    "water-lilies",
    "composition-vii",
    "minotaur-shipwreck",
)


async def register_presets(registry: StyleRegistry) -> list[str]:
    """Registers every preset not registered yet; returns the names registered now. A preset
    that cannot be (its name taken by another image, the store unreachable) is logged and
    skipped: the service starts without it."""
    registered = []
    for name in PRESET_NAMES:
        data = (PRESETS_DIR / f"{name}.jpg").read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        try:
            _, created = await registry.add(new_record(data, name, width, height), data)
        except DomainError as exc:
            log.warning("preset style not registered", extra={"preset": name, "error": exc.detail})
            continue
        if created:
            registered.append(name)
    if registered:
        log.info("preset styles registered", extra={"presets": registered})
    return registered

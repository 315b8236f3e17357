"""The `adain` console script: the model commands plus `serve`."""

from __future__ import annotations

from models.cli import app

__all__ = ["app"]

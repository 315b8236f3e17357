"""The `adain` console script: the model commands plus `serve`."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from models.cli import Device, app


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address (env ADAIN_HOST, 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env ADAIN_PORT, 8000).")] = None,
    device: Annotated[Device | None, typer.Option(help="(env ADAIN_DEVICE, auto).")] = None,
    half: Annotated[bool | None, typer.Option(help="fp16 on CUDA (env ADAIN_HALF).")] = None,
    encoder: Annotated[Path | None, typer.Option(
        help="vgg_normalised.pth (env ADAIN_ENCODER_PATH; default embedded).")] = None,
    decoder: Annotated[Path | None, typer.Option(
        help="decoder.pth (env ADAIN_DECODER_PATH; default embedded).")] = None,
) -> None:
    """Start the HTTP service. Options override the ADAIN_* environment variables (see README)."""
    # Imported here: the other commands should not pay for loading the web stack.
    import uvicorn

    from service.main import create_app
    from service.settings import Settings

    given = {
        "host": host, "port": port, "device": device.value if device else None, "half": half,
        "encoder_path": encoder, "decoder_path": decoder,
    }
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; handled here, the process
    # then exits 0, which is what service managers expect of a clean stop.
    signal.signal(signal.SIGTERM, exit_cleanly)
    # log_config=None: create_app installs the JSON logging; uvicorn must not replace it.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None)


def exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


__all__ = ["app"]

if __name__ == "__main__":  # `python -m service.cli`, as the console script
    app()

"""`adain serve`: the HTTP service (`service.main`) under uvicorn."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Annotated

import typer

from cli.common import InputError
from models.config import CompileMode, Device, ModelName, Precision


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: Annotated[str | None, typer.Option(help="Address (env ADAIN_HOST, 0.0.0.0).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env ADAIN_PORT, 8000).")] = None,
    device: Annotated[Device | None, typer.Option(help="(env ADAIN_DEVICE, auto).")] = None,
    precision: Annotated[
        Precision | None, typer.Option(help="auto, fp32, bf16 or fp16 (env ADAIN_PRECISION, auto).")
    ] = None,
    compile_: Annotated[
        CompileMode | None,
        typer.Option(
            "--compile",
            help="torch.compile the networks: auto, on or off (env ADAIN_COMPILE, auto).",
        ),
    ] = None,
    encoder: Annotated[
        Path | None,
        typer.Option(help="vgg_normalised.pth (env ADAIN_ENCODER_PATH; default embedded)."),
    ] = None,
    decoder: Annotated[
        Path | None, typer.Option(help="decoder.pth (env ADAIN_DECODER_PATH; default embedded).")
    ] = None,
    model: Annotated[
        ModelName | None,
        typer.Option(
            help="The model of requests naming none: full or lite (env ADAIN_MODEL, full; both "
            "are loaded unless ADAIN_MODELS says otherwise)."
        ),
    ] = None,
) -> None:
    """Start the HTTP service. Options override the ADAIN_* environment variables (see README)."""
    from service.server import serve as serve_app
    from service.settings import Settings

    given = {
        "host": host,
        "port": port,
        "device": device,
        "precision": precision,
        "compile": compile_,
        "encoder_path": encoder,
        "decoder_path": decoder,
        "model": model,
    }
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
    # Bound before the networks load: a taken port is said at once, in one line.
    listening = bind(settings.host, settings.port)
    # uvicorn with the service's options (request-head limits, forwarded headers, connections).
    serve_app(settings, sockets=[listening])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, as uvicorn would open it; a taken port is an error that
    says how to choose another."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} is taken on {host}: set ADAIN_PORT or --port to a free one"
            ) from None
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listening.set_inheritable(True)
    return listening

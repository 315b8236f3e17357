"""`adain worker`: runs video jobs from the queue (`service.jobs.worker`, docs/jobs.md)."""

from __future__ import annotations

import typer

from cli.common import InputError


def register(app: typer.Typer) -> None:
    app.command()(worker)


def worker() -> None:
    """Run video jobs from the queue on ADAIN_REDIS_URL until SIGTERM (docs/jobs.md). Settings:
    the ADAIN_* environment variables, as for `adain serve`."""
    from service.jobs.worker import run_worker
    from service.settings import Settings

    try:
        run_worker(Settings())
    except ValueError as exc:
        raise InputError(str(exc)) from exc

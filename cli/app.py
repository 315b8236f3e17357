"""The `adain` command: the command groups assembled.

    adain stylize | serve | worker | train | eval | convert | normalise-vgg

Each command imports what it needs (torch, the networks, uvicorn and the app) inside its body,
so that `adain --help` and `adain <command> --help` answer without loading them.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import serve, stylize, train, weights, worker
from cli.common import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,
    help="AdaIN arbitrary style transfer.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help, wrapped to the terminal instead of cut at 80 columns; plain tracebacks.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"max_content_width": 120},
)


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show the traceback of an error instead of its one-line message."
        ),
    ] = False,
) -> None:
    """AdaIN arbitrary style transfer (Huang & Belongie 2017)."""
    # Read by `OneLineErrors` from the arguments themselves, before this runs.


for group in (stylize, serve, train, weights, worker):
    group.register(app)

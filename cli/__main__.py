"""`python -m cli`: the `adain` command, as the console script."""

from cli.app import app

app()

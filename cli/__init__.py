"""The `adain` command: one module per command group, each only parsing options and calling
`models/` or `service/`. `cli.app` assembles them; `cli.common` holds the shared options and
how errors are shown (one line, exit status 2 for usage and 1 for input, `--debug` for the
traceback)."""

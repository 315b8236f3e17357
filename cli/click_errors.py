"""The exceptions of the click that typer bundles, which `cli.common` catches to show one line.

typer vendors click as the private module `typer._click` and exports only `BadParameter` of its
exceptions; the command needs their bases too. They are imported here alone, so a typer that
moves them breaks this one module, and tests/cli/test_click_errors.py says so by name.
"""

from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

__all__ = ["ClickException", "NoArgsIsHelpError", "UsageError"]

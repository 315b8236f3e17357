"""`cli.click_errors` leans on typer's private copy of click: these checks fail by name when a
typer release moves or changes what the command catches."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cli.app import app
from cli.click_errors import ClickException, NoArgsIsHelpError, UsageError


def test_the_classes_are_the_ones_typer_raises() -> None:
    assert issubclass(typer.BadParameter, UsageError)
    assert issubclass(UsageError, ClickException) and issubclass(NoArgsIsHelpError, UsageError)
    assert ClickException.exit_code == 1 and UsageError.exit_code == 2


@pytest.mark.parametrize(
    ("args", "raised"),
    [(["stylize", "--bogus"], UsageError), ([], NoArgsIsHelpError)],
    ids=["unknown option", "no arguments"],
)
def test_typer_raises_them(args: list[str], raised: type[Exception]) -> None:
    result = CliRunner().invoke(app, args, standalone_mode=False)
    assert isinstance(result.exception, raised), result.exception

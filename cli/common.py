"""What the commands share: options, and how a mistake is told to the user.

Every error is one line on stderr, `error: ...`, naming the argument at fault, with the exit
status of its kind: 2 for a usage mistake (an option's value, a missing argument), 1 for an
input the command could not use (an unreadable image, a weights file of the wrong layout).
`adain --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import typer
from typer.core import TyperGroup

from cli.click_errors import ClickException, NoArgsIsHelpError, UsageError
from models.config import Device, ModelName, Precision

USAGE_ERROR = 2
INPUT_ERROR = 1

EncoderOption = Annotated[
    Path | None, typer.Option(help="vgg_normalised.pth (default: the embedded encoder).")
]
DecoderOption = Annotated[
    Path | None, typer.Option(help="decoder.pth (default: the embedded decoder).")
]
DeviceOption = Annotated[Device, typer.Option(help="Where to run.")]
ModelOption = Annotated[
    ModelName,
    typer.Option(
        help="full: the VGG-19 model (--encoder/--decoder apply to it); lite: the distilled light "
        "model, about 27x fewer FLOPs (models/weights/LITE_MODEL_CARD.md)."
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="The networks' dtype; AdaIN statistics stay fp32. auto: bf16 on CPUs with native "
        "bf16, fp16 on CUDA, else fp32. fp32 equals the reference port's pixels within 1/255."
    ),
]


class InputError(ClickException):
    """An input the command could not use: said in one line, exit status 1."""

    exit_code = INPUT_ERROR


def usage_error(message: str, argument: str) -> typer.BadParameter:
    """A value the user should change: said in one line naming the argument, exit status 2."""
    return typer.BadParameter(message, param_hint=argument)


# Domain errors' fields (`models.errors.DomainError.field`) as the command spells them.
ARGUMENTS = {
    "alpha": "--alpha",
    "weights": "--weights",
    "mask": "--mask",
    "content": "CONTENT",
    "style": "STYLES",
    "content_size": "--content-size",
    "style_size": "--style-size",
}


def without_field_prefix(detail: str, field: str) -> str:
    """'weights: expected ...' -> 'expected ...' (the argument is named separately)."""
    for prefix in (f"{field}: ", f"{field.split('[')[0]}: "):
        if detail.startswith(prefix):
            return detail[len(prefix) :]
    return detail


def as_click_error(exc: Exception) -> ClickException:
    """A domain error raised by `models/` as the command's usage error or input error."""
    from models.errors import DomainError, InvalidInputError

    if isinstance(exc, InvalidInputError) and exc.field is not None:
        argument = ARGUMENTS.get(exc.field.split("[")[0], exc.field)
        return usage_error(without_field_prefix(exc.detail, exc.field), argument)
    if isinstance(exc, DomainError):
        return InputError(exc.detail)
    return InputError(str(exc))


class OneLineErrors(TyperGroup):
    """Runs the command and shows any failure as one line (see the module's docstring)."""

    debug: ClassVar[bool] = False

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        standalone = extra.pop("standalone_mode", True)
        arguments = list(sys.argv[1:] if args is None else args)
        OneLineErrors.debug = "--debug" in arguments[: first_command(arguments, self)]
        try:
            status = super().main(arguments, *rest, standalone_mode=False, **extra)
        except typer.Exit as exc:
            status = exc.exit_code
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        except NoArgsIsHelpError as exc:  # `adain` alone: the help, as click shows it
            if not standalone:
                raise
            typer.echo(exc.format_message(), err=True)
            sys.exit(exc.exit_code)
        except ClickException as exc:
            if not standalone:
                raise
            if OneLineErrors.debug and exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__)  # what the one line below stands for
            show(exc)
            sys.exit(exc.exit_code)
        except Exception as exc:
            if OneLineErrors.debug or not standalone:
                raise
            shown = as_click_error(exc) if is_expected(exc) else unexpected(exc)
            show(shown)
            sys.exit(shown.exit_code)
        # A command's return value is None; typer returns an exit status as an int.
        status = status if isinstance(status, int) else 0
        if standalone:
            sys.exit(status)
        return status


def first_command(arguments: list[str], group: TyperGroup) -> int:
    """The index of the subcommand's name among the arguments (the end if there is none)."""
    return next((i for i, arg in enumerate(arguments) if arg in group.commands), len(arguments))


def is_expected(exc: Exception) -> bool:
    """Errors that are the input's fault, not the program's: told without a traceback."""
    from models.errors import DomainError

    return isinstance(exc, DomainError | ValueError)


def unexpected(exc: Exception) -> ClickException:
    return InputError(
        f"{exc.__class__.__name__}: {exc} (this looks like a bug: run `adain --debug ...` "
        "for the traceback and report it)"
    )


def show(exc: ClickException) -> None:
    message = " ".join(exc.format_message().split())
    if isinstance(exc, UsageError) and exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    typer.echo(f"error: {message}", err=True)

"""The form a route declares is the form it accepts: a dependency for any multipart route.

FastAPI ignores form fields a route does not declare, so a typo (`alpah=0.1`) would silently
give the default; a text where a file part belongs (curl's `-F content=photo.jpg`, without `@`)
and a JSON body fail with pydantic's wording. `FormFieldsDep` answers each of these with one
message naming the field, before any other check of the form. The route's declared fields are
read from the route itself, so a new route (e.g. /jobs) needs only the dependency.
"""

from __future__ import annotations

import difflib
from typing import Annotated

from fastapi import Depends, Request, params
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile

from models.errors import DomainError, InvalidInputError

MAX_ECHOED_NAME = 60  # a field name is user input: echo a bounded part of it


class UnsupportedFormError(DomainError):
    """The body is not a form (JSON, plain text): the API takes multipart/form-data (415)."""


def echo(name: str) -> str:
    return repr(name if len(name) <= MAX_ECHOED_NAME else name[:MAX_ECHOED_NAME] + "...")


def declared_fields(route: APIRoute) -> tuple[set[str], set[str]]:
    """(every form field's name as sent, the names of those that are file parts)."""
    fields = {param.alias: param.field_info for param in route.dependant.body_params}
    files = {name for name, info in fields.items() if isinstance(info, params.File)}
    return set(fields), files


def unknown_field_message(name: str, known: set[str]) -> str:
    nearest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = (
        f"did you mean {nearest[0]!r}?" if nearest else "the fields are " + ", ".join(sorted(known))
    )
    return f"unknown field {echo(name)}: {hint}"


FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def check_content_type(request: Request) -> None:
    """A body of another kind (JSON, text) is refused; no body at all is an empty form, whose
    missing fields FastAPI names."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type not in FORM_MEDIA_TYPES:
        raise UnsupportedFormError(
            "this endpoint takes multipart/form-data (curl -F field=value -F file=@path), "
            f"got a body of type {media_type[:MAX_ECHOED_NAME]}"
        )


async def check_form_fields(request: Request) -> None:
    """Refuses a body that is not a form, undeclared fields, and text sent as a file part."""
    route = request.scope["route"]
    known, files = declared_fields(route)
    check_content_type(request)
    form = await request.form()  # parsed once already for the route: this is the same form
    for name in dict.fromkeys(form.keys()):
        if name not in known:
            raise InvalidInputError(unknown_field_message(name, known), name[:MAX_ECHOED_NAME])
    for name in files:
        if any(not isinstance(value, UploadFile) for value in form.getlist(name)):
            raise InvalidInputError(
                f"{name}: expected a file part, got a text value; with curl, put @ before "
                f"the path: -F {name}=@photo.jpg",
                name,
            )


# Place it after the caller's dependency, so that a refused key is answered 401 first.
FormFieldsDep = Annotated[None, Depends(check_form_fields)]

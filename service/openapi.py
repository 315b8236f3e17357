"""The OpenAPI description at /openapi.json, as the server really answers: what generated clients
and schema checkers (openapi-python-client, schemathesis) read. See docs/api-clients.md.

What FastAPI's generated document gets here:
- every error status a route can return, with the one error shape the server sends,
  `{"detail": ..., "field": ...}` (`ErrorBody`), never FastAPI's default `HTTPValidationError`;
  each route names the error classes it can raise, and their statuses, meanings and headers
  come from the one table, `service.errors.HTTP_ERRORS`;
- file parts as `format: binary` as well as `contentMediaType`: OpenAPI 3.0 generators read the
  first, 3.1 tools the second; images in responses binary too; /metrics as text;
- the response headers (X-Request-ID on every response, Retry-After, the timings of /stylize);
- the API-key schemes: optional while keys are off, required on the guarded operations when
  the server has keys (docs/security.md); operation ids that are the route functions' names.
The server's side: a 405's `Allow` lists the methods documented for the path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from media.imaging import ImageTooLargeError, OutputFormat, UnsupportedImageError
from models.errors import DomainError, InvalidInputError
from service.engine import EngineBusyError, EngineClosedError, EngineOutOfMemoryError
from service.errors import (
    HTTP_ERRORS,
    MalformedRequestError,
    MethodNotAllowedError,
    NotReadyError,
    UnexpectedError,
    domain_error_response,
)
from service.forms import UnsupportedFormError
from service.idempotency import IdempotencyKeyInUseError, IdempotencyKeyReusedError
from service.imaging import DecodeBudgetError
from service.limits import BodyTimeoutError, BodyTooLargeError
from service.registry import (
    AlreadyRegisteredError,
    AmbiguousNameError,
    NameTakenError,
    RedisUnavailableError,
    StorageFullError,
    StorageUnavailableError,
    StyleNotFoundError,
)
from service.security import (
    AuthenticationError,
    CrossOriginError,
    PermissionDeniedError,
    RateLimitedError,
)

Responses = dict[int | str, dict[str, Any]]

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}


class ErrorBody(BaseModel):
    """Every error response (4xx, 5xx) of the service."""

    detail: str = Field(description="What went wrong, naming the limit or setting involved.")
    field: str | None = Field(description="The form field or path parameter at fault (e.g. "
                              "`alpha`, `style[1]`, `style_id`); null when no field is.")


class Readiness(BaseModel):
    status: str = Field(description="`ready`.")


def header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response header the server always sends."""
    return {"description": description, "required": True, "schema": schema}


REQUEST_ID = header("The request's id: the client's X-Request-ID when it sent a usable one "
                    "(printable, up to 128 characters), else a new one. Logged with the request.",
                    {"type": "string"})
RETRY_AFTER = header("Seconds to wait before retrying.", {"type": "integer", "minimum": 0})

WWW_AUTHENTICATE = header("How to authenticate: `Bearer`.", {"type": "string"})

# The optional access control (API keys, Origin, rate limits): on the routes that clients call,
# not the operations routes that probes and Prometheus call.
GUARDED: tuple[type[DomainError], ...] = (
    AuthenticationError, PermissionDeniedError, CrossOriginError, RateLimitedError)
GUARDED_STATUS = HTTP_ERRORS[AuthenticationError].status_code
# Reading an upload: its framing, size, arrival time and decoding.
UPLOAD: tuple[type[DomainError], ...] = (
    MalformedRequestError, BodyTimeoutError, BodyTooLargeError, ImageTooLargeError,
    UnsupportedImageError, InvalidInputError, DecodeBudgetError)
ENGINE: tuple[type[DomainError], ...] = (
    EngineBusyError, EngineClosedError, EngineOutOfMemoryError)
STORE: tuple[type[DomainError], ...] = (RedisUnavailableError, StorageUnavailableError)
# A POST with an Idempotency-Key (service/idempotency.py).
IDEMPOTENT: tuple[type[DomainError], ...] = (IdempotencyKeyReusedError, IdempotencyKeyInUseError)


def error_responses(*errors: type[DomainError]) -> Responses:
    """`responses=` entries for the error classes a route can raise: each class's status from
    `HTTP_ERRORS` with the error model, the meanings of the classes sharing it, and its headers
    (Retry-After where a retry is the answer). `UnexpectedError` (500) is added: any route may
    fail unexpectedly."""
    by_status: dict[int, list[type[DomainError]]] = {}
    for error in dict.fromkeys((*errors, UnexpectedError)):
        by_status.setdefault(HTTP_ERRORS[error].status_code, []).append(error)
    responses: Responses = {}
    for status in sorted(by_status):
        entries = [HTTP_ERRORS[error] for error in by_status[status]]
        response: dict[str, Any] = {
            "model": ErrorBody, "description": " ".join(entry.meaning for entry in entries)}
        headers: dict[str, Any] = {}
        if any(entry.retry_after_s is not None for entry in entries):
            headers["Retry-After"] = RETRY_AFTER
        if any(name == "WWW-Authenticate" for entry in entries for name, _ in entry.headers):
            headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        if headers:
            response["headers"] = headers
        responses[status] = response
    return responses


STYLIZE_RESPONSES: Responses = {
    200: {
        "description": "The stylized image, in the requested `format`.",
        "content": {f.media_type: {"schema": {**BINARY, "contentMediaType": f.media_type}}
                    for f in OutputFormat},
        "headers": {
            "X-Style-Cache": header(
                "Per style, in order, comma-separated: `hit` or `miss` of the style-statistics "
                "cache, or `bypass` (preserve_color recolours the style: not cached).",
                {"type": "string", "pattern": "^(hit|miss|bypass)(,(hit|miss|bypass))*$"}),
            "X-Inference-Time-Ms": header("Network time of this request, milliseconds.",
                                          {"type": "number", "minimum": 0}),
            "X-Batch-Size": header("How many requests shared the network's batch.",
                                   {"type": "integer", "minimum": 1}),
            "Server-Timing": header("`styles` and `stylize` network times (W3C Server-Timing).",
                                    {"type": "string"}),
        },
    },
    **error_responses(
        *UPLOAD, UnsupportedFormError, StyleNotFoundError, AmbiguousNameError, *ENGINE, *STORE,
        *GUARDED,
    ),
}
REGISTER_STYLE_ERRORS = error_responses(
    *UPLOAD,
    UnsupportedFormError,
    NameTakenError,
    AlreadyRegisteredError,
    *ENGINE,
    *STORE,
    StorageFullError,
    *IDEMPOTENT,
    *GUARDED,
)
LIST_STYLES_RESPONSES = error_responses(InvalidInputError, *STORE, *GUARDED)
STYLE_RESPONSES = error_responses(
    StyleNotFoundError, AmbiguousNameError, InvalidInputError, *STORE, *GUARDED
)
STYLE_IMAGE_RESPONSES: Responses = {
    200: {
        "description": "The registered image as uploaded, or (with `size`) a JPEG thumbnail.",
        "content": {media_type: {"schema": {**BINARY, "contentMediaType": media_type}}
                    for media_type in ("image/png", "image/jpeg", "image/webp")},
    },
    **STYLE_RESPONSES,
}
READYZ_RESPONSES: Responses = {
    200: {"model": Readiness, "description": "Ready to serve."},
    **error_responses(NotReadyError, RedisUnavailableError),
}
METRICS_RESPONSES: Responses = {
    200: {"description": "Prometheus text exposition format.",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerKey": {"type": "http", "scheme": "bearer", "description":
                  "An API key: `Authorization: Bearer <key>`. Needed only where the server "
                  "sets ADAIN_API_KEYS / ADAIN_ADMIN_KEYS (off by default)."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "The same API key in `X-API-Key: <key>`."},
}
# `{}` first: no key is a valid way to call (keys are off by default).
OPTIONAL_KEY = [{}, {"bearerKey": []}, {"apiKeyHeader": []}]
# With keys on (ADAIN_API_KEYS / ADAIN_ADMIN_KEYS) the guarded operations need one of the two.
REQUIRED_KEY = [{"bearerKey": []}, {"apiKeyHeader": []}]


def operation_id(route: APIRoute) -> str:
    """The function's name (`stylize`, `list_styles`): the generated clients' function names."""
    return route.name


def describe(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the corrections listed in this module's docstring."""
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary,
        description=app.description, routes=app.routes,
    )
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for schema in walk(schemas):
        if schema.get("type") == "string" and "contentMediaType" in schema:
            schema.setdefault("format", "binary")
    for form in schemas.values():
        drop_null_from_form(form)
    keys_on = app.state.keys.enabled
    for item in document["paths"].values():
        for operation in item.values():
            if str(GUARDED_STATUS) not in operation["responses"]:
                operation["security"] = []  # probes and Prometheus: no key, ever
            elif keys_on:
                operation["security"] = REQUIRED_KEY
            for response in operation["responses"].values():
                use_error_model(response)
                response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    # For the whole API rather than per operation when keys are off: generators that read only
    # an operation's own `security` (openapi-python-client) would otherwise demand a key even
    # where none is set. With keys on, the guarded operations say so themselves (above).
    document["security"] = OPTIONAL_KEY
    return document


def use_error_model(response: dict[str, Any]) -> None:
    """FastAPI's default 422 (model and description), replaced by ours and the table's meaning
    (that is what the handlers send)."""
    json_body = response.get("content", {}).get("application/json", {})
    if json_body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
        json_body["schema"] = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
        response["description"] = HTTP_ERRORS[InvalidInputError].meaning


def drop_null_from_form(form: dict[str, Any]) -> None:
    """A form takes only its own fields. Optional repeatable form fields are `anyOf: [array,
    null]` in FastAPI's schema, but a form has no null: the field is left out. Described as the
    array it is when sent."""
    if not form.get("title", "").startswith("Body_"):
        return
    form["additionalProperties"] = False  # unknown fields are refused (service/forms.py)
    for name, prop in form.get("properties", {}).items():
        options = prop.get("anyOf", [])
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1 and len(options) == 2:
            del prop["anyOf"]
            form["properties"][name] = {**kept[0], **prop}


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside `node`, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def documented_methods(document: dict[str, Any], path: str) -> set[str] | None:
    """The methods `document` lists for the path template `path` matches; None when no
    documented path matches."""
    for template, item in document["paths"].items():
        parts = re.split(r"(\{[^}]+\})", template)
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, path):
            return {method.upper() for method in item if method in HTTP_METHODS}
    return None


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 whose `Allow` lists every documented method of the path. (Starlette's lists those of
    the first route matching the path: GET /styles and POST /styles are two routes, and
    OPTIONS /styles would answer `Allow: POST`.)"""
    assert isinstance(exc, HTTPException)
    methods = documented_methods(request.app.openapi(), request.scope["path"])
    allow = methods or (exc.headers or {}).get("Allow", "").split(", ")
    return domain_error_response(MethodNotAllowedError(str(exc.detail), allow))


def install_openapi(app: FastAPI) -> None:
    """Serve `describe(app)` at /openapi.json (built once, on the first request), and answer
    405s with the methods it documents."""
    app.add_exception_handler(405, method_not_allowed)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


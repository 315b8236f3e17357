"""One error shape for every failure: JSON `{"detail": ..., "field": ...}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ApiError(Exception):
    """A failure the client can act on: status code, message, and the form field at fault."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.field = field
        self.headers = headers


def error_response(
    status_code: int, detail: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"detail": detail, "field": field}, status_code, headers=headers)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.detail, exc.field, exc.headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # loc is e.g. ("body", "alpha") or ("path", "style_id"): the last string is the field name.
    fields = [next((p for p in reversed(e["loc"]) if isinstance(p, str)), None) for e in errors]
    messages = [
        f"{field}: {error['msg']}" if field else error["msg"]
        for field, error in zip(fields, errors, strict=True)
    ]
    return error_response(422, "; ".join(messages), fields[0] if fields else None)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), None, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    # Unexpected exceptions become a 500 JSON in `service.logs.RequestContext`, with the log.

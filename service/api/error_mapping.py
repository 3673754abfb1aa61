"""The one place where errors become HTTP responses: `{"error": {type, message, param}}`,
or OpenAI's shape under `/v1/` (same status codes, see `service.api.openai.errors`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.openai.errors import error_body, is_openai_path
from service.api.protocol import ErrorBody, ErrorResponse
from service.errors import ServiceError


def _error(
    status: int,
    type_: str,
    message: str,
    param: str | None,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    body: BaseModel
    if is_openai_path(path):
        body = error_body(status, message, param, type_)
    else:
        body = ErrorResponse(error=ErrorBody(type=type_, message=message, param=param, **(details or {})))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    """('body', 'items', 0, 'question') -> 'items[0].question'."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def error_response(exc: ServiceError, *, path: str = "") -> JSONResponse:
    """The JSON response for a typed error (also used by the ASGI middleware, outside FastAPI)."""
    return _error(
        exc.status_code, exc.error_type, exc.message, exc.param, exc.headers(), exc.details(), path=path
    )


async def service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc, path=request.url.path)


# Starlette's own errors (unknown path, wrong method, a body that is not UTF-8 JSON)
# get the same JSON shape as ours instead of `{"detail": ...}`.
HTTP_ERROR_TYPES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {}) or None
    return _error(exc.status_code, type_, str(exc.detail), None, headers, path=request.url.path)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # loc is ("body", character offset)
        why = (first.get("ctx") or {}).get("error", "")
        return _error(400, "invalid_request", f"body is not valid JSON: {why}", "body", path=request.url.path)
    param = _param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request"))
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return _error(400, "invalid_request", message, param, path=request.url.path)


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entry: these status codes answer with the error body."""
    return {code: {"model": ErrorResponse} for code in codes}


# What every inference route can answer besides 200: bad input, unknown adapter, no
# adapter, body too large, overload, engine not ready or dead, past the time limit.
INFERENCE_ERRORS = documented(400, 404, 409, 413, 429, 503, 504)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)

"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

Status codes are the native API's; `type` is OpenAI's class for the status (what its
clients and dashboards group by) and `code` this service's own error type
(`adapter_not_found`, `overloaded`, …), so no information is lost.
"""

from __future__ import annotations

from service.api.openai.protocol import OpenAIError, OpenAIErrorResponse
from service.errors import ServiceError

PREFIX = "/v1/"


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def status_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, message: str, param: str | None, code: str) -> OpenAIErrorResponse:
    return OpenAIErrorResponse(
        error=OpenAIError(message=message, type=status_type(status), param=param, code=code)
    )


def stream_error(exc: ServiceError) -> OpenAIErrorResponse:
    """The frame a stream sends when it fails after its response started."""
    return error_body(exc.status_code, exc.message, exc.param, exc.error_type)

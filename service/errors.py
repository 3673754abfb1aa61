"""Typed domain errors. Each carries the HTTP status it maps to; `service.app` turns
them into JSON responses in one exception handler, so routes never catch broadly."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a failure with a stable machine-readable type and an HTTP status."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(ServiceError):
    """The request is well-formed JSON but cannot be served as asked (names the field)."""

    status_code = 400
    error_type = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    error_type = "prompt_too_long"


class AdapterNotFoundError(ServiceError):
    status_code = 404
    error_type = "adapter_not_found"


class NoAdapterLoadedError(ServiceError):
    """method=adapter was asked for but the service has no uncertainty adapter."""

    status_code = 409
    error_type = "no_adapter_loaded"


class EngineNotReadyError(ServiceError):
    status_code = 503
    error_type = "engine_not_ready"


class EngineDeadError(ServiceError):
    status_code = 503
    error_type = "engine_dead"


class ModelFetchError(ServiceError):
    """The embedded model could not be fetched or verified (a start-up error, not HTTP)."""

    error_type = "model_fetch_failed"


class AdapterLoadError(ServiceError):
    """An adapter directory exists but is not servable (bad manifest, wrong base model)."""

    status_code = 409
    error_type = "adapter_invalid"


class OverloadedError(ServiceError):
    """More work in flight than the server admits; the client should retry later."""

    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

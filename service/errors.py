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

    def headers(self) -> dict[str, str] | None:
        """Extra response headers (Retry-After, WWW-Authenticate)."""
        return {"Retry-After": "5"} if self.status_code == 503 else None

    def details(self) -> dict[str, object]:
        """Extra fields of the error body beside type, message and param."""
        return {}


class InvalidRequestError(ServiceError):
    """The request is well-formed JSON but cannot be served as asked (names the field)."""

    status_code = 400
    error_type = "invalid_request"


class PromptTooLongError(InvalidRequestError):
    error_type = "prompt_too_long"


class AdapterNotFoundError(ServiceError):
    status_code = 404
    error_type = "adapter_not_found"


class ModelNotFoundError(ServiceError):
    """An OpenAI-API request names a model this server does not serve."""

    status_code = 404
    error_type = "model_not_found"


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


class AdapterUnavailableError(ServiceError):
    """A served adapter's files vanished from disk; reading it now would crash the engine."""

    status_code = 503
    error_type = "adapter_unavailable"


class RequestTimeoutError(ServiceError):
    """The request ran past `CONFIDENCE_REQUEST_TIMEOUT_S`; its engine work was aborted."""

    status_code = 504
    error_type = "request_timeout"

    def headers(self) -> dict[str, str] | None:
        return None  # retrying the same request would most likely time out again


class PayloadTooLargeError(ServiceError):
    """The request body is larger than `CONFIDENCE_MAX_BODY_BYTES` (refused before parsing)."""

    status_code = 413
    error_type = "payload_too_large"


class ModelFetchError(ServiceError):
    """The embedded model could not be fetched or verified (a start-up error, not HTTP)."""

    error_type = "model_fetch_failed"


class AdapterLoadError(ServiceError):
    """An adapter directory exists but is not servable (bad manifest, wrong base model).
    `reason` is a short public summary without paths or file contents (the message may
    have both; only the admin API shows it)."""

    status_code = 409
    error_type = "adapter_invalid"

    def __init__(self, message: str, *, reason: str = "invalid adapter", param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.reason = reason


class AdapterConflictError(ServiceError):
    """The adapter operation contradicts the registry's state (e.g. unloading the default)."""

    status_code = 409
    error_type = "adapter_conflict"


class UnauthorizedError(ServiceError):
    """Admin call without a valid bearer token."""

    status_code = 401
    error_type = "unauthorized"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class AdminDisabledError(ServiceError):
    """The admin API is off because no admin token is configured."""

    status_code = 403
    error_type = "admin_disabled"


class OverloadedError(ServiceError):
    """More work in flight than the server admits; the client should retry later."""

    status_code = 429
    error_type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class ResponseNotFoundError(ServiceError):
    """Feedback names a response id (or item index) this service never recorded."""

    status_code = 404
    error_type = "response_not_found"


class FeedbackForbiddenError(ServiceError):
    """Feedback for a response served to another client (only it or a labeller may label)."""

    status_code = 403
    error_type = "feedback_forbidden"


class FeedbackConflictError(ServiceError):
    """Feedback contradicts feedback already recorded for the same item."""

    status_code = 409
    error_type = "feedback_conflict"


class FeedbackStoreError(ServiceError):
    """The feedback store could not be read or written (locked, full, unreachable);
    nothing was stored."""

    status_code = 503
    error_type = "feedback_store_unavailable"


class NotEnoughLabelsError(ServiceError):
    """target_error_rate asked for, but the labels of that adapter version and method are too
    few (or too often wrong) for any threshold to meet it with the stated guarantee."""

    status_code = 409
    error_type = "not_enough_labels"

    def __init__(self, message: str, *, labels: int, labels_needed: int | None, param: str) -> None:
        super().__init__(message, param=param)
        self.labels = labels
        self.labels_needed = labels_needed

    def details(self) -> dict[str, object]:
        return {"labels": self.labels, "labels_needed": self.labels_needed}


class ShadowConflictError(ServiceError):
    """A shadow cannot be attached as asked (not loaded, or the default itself)."""

    status_code = 409
    error_type = "shadow_conflict"

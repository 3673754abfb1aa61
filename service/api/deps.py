"""FastAPI dependencies as `Annotated` aliases: routes declare what they need."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.decisions.selective import SelectiveAnswering
from service.decisions.shadow import ShadowPolicy
from service.errors import (
    AdminDisabledError,
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
    UnauthorizedError,
)
from service.feedback.clients import client_from, current_client
from service.lora.ops import AdapterOps
from service.monitoring.monitor import CalibrationMonitor
from service.monitoring.prometheus import LABELS_SCOPE_KEY, RequestLabels
from service.serving.admission import Admission
from service.serving.core import ConfidenceService
from service.serving.deadline import Deadline
from service.serving.lifecycle import Phase, ServiceState
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service_state
    return state


def get_service(state: Annotated[ServiceState, Depends(get_state)]) -> ConfidenceService:
    if state.phase is Phase.failed:
        raise EngineDeadError(f"the service cannot serve: {state.detail}")
    if state.service is None:
        raise EngineNotReadyError("the model is still loading; retry shortly")
    return state.service


def get_ops(
    state: Annotated[ServiceState, Depends(get_state)], _: Annotated[ConfidenceService, Depends(get_service)]
) -> AdapterOps:
    assert state.ops is not None  # set together with state.service
    return state.ops


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    settings: Settings = request.app.state.settings
    if settings.admin_token is None:
        raise AdminDisabledError("the admin API is disabled: set CONFIDENCE_ADMIN_TOKEN to enable it")
    expected = settings.admin_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    # compare_digest: the time taken does not reveal how much of the token matched.
    if not secrets.compare_digest(given, expected):
        raise UnauthorizedError("missing or wrong admin bearer token")


def get_admission(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


def get_monitor(request: Request) -> CalibrationMonitor:
    monitor: CalibrationMonitor = request.app.state.monitor
    return monitor


def get_request_labels(request: Request) -> RequestLabels:
    """Where a route notes its method and adapter for the request metrics (a detached
    object when the metrics middleware is not installed)."""
    labels: RequestLabels = request.scope.get(LABELS_SCOPE_KEY) or RequestLabels()
    return labels


async def identify_client(request: Request) -> None:
    """Note who is calling (for every route; see service.feedback.clients)."""
    settings: Settings = request.app.state.settings
    host = request.client.host if request.client is not None else None
    current_client.set(client_from(host, request.headers, settings.trusted_proxies))


def get_selective(request: Request) -> SelectiveAnswering:
    selective: SelectiveAnswering = request.app.state.selective
    return selective


def get_shadow(request: Request) -> ShadowPolicy:
    shadow: ShadowPolicy = request.app.state.shadow
    return shadow


def get_deadline(request: Request) -> Deadline:
    deadline: Deadline = request.app.state.deadline
    return deadline


def single_valued_query(request: Request) -> None:
    """No query parameter of this API takes several values: a repeated one is ambiguous, so it is
    a 400 naming it (FastAPI would silently keep the last)."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key in seen:
            raise InvalidRequestError(f"query parameter {key!r} is given more than once", param=key)
        seen.add(key)


SingleValuedQuery = Depends(single_valued_query)
StateDep = Annotated[ServiceState, Depends(get_state)]
ServiceDep = Annotated[ConfidenceService, Depends(get_service)]
OpsDep = Annotated[AdapterOps, Depends(get_ops)]
AdminDep = Annotated[None, Depends(require_admin)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
MonitorDep = Annotated[CalibrationMonitor, Depends(get_monitor)]
LabelsDep = Annotated[RequestLabels, Depends(get_request_labels)]
DeadlineDep = Annotated[Deadline, Depends(get_deadline)]
SelectiveDep = Annotated[SelectiveAnswering, Depends(get_selective)]
ShadowDep = Annotated[ShadowPolicy, Depends(get_shadow)]

"""FastAPI dependencies as `Annotated` aliases: routes declare what they need."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.admission import Admission
from service.core import ConfidenceService
from service.errors import EngineDeadError, EngineNotReadyError
from service.lifecycle import Phase, ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service_state
    return state


def get_service(state: Annotated[ServiceState, Depends(get_state)]) -> ConfidenceService:
    if state.phase is Phase.failed:
        raise EngineDeadError(f"the service failed to start: {state.detail}")
    if state.service is None:
        raise EngineNotReadyError("the model is still loading; retry shortly")
    return state.service


def get_admission(request: Request) -> Admission:
    admission: Admission = request.app.state.admission
    return admission


StateDep = Annotated[ServiceState, Depends(get_state)]
ServiceDep = Annotated[ConfidenceService, Depends(get_service)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]

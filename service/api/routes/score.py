from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, SelectiveDep, ServiceDep
from service.api.error_mapping import INFERENCE_ERRORS
from service.api.protocol import ScoreRequest, ScoreResponse

router = APIRouter()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=INFERENCE_ERRORS,
)
async def score(
    request: ScoreRequest,
    service: ServiceDep,
    admission: AdmissionDep,
    deadline: DeadlineDep,
    monitor: MonitorDep,
    labels: LabelsDep,
    selective: SelectiveDep,
) -> ScoreResponse:
    """Confidence that each (question, answer) pair — from any model — is correct."""
    labels.note(service.method_hint(request.method, request.adapter).value, request.adapter)
    service.check_items(request)  # before admission: an over-limit batch must not get a 429 it can never pass
    await selective.check(request, service.registry, method=request.method, adapter=request.adapter)
    with admission.admit(len(request.items)):
        response = await deadline.within(service.score(request))
    labels.note(response.method.value, request.adapter)
    response = await selective.score(request, response)
    await monitor.served_score(request, response)
    return response

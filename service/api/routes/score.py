from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, ServiceDep
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
) -> ScoreResponse:
    """Confidence that each (question, answer) pair — from any model — is correct."""
    labels.note(request.method.value, request.adapter)
    service.check_items(request)  # before admission: an over-limit batch must not get a 429 it can never pass
    with admission.admit(len(request.items)):
        response = await deadline.within(service.score(request))
    await monitor.served_score(request, response)
    return response

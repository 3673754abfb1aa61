from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, ServiceDep
from service.api.error_mapping import INFERENCE_ERRORS
from service.api.protocol import DEFAULT_METHOD_LABEL, ScoreRequest, ScoreResponse

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
    # Unset methods resolve per adapter version; the label follows the resolved one.
    labels.note(request.method.value if request.method else DEFAULT_METHOD_LABEL, request.adapter)
    with admission.admit(len(request.items)):
        response = await deadline.within(service.score(request))
    labels.note(response.method.value, request.adapter)
    await monitor.served_score(request, response)
    return response

from __future__ import annotations

from fastapi import APIRouter

from service.deps import AdmissionDep, LabelsDep, MonitorDep, ServiceDep
from service.protocol import ErrorResponse, ScoreRequest, ScoreResponse

router = APIRouter()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def score(
    request: ScoreRequest,
    service: ServiceDep,
    admission: AdmissionDep,
    monitor: MonitorDep,
    labels: LabelsDep,
) -> ScoreResponse:
    """Confidence that each (question, answer) pair — from any model — is correct."""
    labels.note(request.method.value, request.adapter)
    with admission.admit(len(request.items)):
        response = await service.score(request)
    await monitor.served_score(request, response)
    return response

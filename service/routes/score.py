from __future__ import annotations

from fastapi import APIRouter

from service.deps import AdmissionDep, ServiceDep
from service.protocol import ErrorResponse, ScoreRequest, ScoreResponse

router = APIRouter()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def score(request: ScoreRequest, service: ServiceDep, admission: AdmissionDep) -> ScoreResponse:
    """Confidence that each (question, answer) pair — from any model — is correct."""
    with admission.admit(len(request.items)):
        return await service.score(request)

from __future__ import annotations

from fastapi import APIRouter

from service.deps import AdmissionDep, ServiceDep
from service.protocol import ErrorResponse, GenerateRequest, GenerateResponse

router = APIRouter()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def generate(
    request: GenerateRequest, service: ServiceDep, admission: AdmissionDep
) -> GenerateResponse:
    """Answer with the base model and return the calibrated probability the answer is correct."""
    with admission.admit(1):
        return await service.generate(request)

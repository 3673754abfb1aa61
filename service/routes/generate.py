from __future__ import annotations

from fastapi import APIRouter

from service.deps import AdmissionDep, LabelsDep, MonitorDep, ServiceDep
from service.protocol import ErrorResponse, GenerateRequest, GenerateResponse

router = APIRouter()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}},
)
async def generate(
    request: GenerateRequest,
    service: ServiceDep,
    admission: AdmissionDep,
    monitor: MonitorDep,
    labels: LabelsDep,
) -> GenerateResponse:
    """Answer with the base model and return the calibrated probability the answer is correct."""
    labels.note(request.method.value, request.adapter)
    with admission.admit(1):
        response = await service.generate(request)
    await monitor.served_generate(request, response)
    return response

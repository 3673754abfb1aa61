from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, ServiceDep
from service.api.error_mapping import INFERENCE_ERRORS
from service.api.protocol import GenerateRequest, GenerateResponse

router = APIRouter()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses=INFERENCE_ERRORS,
)
async def generate(
    request: GenerateRequest,
    service: ServiceDep,
    admission: AdmissionDep,
    deadline: DeadlineDep,
    monitor: MonitorDep,
    labels: LabelsDep,
) -> GenerateResponse:
    """Answer with the base model and return the calibrated probability the answer is correct."""
    labels.note(request.method.value, request.adapter)
    with admission.admit(1):
        response = await deadline.within(service.generate(request))
    await monitor.served_generate(request, response)
    return response

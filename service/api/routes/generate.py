from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, ServiceDep
from service.api.error_mapping import INFERENCE_ERRORS
from service.api.protocol import DEFAULT_METHOD_LABEL, GenerateRequest, GenerateResponse

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
    # Unset methods resolve per adapter version; the label follows the resolved one.
    labels.note(request.method.value if request.method else DEFAULT_METHOD_LABEL, request.adapter)
    with admission.admit(1):
        response = await deadline.within(service.generate(request))
    labels.note(response.method.value, request.adapter)
    await monitor.served_generate(request, response)
    return response

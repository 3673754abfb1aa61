from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, SelectiveDep, ServiceDep
from service.api.error_mapping import INFERENCE_ERRORS
from service.api.protocol import ErrorBody, ErrorResponse, GenerateDelta, GenerateRequest, GenerateResponse
from service.api.streaming import STREAM_200, EventStream, framed, held_until_streamed
from service.decisions.selective import SelectiveAnswering
from service.errors import ServiceError
from service.monitoring.monitor import CalibrationMonitor

router = APIRouter()


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={**INFERENCE_ERRORS, **STREAM_200},
)
async def generate(
    request: GenerateRequest,
    service: ServiceDep,
    admission: AdmissionDep,
    deadline: DeadlineDep,
    monitor: MonitorDep,
    labels: LabelsDep,
    selective: SelectiveDep,
) -> Any:
    """Answer with the base model and return the calibrated probability the answer is correct
    (with `stream: true`, as server-sent events)."""
    labels.note(service.method_hint(request.method, request.adapter).value, request.adapter)
    await selective.check(request, service.registry, method=request.method, adapter=request.adapter)
    if request.stream:
        with held_until_streamed() as resources:
            resources.enter_context(admission.admit(1))
            reader = resources.enter_context(service.reader(request.method, request.adapter))
            labels.note(reader.method.value, request.adapter)
            prompt, options = await service.generate_inputs(request)
            stream = service.generate_stream(
                prompt, options, reader, answer_with_adapter=request.answer_with_adapter
            )
            events = _recorded(stream, request, monitor, selective)
            return EventStream(framed(deadline.stream(events), _error_frame), resources=resources)
    with admission.admit(1):
        response = await deadline.within(service.generate(request))
    labels.note(response.method.value, request.adapter)
    response = await selective.generate(request, response)
    await monitor.served_generate(request, response)
    return response


async def _recorded(
    events: AsyncGenerator[GenerateDelta | GenerateResponse, None],
    request: GenerateRequest,
    monitor: CalibrationMonitor,
    selective: SelectiveAnswering,
) -> AsyncGenerator[BaseModel, None]:
    """Records the final response before sending it, so its id works for feedback at once
    (with its decision, when the request asked for one)."""
    async with aclosing(events):
        async for event in events:
            if isinstance(event, GenerateResponse):
                event = await selective.generate(request, event)
                await monitor.served_generate(request, event)
            yield event


def _error_frame(exc: ServiceError) -> BaseModel:
    return ErrorResponse(error=ErrorBody(type=exc.error_type, message=exc.message, param=exc.param))

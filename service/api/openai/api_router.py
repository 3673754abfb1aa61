"""Routes of the OpenAI-compatible API: HTTP only. Each fetches the serving objects,
checks admission, and answers with JSON or a server-sent-event stream; errors (also
those raised before a route runs) get OpenAI's error shape from `error_mapping`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.api.deps import AdmissionDep, DeadlineDep, LabelsDep, MonitorDep, SelectiveDep, ServiceDep
from service.api.openai import protocol as oa
from service.api.openai.errors import stream_error
from service.api.openai.serving import Call, OpenAIServing, served_model_name
from service.api.streaming import STREAM_200, EventStream, framed, held_until_streamed
from service.decisions.selective import SelectiveAnswering
from service.engine.base import Completion as EngineCompletion
from service.errors import InvalidRequestError
from service.monitoring.monitor import CalibrationMonitor
from service.monitoring.prometheus import RequestLabels
from service.serving.admission import Admission
from service.serving.core import Answers, ConfidenceReader, ConfidenceService
from service.serving.deadline import Deadline

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

# The native API's status codes, in OpenAI's error shape.
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": oa.OpenAIErrorResponse} for code in (400, 404, 409, 413, 429, 503, 504)
}


def get_openai(request: Request, service: ServiceDep) -> OpenAIServing:
    engine = request.app.state.service_state.engine
    return OpenAIServing(service, model=served_model_name(request.app.state.settings, engine.model_path))


OpenAIDep = Annotated[OpenAIServing, Depends(get_openai)]


@router.get("/models", response_model=oa.ModelList, responses={503: {"model": oa.OpenAIErrorResponse}})
async def list_models(openai: OpenAIDep) -> oa.ModelList:
    """The base model and each loaded uncertainty adapter version (parent: the base model)."""
    return openai.models()


@router.post("/chat/completions", response_model=oa.ChatCompletion, responses={**OPENAI_ERRORS, **STREAM_200})
async def chat_completions(
    request: oa.ChatCompletionRequest,
    openai: OpenAIDep,
    admission: AdmissionDep,
    deadline: DeadlineDep,
    monitor: MonitorDep,
    labels: LabelsDep,
    selective: SelectiveDep,
) -> Any:
    """A chat completion whose every choice carries its calibrated confidence."""
    labels.note(openai.service.method_hint(request.method, request.adapter).value, request.adapter)
    call = await openai.chat_call(request)
    await _check_decisions(selective, openai, request, call)
    serve = _Serve(openai.service, admission, deadline, monitor, labels, request, call, "chat.completions")
    if request.stream:
        return serve.stream(openai.chat_stream)
    answers, reader = await serve.answers()
    return await _decided(selective, request, reader, openai.chat_response(call, answers, reader))


@router.post("/completions", response_model=oa.Completion, responses={**OPENAI_ERRORS, **STREAM_200})
async def completions(
    request: oa.CompletionRequest,
    openai: OpenAIDep,
    admission: AdmissionDep,
    deadline: DeadlineDep,
    monitor: MonitorDep,
    labels: LabelsDep,
    selective: SelectiveDep,
) -> Any:
    """A text completion (no chat template) whose every choice carries its confidence."""
    labels.note(openai.service.method_hint(request.method, request.adapter).value, request.adapter)
    call = await openai.completion_call(request)
    await _check_decisions(selective, openai, request, call)
    serve = _Serve(openai.service, admission, deadline, monitor, labels, request, call, "completions")
    if request.stream:
        return serve.stream(openai.completion_stream)
    answers, reader = await serve.answers()
    return await _decided(selective, request, reader, openai.completion_response(call, answers, reader))


async def _check_decisions(
    selective: SelectiveAnswering, openai: OpenAIServing, request: oa.SamplingRequest, call: Call
) -> None:
    """Selective answering (the extra abstain_below / target_error_rate): refused while
    streaming, and a target that cannot be met is a 409 before any engine work."""
    if request.abstain_below is None and request.target_error_rate is None:
        return
    if request.stream:
        param = "abstain_below" if request.abstain_below is not None else "target_error_rate"
        raise InvalidRequestError(f"'{param}' is not available with stream=true on /v1 yet", param=param)
    await selective.check(request, openai.service.registry, method=request.method, adapter=call.adapter)


async def _decided(
    selective: SelectiveAnswering,
    request: oa.SamplingRequest,
    reader: ConfidenceReader,
    response: oa.ChatCompletion | oa.Completion,
) -> oa.ChatCompletion | oa.Completion:
    """Each choice's confidence with its decision, when the request asked for one."""
    selection = await selective.selection(request, reader.info, reader.method)
    if selection is None:
        return response
    for choice in response.choices:
        confidence = choice.confidence
        assert confidence is not None  # set on every non-streamed choice
        update: dict[str, Any] = {
            "decision": selective.decide(confidence.value, selection, reader.info, reader.method)
        }
        if selection.source != "request":
            update["selection"] = selection
        choice.confidence = confidence.model_copy(update=update)
    return response


class _Serve:
    """What both endpoints do around the core: admission for n sequences, the adapter
    lease, the deadline, and recording each choice for feedback."""

    def __init__(
        self,
        service: ConfidenceService,
        admission: Admission,
        deadline: Deadline,
        monitor: CalibrationMonitor,
        labels: RequestLabels,
        request: oa.SamplingRequest,
        call: Call,
        endpoint: str,
    ) -> None:
        self.service, self.admission, self.deadline, self.monitor = service, admission, deadline, monitor
        self.labels, self.request, self.call, self.endpoint = labels, request, call, endpoint

    async def answers(self) -> tuple[Answers, ConfidenceReader]:
        call = self.call
        with (
            self.admission.admit(call.options.n),
            self.service.reader(self.request.method, call.adapter) as reader,
        ):
            self.labels.note(reader.method.value, self.request.adapter)
            answers = await self.deadline.within(
                self.service.answer(
                    call.prompt, call.options, reader, answer_with_adapter=self.request.answer_with_adapter
                )
            )
        self.monitor.count_tokens(
            answers.prompt_tokens, sum(a.completion.completion_tokens for a in answers.choices)
        )
        choices = [(i, a.completion.text, a.confidence) for i, a in enumerate(answers.choices)]
        await self.monitor.served_answers(
            self.endpoint, call.id, reader.method, reader.info, call.prompt.question, choices
        )
        return answers, reader

    def stream(self, chunks: Any) -> Response:
        call = self.call
        with held_until_streamed() as resources:
            resources.enter_context(self.admission.admit(call.options.n))
            reader: ConfidenceReader = resources.enter_context(
                self.service.reader(self.request.method, call.adapter)
            )
            self.labels.note(reader.method.value, self.request.adapter)
            events = self.service.answer_stream(  # may raise a 4xx
                call.prompt, call.options, reader, answer_with_adapter=self.request.answer_with_adapter
            )

            self.monitor.count_tokens(len(call.prompt.ids), 0)

            async def record(index: int, completion: EngineCompletion, confidence: float) -> None:
                self.monitor.count_tokens(0, completion.completion_tokens)
                await self.monitor.served_answers(
                    self.endpoint,
                    call.id,
                    reader.method,
                    reader.info,
                    call.prompt.question,
                    [(index, completion.text, confidence)],
                )

            body: Any = chunks(call, events, reader, record)
            return EventStream(framed(self.deadline.stream(body), stream_error), resources=resources)

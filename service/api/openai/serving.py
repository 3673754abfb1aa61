"""Translation between the OpenAI API and the serving core.

`OpenAIServing` checks the model name, turns a request into the core's prompt and
sampling options, and builds responses and stream chunks from the core's answers. It does
no HTTP (the router does) and no generation or confidence math (the core does).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from service.api.openai import protocol as oa
from service.calibration.query import QUERY_TEMPLATE_VERSION
from service.engine.base import Completion as EngineCompletion
from service.engine.base import SamplingOptions, TokenLogprob
from service.errors import InvalidRequestError, ModelNotFoundError
from service.serving.core import (
    Answers,
    ChoiceDone,
    ChoiceText,
    ConfidenceReader,
    ConfidenceService,
    Prompt,
)
from service.settings import Settings

# Records one ended choice (index, completion, confidence) in the outcome store.
Record = Callable[[int, EngineCompletion, float], Awaitable[None]]


def served_model_name(settings: Settings, model_path: str) -> str:
    """The id clients must name in `model`: the configured name, else the model as given,
    else (the embedded default) its directory name."""
    return settings.served_model_name or settings.model or Path(model_path).name


@dataclass(frozen=True)
class Call:
    """A request checked and translated for the core."""

    id: str
    prompt: Prompt
    options: SamplingOptions
    adapter: str | None
    include_usage: bool


class OpenAIServing:
    def __init__(self, service: ConfidenceService, *, model: str) -> None:
        self.service = service
        self.model = model
        digest = hashlib.sha256(f"{model}\0{QUERY_TEMPLATE_VERSION}".encode()).hexdigest()
        self.fingerprint = f"fp_{digest[:10]}"

    # ------------------------------------------------------------ models

    def _adapter_ids(self) -> list[str]:
        return [adapter.spec for adapter in self.service.registry.list()]

    def models(self) -> oa.ModelList:
        """The base model, then each loaded adapter version (its `parent` is the base model,
        as vLLM lists LoRA adapters)."""
        base = oa.ModelCard(id=self.model, root=self.model, max_model_len=self.service.limits.max_model_len)
        adapters = [oa.ModelCard(id=spec, root=spec, parent=self.model) for spec in self._adapter_ids()]
        return oa.ModelList(data=[base, *adapters])

    def _adapter(self, request: oa.SamplingRequest) -> str | None:
        """The adapter a request asks for. `model` names the base model, or an adapter
        entry of /v1/models (answers still come from the base model; the entry chooses
        the uncertainty adapter)."""
        if request.model == self.model:
            return request.adapter
        if request.model in self._adapter_ids():
            if request.adapter not in (None, request.model):
                raise InvalidRequestError(
                    f"'model' names adapter {request.model} but 'adapter' names {request.adapter}",
                    param="adapter",
                )
            return request.model
        raise ModelNotFoundError(
            f"The model `{request.model}` does not exist; this server serves `{self.model}`", param="model"
        )

    # ------------------------------------------------------------ requests

    async def chat_call(self, request: oa.ChatCompletionRequest) -> Call:
        adapter = self._adapter(request)
        max_tokens, param = request.requested_max_tokens()
        options = self._options(request, max_tokens, param, request.logprobs_k())
        prompt = await self.service.chat_prompt(request.chat(), param="messages")
        return Call(f"chatcmpl-{uuid.uuid4().hex}", prompt, options, adapter, request.include_usage())

    async def completion_call(self, request: oa.CompletionRequest) -> Call:
        adapter = self._adapter(request)
        options = self._options(request, request.max_tokens, "max_tokens", request.logprobs)
        prompt = await self.service.text_prompt(request.text(), param="prompt")
        return Call(f"cmpl-{uuid.uuid4().hex}", prompt, options, adapter, request.include_usage())

    def _options(
        self, request: oa.SamplingRequest, max_tokens: int | None, param: str, logprobs: int | None
    ) -> SamplingOptions:
        return self.service.sampling(
            max_tokens=max_tokens,
            max_tokens_param=param,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop_list(),
            seed=request.seed,
            n=request.n,
            logprobs=logprobs,
        )

    # ------------------------------------------------------------ responses

    def _confidence(self, call: Call, index: int, value: float, reader: ConfidenceReader) -> oa.Confidence:
        adapter = f"{reader.info.name}@{reader.info.version}" if reader.info else None
        return oa.Confidence(
            value=value,
            method=reader.method,
            adapter=adapter,
            feedback=oa.FeedbackRef(id=call.id, index=index),
        )

    @staticmethod
    def _usage(prompt_tokens: int, completions: list[EngineCompletion]) -> oa.Usage:
        generated = sum(c.completion_tokens for c in completions)
        return oa.Usage(
            prompt_tokens=prompt_tokens, completion_tokens=generated, total_tokens=prompt_tokens + generated
        )

    def chat_response(self, call: Call, answers: Answers, reader: ConfidenceReader) -> oa.ChatCompletion:
        choices = [
            oa.ChatChoice(
                index=i,
                message=oa.AssistantMessage(content=a.completion.text),
                logprobs=chat_logprobs(a.completion.logprobs),
                finish_reason=a.completion.finish_reason,
                confidence=self._confidence(call, i, a.confidence, reader),
            )
            for i, a in enumerate(answers.choices)
        ]
        usage = self._usage(answers.prompt_tokens, [a.completion for a in answers.choices])
        return oa.ChatCompletion(
            id=call.id, model=self.model, system_fingerprint=self.fingerprint, choices=choices, usage=usage
        )

    def completion_response(self, call: Call, answers: Answers, reader: ConfidenceReader) -> oa.Completion:
        choices = [
            oa.CompletionChoice(
                index=i,
                text=a.completion.text,
                logprobs=completion_logprobs(a.completion.logprobs, 0),
                finish_reason=a.completion.finish_reason,
                confidence=self._confidence(call, i, a.confidence, reader),
            )
            for i, a in enumerate(answers.choices)
        ]
        usage = self._usage(answers.prompt_tokens, [a.completion for a in answers.choices])
        return oa.Completion(
            id=call.id, model=self.model, system_fingerprint=self.fingerprint, choices=choices, usage=usage
        )

    # ------------------------------------------------------------ streams

    async def chat_stream(
        self,
        call: Call,
        events: AsyncGenerator[ChoiceText | ChoiceDone, None],
        reader: ConfidenceReader,
        record: Record,
    ) -> AsyncGenerator[BaseModel, None]:
        """Chunks as OpenAI streams a chat: each choice's role, its content as generated, then
        (new here) its finish_reason with its confidence; the usage chunk last when asked."""

        def chunk(choice: oa.ChatChunkChoice) -> oa.ChatCompletionChunk:
            return oa.ChatCompletionChunk(
                id=call.id, model=self.model, system_fingerprint=self.fingerprint, choices=[choice]
            )

        for i in range(call.options.n):
            yield chunk(oa.ChatChunkChoice(index=i, delta={"role": "assistant", "content": ""}))
        done: list[EngineCompletion] = []
        async for event in events:
            if isinstance(event, ChoiceText):
                lps = chat_logprobs(event.logprobs)
                yield chunk(
                    oa.ChatChunkChoice(index=event.index, delta={"content": event.text}, logprobs=lps)
                )
                continue
            await record(event.index, event.completion, event.confidence)
            done.append(event.completion)
            confidence = self._confidence(call, event.index, event.confidence, reader)
            finish = event.completion.finish_reason
            yield chunk(
                oa.ChatChunkChoice(index=event.index, delta={}, finish_reason=finish, confidence=confidence)
            )
        if call.include_usage:
            yield oa.ChatCompletionChunk(
                id=call.id,
                model=self.model,
                system_fingerprint=self.fingerprint,
                choices=[],
                usage=self._usage(len(call.prompt.ids), done),
            )

    async def completion_stream(
        self,
        call: Call,
        events: AsyncGenerator[ChoiceText | ChoiceDone, None],
        reader: ConfidenceReader,
        record: Record,
    ) -> AsyncGenerator[BaseModel, None]:
        """Chunks as OpenAI streams a completion: text as generated, then each choice's
        finish_reason with its confidence; the usage chunk last when asked."""

        def chunk(choice: oa.CompletionChoice) -> oa.Completion:
            return oa.Completion(
                id=call.id, model=self.model, system_fingerprint=self.fingerprint, choices=[choice]
            )

        offsets = [0] * call.options.n
        done: list[EngineCompletion] = []
        async for event in events:
            if isinstance(event, ChoiceText):
                lps = completion_logprobs(event.logprobs, offsets[event.index])
                offsets[event.index] += len(event.text)
                yield chunk(oa.CompletionChoice(index=event.index, text=event.text, logprobs=lps))
                continue
            await record(event.index, event.completion, event.confidence)
            done.append(event.completion)
            confidence = self._confidence(call, event.index, event.confidence, reader)
            finish = event.completion.finish_reason
            yield chunk(
                oa.CompletionChoice(index=event.index, text="", finish_reason=finish, confidence=confidence)
            )
        if call.include_usage:
            yield oa.Completion(
                id=call.id,
                model=self.model,
                system_fingerprint=self.fingerprint,
                choices=[],
                usage=self._usage(len(call.prompt.ids), done),
            )


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(tokens: tuple[TokenLogprob, ...] | None) -> oa.ChatLogprobs | None:
    if tokens is None:
        return None
    content = [
        oa.ChatLogprobContent(
            token=t.token,
            logprob=t.logprob,
            bytes=_bytes(t.token),
            top_logprobs=[oa.ChatLogprob(token=s, logprob=lp, bytes=_bytes(s)) for s, lp in t.top],
        )
        for t in tokens
    ]
    return oa.ChatLogprobs(content=content)


def completion_logprobs(tokens: tuple[TokenLogprob, ...] | None, offset: int) -> oa.CompletionLogprobs | None:
    """The legacy completions format; `offset` is where this text starts in the choice's text."""
    if tokens is None:
        return None
    out = oa.CompletionLogprobs()
    for t in tokens:
        out.text_offset.append(offset)
        offset += len(t.token)
        out.tokens.append(t.token)
        out.token_logprobs.append(t.logprob)
        out.top_logprobs.append(dict(t.top) if t.top else None)
    return out

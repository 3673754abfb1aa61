"""Request and response models of the OpenAI-compatible API, shaped as vLLM serves them.

Requests ignore unknown top-level fields (as vLLM does): clients that send OpenAI
parameters this server does not implement (`presence_penalty`, `tools`, …) keep working,
and those parameters have no effect. Extra, non-OpenAI request fields (what the `openai`
client sends through `extra_body`): `adapter` (uncertainty adapter, `name` or
`name@version`), `method` (`calibrated_head` | `adapter` | `zero_shot`; unset: the adapter
version's best, see `METHOD_DESCRIPTION`), and `abstain_below` or
`target_error_rate` (selective answering: each choice's confidence then carries `decision`,
and with a target the `selection` it rests on; not while streaming).

Every choice carries `confidence`: the calibrated probability that its answer is correct,
the method and adapter that read it, and the `feedback` reference (`id`, `index`) that
`POST /feedback` takes. While streaming it is null until the choice's last chunk.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.api.protocol import (
    MAX_ID_CHARS,
    MAX_MESSAGES,
    MAX_TEXT_CHARS,
    METHOD_DESCRIPTION,
    Decision,
    DecisionsWhenAsked,
    Method,
    Selection,
    Selective,
)

MAX_CHOICES = 16
MAX_STOP = 8
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; completions allow 5
MAX_COMPLETION_LOGPROBS = 5

StopString = Annotated[str, Field(min_length=1, max_length=256)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingRequest(_Request, Selective):
    """The parameters both endpoints share. Defaults follow OpenAI (temperature 1)."""

    model: str = Field(max_length=512, description="The base model's id (or an adapter entry of /v1/models).")
    max_tokens: int | None = Field(default=None, ge=1, description="Default: the server's default.")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="Answers; each gets its own confidence.")
    stop: StopString | list[StopString] | None = None
    # Engines seed a 64-bit generator; a larger value would fail inside the engine.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="Accepted, not used.")
    adapter: str | None = Field(
        default=None,
        max_length=MAX_ID_CHARS,
        description="Extra: uncertainty adapter (name or name@version).",
    )
    method: Method | None = Field(default=None, description=f"Extra: {METHOD_DESCRIPTION}")
    answer_with_adapter: bool = Field(
        default=False,
        description="Extra: generate the answer through the uncertainty adapter as well, so the "
        "confidence read reuses the answer's KV cache and prefills only its own few tokens: less "
        "overhead, but the answer can differ from the base model's (docs/benchmarks.md measures both).",
    )

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stop

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(_Request):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="Text, or a list of text parts (joined).")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    @field_validator("content")
    @classmethod
    def _bounded(cls, content: str | list[TextPart]) -> str | list[TextPart]:
        if isinstance(content, str) and len(content) > MAX_TEXT_CHARS:
            raise ValueError(f"at most {MAX_TEXT_CHARS} characters")
        return content


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=MAX_MESSAGES, description="A chat ending with a user turn."
    )
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Wins over max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("must end with a user turn")
        if not any(m.text().strip() for m in messages if m.role == "user"):
            raise ValueError("must contain a non-empty user turn")
        return messages

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def chat(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system turn.
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] = Field(description="One prompt (a list must hold exactly one).")
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = Field(default=False, description="Not supported: true is refused.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        text = prompt if isinstance(prompt, str) else (prompt[0] if len(prompt) == 1 else None)
        if text is None:
            raise ValueError("give exactly one prompt; batches of prompts are not supported")
        if not text.strip():
            raise ValueError("must not be empty")
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"at most {MAX_TEXT_CHARS} characters")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ------------------------------------------------------------------ responses


class FeedbackRef(BaseModel):
    id: str = Field(description="The response id, as POST /feedback takes it.")
    index: int = Field(description="The choice index, as POST /feedback takes it.")


class Confidence(DecisionsWhenAsked):
    value: float = Field(ge=0.0, le=1.0, description="Calibrated probability the answer is correct.")
    method: Method
    adapter: str | None = Field(description="name@version of the adapter that read it; null for zero_shot.")
    feedback: FeedbackRef
    decision: Decision | None = Field(
        default=None, description="Only with the extra abstain_below or target_error_rate."
    )
    selection: Selection | None = Field(default=None, description="Only with target_error_rate.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def _now() -> int:
    return int(time.time())


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=_now)
    model: str
    system_fingerprint: str


class ChatLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobContent(ChatLogprob):
    top_logprobs: list[ChatLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatLogprobContent] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str
    confidence: Confidence


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatChunkChoice(BaseModel):
    index: int
    delta: dict[str, str] = Field(description="role on a choice's first chunk, then content.")
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    confidence: Confidence | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    confidence: Confidence | None = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "confidence-service"
    root: str
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = Field(description="This service's error type (adapter_not_found, overloaded, …).")


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError

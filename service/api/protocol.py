"""Request and response models of the HTTP API (one place, imported by the routes)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

MAX_TEXT_CHARS = 200_000  # a cheap bound checked before tokenizing; the token limit is the real one
MAX_MESSAGES = 128  # turns of one chat (the model's context bounds the text, this the list)
MAX_FEEDBACK_ITEMS = 256
MAX_ID_CHARS = 128
MAX_CONTEXT_DOCUMENTS = 32


class Method(str, Enum):
    adapter = "adapter"  # LoRA + Prompt: the query read through the uncertainty adapter
    zero_shot = "zero_shot"  # the same query on the base model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


def _check_chat(messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
    if messages is not None:
        if messages[-1].role != "user":
            raise ValueError("must end with a user turn")
        if not any(m.content.strip() for m in messages if m.role == "user"):
            raise ValueError("must contain a non-empty user turn")
    return messages


class GenerateRequest(_Strict):
    prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS, description="A single user turn.")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, max_length=MAX_MESSAGES, description="A chat; must end with a user turn."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Defaults to the server's default.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, max_length=8)
    # Engines seed a 64-bit generator; a larger value would fail inside the engine.
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    adapter: str | None = Field(default=None, description="Uncertainty adapter; default = server default.")
    method: Method = Method.adapter
    stream: bool = Field(
        default=False,
        description="Server-sent events: `GenerateDelta`s as the text is generated, then the whole "
        "`GenerateResponse` (with the confidence), then `data: [DONE]`.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, prompt: str | None) -> str | None:
        if prompt is not None and not prompt.strip():
            raise ValueError("must not be empty")
        return prompt

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
        return _check_chat(messages)

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self

    def chat(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]


class AdapterInfo(BaseModel):
    name: str
    version: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    id: str
    text: str
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated probability the answer is correct.")
    method: Method
    adapter: AdapterInfo | None
    usage: Usage
    finish_reason: str


class GenerateDelta(BaseModel):
    """A streamed piece of /generate's answer."""

    id: str
    text: str


class ScoreItem(_Strict):
    """A proposed answer to a question (one user turn) or to a chat whose last turn is the
    user's, optionally with the documents it was based on."""

    question: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, description="Instead of question: a chat ending with the user's turn."
    )
    answer: str = Field(max_length=MAX_TEXT_CHARS)
    context: list[Annotated[str, Field(max_length=MAX_TEXT_CHARS)]] | None = Field(
        default=None,
        max_length=MAX_CONTEXT_DOCUMENTS,
        description="Documents the answer was based on (RAG), rendered into the last user turn "
        "(template documents-v1).",
    )

    @field_validator("question")
    @classmethod
    def _non_blank(cls, question: str | None) -> str | None:
        if question is not None and not question.strip():
            raise ValueError("must not be blank")
        return question

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage] | None) -> list[ChatMessage] | None:
        return _check_chat(messages)

    @model_validator(mode="after")
    def _one_question(self) -> ScoreItem:
        if (self.question is None) == (self.messages is None):
            raise ValueError("give exactly one of 'question' or 'messages'")
        return self

    def turns(self) -> list[dict[str, str]]:
        """The question as a chat, without the context."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        return [{"role": "user", "content": self.question or ""}]


class ScoreRequest(_Strict):
    items: list[ScoreItem] = Field(min_length=1)
    adapter: str | None = None
    method: Method = Method.adapter


class ScoredItem(BaseModel):
    index: int
    confidence: float = Field(ge=0.0, le=1.0)


class ScoreResponse(BaseModel):
    id: str
    method: Method
    adapter: AdapterInfo | None
    items: list[ScoredItem]


class AdapterSummary(BaseModel):
    name: str
    version: str
    base_model: str
    temperature: float
    template_version: str
    metrics: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="Per eval set: the adapter's held-out ECE/AUROC/… from its manifest.",
    )
    loaded_at: float = Field(description="Unix time the service loaded this version.")
    requests_served: int
    in_flight: int
    current: bool = Field(description="What requests naming only this adapter's name get.")
    default: bool = Field(description="What requests naming no adapter get.")


class AdapterList(BaseModel):
    default: str | None = Field(description="name@version that requests naming no adapter get.")
    adapters: list[AdapterSummary]
    rejected: dict[str, str] = Field(default_factory=dict, description="Adapters on disk refused, and why.")


class LoadAdapterRequest(_Strict):
    name: str = Field(description="Directory under the adapter root.")
    version: str = Field(description="Sub-directory of the name; versions are immutable.")
    make_default: bool = Field(default=False, description="Also make this version the default.")


class SetDefaultRequest(_Strict):
    adapter: str = Field(description="name or name@version; becomes the default (and its name's current).")


class FeedbackItem(_Strict):
    id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, description="`id` of a /generate or /score response."
    )
    index: int | None = Field(
        default=None, ge=0, description="Item of a /score response; omit for /generate."
    )
    correct: StrictBool = Field(description="Whether the answer was correct.")


class FeedbackRequest(_Strict):
    """One label (`id`, `index` for a /score item, `correct`) or a batch of them in `items`."""

    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    index: int | None = Field(
        default=None, ge=0, description="Item of a /score response; omit for /generate."
    )
    correct: StrictBool | None = None
    items: list[FeedbackItem] | None = Field(default=None, min_length=1, max_length=MAX_FEEDBACK_ITEMS)

    @model_validator(mode="after")
    def _one_form(self) -> FeedbackRequest:
        single = (self.id, self.index, self.correct) != (None, None, None)
        if self.items is not None and single:
            raise ValueError("give either a batch in 'items' or one 'id' with 'correct', not both")
        if self.items is None and (self.id is None or self.correct is None):
            raise ValueError("give 'id' and 'correct' (or a batch in 'items')")
        return self

    def labelled(self) -> list[tuple[str, FeedbackItem]]:
        """Each label with where it stood in the request ("" or "items[i].", for errors)."""
        if self.items is not None:
            return [(f"items[{i}].", item) for i, item in enumerate(self.items)]
        assert self.id is not None and self.correct is not None  # checked by _one_form
        return [("", FeedbackItem(id=self.id, index=self.index, correct=self.correct))]


class FeedbackResponse(BaseModel):
    recorded: int = Field(description="Labels stored by this request.")
    duplicates: int = Field(description="Labels that repeated one already stored (idempotent no-ops).")


WINDOW_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CalibrationQuery(_Strict):
    adapter: str | None = Field(
        default=None, max_length=MAX_ID_CHARS, description="Adapter name; default: the server's default."
    )
    method: Method = Method.adapter
    version: str | None = Field(
        default=None, max_length=MAX_ID_CHARS, description="Only this adapter version; default: all."
    )
    # At most 9 digits: any longer window exceeds every retention period (checked later), and
    # an unbounded number of digits overflowed the conversion to seconds (a 500).
    window: str = Field(
        default="24h",
        pattern=r"^[0-9]{1,9}[smhd]$",
        description="Feedback received in the last 30m, 6h, 7d, … (at most the retention period)",
    )

    @field_validator("window")
    @classmethod
    def _positive(cls, window: str) -> str:
        if int(window[:-1]) <= 0:
            raise ValueError("must be longer than 0")
        return window

    def window_seconds(self) -> float:
        return float(int(self.window[:-1]) * WINDOW_UNITS_S[self.window[-1]])


class ReliabilityBin(BaseModel):
    lower: float
    upper: float
    count: int
    mean_confidence: float | None = None
    accuracy: float | None = None


class CalibrationResponse(BaseModel):
    adapter: str | None
    method: Method
    version: str | None
    window_s: float
    n: int = Field(description="Labelled confidences in the window.")
    n_correct: int
    accuracy: float | None
    mean_confidence: float | None
    ece: float | None = Field(description="Expected calibration error, 10 equal-width bins.")
    brier: float | None
    auroc: float | None
    note: str | None = Field(default=None, description="Why a metric is null, if one is.")
    bins: list[ReliabilityBin]


class HealthResponse(BaseModel):
    status: str
    model: str | None = None
    adapters: list[AdapterInfo] = Field(default_factory=list)
    detail: str | None = None


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

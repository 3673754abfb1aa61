"""Request and response models of the HTTP API (one place, imported by the routes)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_serializer,
    model_validator,
)

MAX_TEXT_CHARS = 200_000  # a cheap bound checked before tokenizing; the token limit is the real one
MAX_MESSAGES = 128  # turns of one chat (the model's context bounds the text, this the list)
MAX_FEEDBACK_ITEMS = 256
MAX_ID_CHARS = 128
MAX_CONTEXT_DOCUMENTS = 32


class Method(str, Enum):
    adapter = "adapter"  # LoRA + Prompt: the query read through the uncertainty adapter
    zero_shot = "zero_shot"  # the same query on the base model
    # LoRA + Prompt's gap and the base model's likelihood of the answer, combined by the
    # adapter version's fitted head (service.calibration.estimator)
    calibrated_head = "calibrated_head"


METHOD_DESCRIPTION = (
    "How the confidence is read. Unset: `calibrated_head` when the adapter version serving the "
    "request has a fitted head (its selection evidence preferred it), else `adapter`; the "
    "response's `method` says which was used."
)
REPORT_METHOD_DESCRIPTION = (
    "Whose confidences: unset = the method requests naming none get from this adapter "
    "(its version `version`, else its current one): `calibrated_head` with a head, else `adapter`."
)


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


class Decision(str, Enum):
    answer = "answer"
    abstain = "abstain"


class DecisionsWhenAsked(BaseModel):
    """A response whose `decision` / `selection` fields appear only when the request asked for
    a decision, so clients that don't see exactly what they always did (JSON and SSE alike)."""

    # No return annotation on purpose: pydantic then documents the model's own schema.
    @model_serializer(mode="wrap")
    def _omit_unasked(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        data = handler(self)
        for key in ("decision", "selection"):
            if key in data and data[key] is None:
                del data[key]
        return data


class Selective(BaseModel):
    """Optional selective answering: without these fields nothing in the response changes."""

    abstain_below: StrictFloat | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Answer when the confidence is >= this, else abstain: adds `decision` to the response.",
    )
    # Below 0.001 the labels a guarantee needs run into the thousands of millions.
    target_error_rate: StrictFloat | None = Field(
        default=None,
        ge=0.001,
        lt=1.0,
        description="The server picks the lowest threshold whose error rate among answered items is <= "
        "this (with probability >= 1 - delta, from labelled outcomes of the adapter version): adds "
        "`decision` and `selection`. 409 when too few labels exist for any threshold to qualify.",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> Selective:
        if self.abstain_below is not None and self.target_error_rate is not None:
            raise ValueError("give at most one of 'abstain_below' or 'target_error_rate'")
        return self


class Selection(BaseModel):
    """How the answer/abstain threshold was set."""

    threshold: float = Field(description="Answer when confidence >= threshold.")
    source: Literal["request", "outcome_store", "calibration_split"] = Field(
        description="request: the client's abstain_below; outcome_store: live labels of this adapter "
        "version and method; calibration_split: the labelled split recorded with the version."
    )
    target_error_rate: float | None = None
    delta: float | None = Field(
        default=None,
        description="The error rate among answered items exceeds the target with "
        "probability at most delta (over the labelled sample).",
    )
    expected_coverage: float | None = Field(
        default=None, description="Fraction of labelled items the threshold answers."
    )
    n_labels: int | None = Field(default=None, description="Labelled items the threshold rests on.")
    risk_upper_bound: float | None = Field(
        default=None, description="(1 - delta) upper bound on the error rate among answered items."
    )


class GenerateRequest(_Strict, Selective):
    prompt: str | None = Field(default=None, max_length=MAX_TEXT_CHARS, description="A single user turn.")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, max_length=MAX_MESSAGES, description="A chat; must end with a user turn."
    )
    # Strict: a quoted number is refused as the schema says, not silently converted.
    max_tokens: StrictInt | None = Field(default=None, ge=1, description="Defaults to the server's default.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(default=None, max_length=8)
    # Engines seed a 64-bit generator; a larger value would fail inside the engine.
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
    adapter: str | None = Field(default=None, description="Uncertainty adapter; default = server default.")
    method: Method | None = Field(default=None, description=METHOD_DESCRIPTION)
    answer_with_adapter: bool = Field(
        default=False,
        description="Generate the answer through the uncertainty adapter as well, so the confidence read "
        "reuses the answer's KV cache and prefills only its own few tokens: less overhead, but the "
        "answer can differ from the base model's (docs/benchmarks.md measures both).",
    )
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


class GenerateResponse(DecisionsWhenAsked):
    id: str
    text: str
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated probability the answer is correct.")
    method: Method
    adapter: AdapterInfo | None
    usage: Usage
    finish_reason: str
    decision: Decision | None = Field(
        default=None, description="Only with abstain_below or target_error_rate."
    )
    selection: Selection | None = Field(default=None, description="Only with target_error_rate.")


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


class ScoreRequest(_Strict, Selective):
    items: list[ScoreItem] = Field(min_length=1)
    adapter: str | None = None
    method: Method | None = Field(default=None, description=METHOD_DESCRIPTION)


class ScoredItem(DecisionsWhenAsked):
    index: int
    confidence: float = Field(ge=0.0, le=1.0)
    decision: Decision | None = Field(
        default=None, description="Only with abstain_below or target_error_rate."
    )


class ScoreResponse(DecisionsWhenAsked):
    id: str
    method: Method
    adapter: AdapterInfo | None
    items: list[ScoredItem]
    selection: Selection | None = Field(default=None, description="Only with target_error_rate.")


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
    rejected: dict[str, str] = Field(
        default_factory=dict,
        description="Adapters on disk refused (validation, engine load or warm-up read), and why: keyed by "
        "name, or by name@version while other versions of the name serve.",
    )
    previous_default: str | None = Field(
        default=None, description="name@version a rollback of the default returns to."
    )


class LoadAdapterRequest(_Strict):
    name: str = Field(description="Directory under the adapter root.")
    version: str = Field(description="Sub-directory of the name; versions are immutable.")
    make_default: bool = Field(default=False, description="Also make this version the default.")


class SetDefaultRequest(_Strict):
    adapter: str = Field(description="name or name@version; becomes the default (and its name's current).")


class FeedbackItem(_Strict):
    id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, description="`id` of a /generate, /score or /v1 response."
    )
    index: int | None = Field(
        default=None,
        ge=0,
        description="Item of a /score response or choice of a /v1 one; omit for /generate.",
    )
    correct: StrictBool = Field(description="Whether the answer was correct.")


class FeedbackRequest(_Strict):
    """One label (`id`, `index` for a /score item, `correct`) or a batch of them in `items`."""

    id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    index: int | None = Field(
        default=None,
        ge=0,
        description="Item of a /score response or choice of a /v1 one; omit for /generate.",
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
    method: Method | None = Field(default=None, description=REPORT_METHOD_DESCRIPTION)
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


class RiskCoveragePoint(BaseModel):
    """Answering when confidence >= threshold: how much is answered and how often it is wrong."""

    threshold: float
    answered: int
    coverage: float
    error_rate: float | None
    risk_upper_bound: float = Field(description="(1 - delta) Clopper-Pearson bound on the error rate.")


class MetricDifference(BaseModel):
    estimate: float | None
    ci_low: float | None
    ci_high: float | None


class ShadowComparison(BaseModel):
    """A shadow candidate against what was served, on the same labelled responses."""

    candidate: str = Field(description="name@version of the shadow.")
    method: Method = Field(
        description="How the shadow read its confidences: the served responses' method, or "
        "`adapter` for a candidate without a head shadowing `calibrated_head`."
    )
    n: int = Field(description="Labelled responses both scored.")
    served: dict[str, float | None] = Field(description="ECE, Brier, AUROC of the served confidences.")
    shadow: dict[str, float | None] = Field(description="ECE, Brier, AUROC of the shadow's confidences.")
    ece_difference: MetricDifference = Field(description="shadow - served, paired bootstrap 95% CI.")
    brier_difference: MetricDifference


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
    delta: float | None = Field(default=None, description="Level of the risk upper bounds.")
    risk_coverage: list[RiskCoveragePoint] = Field(
        default_factory=list,
        description="Risk-coverage curve of the labelled confidences, highest threshold first.",
    )
    shadow: list[ShadowComparison] = Field(
        default_factory=list,
        description="Shadow candidates compared with the served version on the same labels.",
    )


class FeedbackQueueQuery(_Strict):
    adapter: str | None = Field(default=None, description="Adapter name; default: the server's default.")
    version: str | None = Field(default=None, description="Default: the adapter's current version.")
    method: Method | None = Field(default=None, description=REPORT_METHOD_DESCRIPTION)
    window: str = Field(default="7d", pattern=r"^[0-9]+[smhd]$", description="Served within the last …")
    limit: int = Field(default=50, ge=1, le=500)
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Decision threshold to label around; default: the "
        "thresholds clients asked for recently, else 0.5.",
    )

    def window_seconds(self) -> float:
        return float(int(self.window[:-1]) * WINDOW_UNITS_S[self.window[-1]])


class FeedbackQueueItem(BaseModel):
    id: str
    index: int
    endpoint: str
    confidence: float
    served_at: float
    priority: float = Field(description="Higher first: near the threshold + scarce bin + drifted bin.")
    reasons: list[str]
    question: list[dict[str, str]] | None = Field(default=None, description="When prompts are stored.")
    answer: str | None = None


class FeedbackQueue(BaseModel):
    adapter: str | None
    version: str | None
    method: Method
    thresholds: list[float]
    candidates: int = Field(description="Unlabelled responses considered.")
    items: list[FeedbackQueueItem]


class ShadowRequest(_Strict):
    adapter: str = Field(description="name@version of a loaded candidate (not the default).")
    fraction: float = Field(
        gt=0.0, le=1.0, strict=True, description="Share of default-adapter requests it also scores."
    )


class ShadowStatus(BaseModel):
    adapter: str | None = Field(description="The attached candidate, or null.")
    fraction: float | None
    default: str | None = Field(description="What it shadows: the default adapter.")


class ShadowPromoteRequest(_Strict):
    min_labels: int = Field(
        default=200, ge=1, strict=True, description="Labelled responses both must have scored."
    )
    window: str = Field(default="30d", pattern=r"^[0-9]+[smhd]$", description="Feedback received within.")


class RecalibrationReport(_Strict):
    """What a `confidence recalibrate` run did (counted in the service's metrics)."""

    adapter: str = Field(min_length=1, max_length=64)
    outcome: Literal["promoted", "better", "not_better", "too_few_labels"]
    # strict: a JSON boolean is not an ECE (lax mode would read false as 0.0).
    current_ece: float | None = Field(
        default=None, ge=0.0, le=1.0, strict=True, description="Held-out ECE of the current version."
    )
    candidate_ece: float | None = Field(
        default=None, ge=0.0, le=1.0, strict=True, description="Held-out ECE of the refit."
    )


class HealthResponse(BaseModel):
    status: str
    model: str | None = None
    adapters: list[AdapterInfo] = Field(default_factory=list)
    detail: str | None = None


class ErrorBody(BaseModel):
    # Some errors add a field (a 409 for target_error_rate says `labels_needed`).
    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody

"""The serving core: answer with the base model, then read the confidence query.

Routes call `ConfidenceService`; it owns prompt rendering, length limits, adapter
resolution and the confidence math call. Every request awaits the engine directly
(no lock, no worker), so concurrent requests — and all items of one /score — reach
vLLM together and are batched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.api.protocol import (
    AdapterInfo,
    GenerateRequest,
    GenerateResponse,
    Method,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
    Usage,
)
from service.calibration import estimator
from service.calibration import query as cq
from service.calibration.estimator import HeadParams
from service.engine.base import Completion, Engine, LoRA, SamplingOptions
from service.errors import InvalidRequestError, PromptTooLongError
from service.lora.registry import AdapterRegistry


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    default_max_tokens: int
    max_tokens_limit: int
    max_score_items: int
    query_reserve_tokens: int


@dataclass(frozen=True)
class ConfidenceReader:
    """How one request's confidence is read: which LoRA (if any), which temperature, and
    for method "calibrated_head" the version's fitted head."""

    method: Method
    lora: LoRA | None
    temperature: float
    info: AdapterInfo | None
    head: HeadParams | None = None


class ConfidenceService:
    def __init__(
        self, engine: Engine, registry: AdapterRegistry, labels: cq.LabelTokens, limits: Limits
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.labels = labels
        self.limits = limits

    @contextmanager
    def reader(self, method: Method | None, adapter: str | None) -> Iterator[ConfidenceReader]:
        """Resolve the adapter once, at the start of the request, and hold it to the end:
        an adapter switch meanwhile does not change this request's version. An unset
        method is the version's calibrated head if it has one, else the adapter's query."""
        if method is Method.zero_shot:
            if adapter is not None:
                raise InvalidRequestError(
                    "method 'zero_shot' uses no adapter; drop 'adapter'", param="adapter"
                )
            yield ConfidenceReader(method, None, 1.0, None)
            return
        with self.registry.lease(adapter) as loaded:
            info = AdapterInfo(name=loaded.name, version=loaded.version)
            head = loaded.manifest.head
            if method is None:
                method = Method.adapter if head is None else Method.calibrated_head
            if method is Method.calibrated_head and head is None:
                raise InvalidRequestError(
                    f"adapter {loaded.name}@{loaded.version} has no calibrated head; use method 'adapter'",
                    param="method",
                )
            yield ConfidenceReader(
                method,
                loaded.lora,
                loaded.temperature,
                info,
                head if method is Method.calibrated_head else None,
            )

    def query(self, question: list[cq.Message], answer: str, *, param: str) -> list[int]:
        """Token ids of the confidence query, checked against the context length."""
        ids = cq.query_ids(self.engine.tokenizer, question, answer)
        if len(ids) >= self.limits.max_model_len:
            raise PromptTooLongError(
                f"question + answer + confidence query is {len(ids)} tokens; the model context is "
                f"{self.limits.max_model_len}",
                param=param,
            )
        return ids

    async def gap(self, query_ids: list[int], reader: ConfidenceReader) -> float:
        """logit(yes) - logit(no) of the confidence query (no temperature applied)."""
        lp_no, lp_yes = await self.engine.next_token_logprobs(
            query_ids, [self.labels.no_id, self.labels.yes_id], lora=reader.lora
        )
        return cq.label_logit_gap(lp_no, lp_yes)

    async def read(self, query_ids: list[int], reader: ConfidenceReader) -> float:
        return cq.sigmoid(await self.gap(query_ids, reader) / reader.temperature)

    def with_head(self, head: HeadParams, gap: float, answer: str, answer_logprobs: list[float]) -> float:
        likelihood = estimator.answer_likelihood(answer_logprobs)
        return estimator.head_confidence(head, estimator.features(gap, likelihood, answer))

    async def read_scored(
        self, question: list[cq.Message], answer: str, query_ids: list[int], reader: ConfidenceReader
    ) -> float:
        """One /score item. The head also needs the base model's likelihood of the answer:
        one prefill of question + answer, submitted with the query so vLLM batches both."""
        if reader.head is None:
            return await self.read(query_ids, reader)
        ids, start = estimator.likelihood_prompt(self.engine.tokenizer, question, answer)
        gap, logprobs = await asyncio.gather(
            self.gap(query_ids, reader), self.engine.prompt_logprobs(ids, start=start)
        )
        return self.with_head(reader.head, gap, answer, logprobs)

    def generated_logprobs(self, completion: Completion) -> list[float]:
        """The sampled tokens' log-probabilities that belong to the answer text: an end-of-
        sequence token or a stop string's token is generated but not part of the text."""
        answer_tokens = len(self.engine.tokenizer.encode(completion.text, add_special_tokens=False))
        return list(completion.token_logprobs or [])[:answer_tokens]

    def _max_tokens(self, request: GenerateRequest) -> int:
        max_tokens = request.max_tokens or self.limits.default_max_tokens
        if max_tokens > self.limits.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens {max_tokens} exceeds this server's limit {self.limits.max_tokens_limit}",
                param="max_tokens",
            )
        return max_tokens

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        with self.reader(request.method, request.adapter) as reader:  # fail fast, before generating
            return await self._generate(request, reader)

    async def _generate(self, request: GenerateRequest, reader: ConfidenceReader) -> GenerateResponse:
        max_tokens = self._max_tokens(request)
        chat = request.chat()
        tokenizer = self.engine.tokenizer
        prompt_ids = cq.encode_rendered(tokenizer, cq.render(tokenizer, chat))
        budget = self.limits.max_model_len - max_tokens - self.limits.query_reserve_tokens
        if len(prompt_ids) > budget:
            raise PromptTooLongError(
                f"prompt is {len(prompt_ids)} tokens; with max_tokens={max_tokens} and "
                f"{self.limits.query_reserve_tokens} tokens kept for the confidence query, at most "
                f"{max(budget, 0)} fit the {self.limits.max_model_len}-token context",
                param="messages" if request.messages is not None else "prompt",
            )
        options = SamplingOptions(
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=tuple(request.stop or ()),
            seed=request.seed,
            # The head reads the answer's likelihood from the sampling itself: no extra pass.
            logprobs=reader.head is not None,
        )
        # The answer comes from the base model; only the confidence query uses the adapter.
        result = await self.engine.generate(prompt_ids, options, lora=None)
        completion = result.completions[0]
        param = "messages" if request.messages is not None else "prompt"
        query_ids = self.query(chat, completion.text, param=param)
        if reader.head is None:
            score = await self.read(query_ids, reader)
        else:
            gap = await self.gap(query_ids, reader)
            score = self.with_head(reader.head, gap, completion.text, self.generated_logprobs(completion))
        return GenerateResponse(
            id=f"gen-{uuid.uuid4().hex}",
            text=completion.text,
            confidence=score,
            method=reader.method,
            adapter=reader.info,
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                total_tokens=result.prompt_tokens + completion.completion_tokens,
            ),
            finish_reason=completion.finish_reason,
        )

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        if len(request.items) > self.limits.max_score_items:
            raise InvalidRequestError(
                f"{len(request.items)} items exceed this server's limit of {self.limits.max_score_items}",
                param="items",
            )
        with self.reader(request.method, request.adapter) as reader:
            return await self._score(request, reader)

    async def _score(self, request: ScoreRequest, reader: ConfidenceReader) -> ScoreResponse:
        # Tokenize and length-check every item before submitting any: a bad item fails
        # the request before any engine work starts.
        questions: list[list[cq.Message]] = [
            [{"role": "user", "content": item.question}] for item in request.items
        ]
        queries = [
            self.query(question, item.answer, param=f"items[{i}]")
            for i, (question, item) in enumerate(zip(questions, request.items, strict=True))
        ]
        scores = await asyncio.gather(
            *(
                self.read_scored(question, item.answer, ids, reader)
                for question, item, ids in zip(questions, request.items, queries, strict=True)
            )
        )
        return ScoreResponse(
            id=f"score-{uuid.uuid4().hex}",
            method=reader.method,
            adapter=reader.info,
            items=[ScoredItem(index=i, confidence=s) for i, s in enumerate(scores)],
        )

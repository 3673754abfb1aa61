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
from service.calibration import query as cq
from service.engine.base import Engine, LoRA, SamplingOptions
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
    """How one request's confidence is read: which LoRA (if any) and which temperature."""

    method: Method
    lora: LoRA | None
    temperature: float
    info: AdapterInfo | None


class ConfidenceService:
    def __init__(
        self, engine: Engine, registry: AdapterRegistry, labels: cq.LabelTokens, limits: Limits
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.labels = labels
        self.limits = limits

    @contextmanager
    def reader(self, method: Method, adapter: str | None) -> Iterator[ConfidenceReader]:
        """Resolve the adapter once, at the start of the request, and hold it to the end:
        an adapter switch meanwhile does not change this request's version."""
        if method is Method.zero_shot:
            if adapter is not None:
                raise InvalidRequestError(
                    "method 'zero_shot' uses no adapter; drop 'adapter'", param="adapter"
                )
            yield ConfidenceReader(method, None, 1.0, None)
            return
        with self.registry.lease(adapter) as loaded:
            info = AdapterInfo(name=loaded.name, version=loaded.version)
            yield ConfidenceReader(method, loaded.lora, loaded.temperature, info)

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

    async def read(self, query_ids: list[int], reader: ConfidenceReader) -> float:
        lp_no, lp_yes = await self.engine.next_token_logprobs(
            query_ids, [self.labels.no_id, self.labels.yes_id], lora=reader.lora
        )
        return cq.confidence(lp_no, lp_yes, temperature=reader.temperature)

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
        )
        # The answer comes from the base model; only the confidence query uses the adapter.
        result = await self.engine.generate(prompt_ids, options, lora=None)
        completion = result.completions[0]
        param = "messages" if request.messages is not None else "prompt"
        score = await self.read(self.query(chat, completion.text, param=param), reader)
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
        queries = [
            self.query([{"role": "user", "content": item.question}], item.answer, param=f"items[{i}]")
            for i, item in enumerate(request.items)
        ]
        scores = await asyncio.gather(*(self.read(ids, reader) for ids in queries))
        return ScoreResponse(
            id=f"score-{uuid.uuid4().hex}",
            method=reader.method,
            adapter=reader.info,
            items=[ScoredItem(index=i, confidence=s) for i, s in enumerate(scores)],
        )

"""The serving core: answer with the base model, then read the confidence query.

Routes call `ConfidenceService`; it owns prompt rendering, length limits, adapter
resolution and the confidence math call. Every request awaits the engine directly
(no lock, no worker), so concurrent requests — and all items of one /score — reach
vLLM together and are batched. Rendering and tokenizing are CPU work that grows with the
input, so they run on a small thread pool, never on the event loop (which must keep
answering /health), and only after a character limit derived from the model's context
has refused text that could never fit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, aclosing, contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from service.api.protocol import (
    AdapterInfo,
    GenerateDelta,
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
from service.decisions.shadow import ShadowPolicy, ShadowRead
from service.engine.base import Completion, Engine, LoRA, SamplingOptions, StreamDelta, TokenLogprob
from service.errors import InvalidRequestError, PromptTooLongError, ServiceError
from service.lora.registry import AdapterRegistry, LoadedAdapter

log = logging.getLogger(__name__)

T = TypeVar("T")
# When a tokenizer does not list its vocabulary: a generous bound on characters per token.
DEFAULT_CHARS_PER_TOKEN = 32


def chars_per_token_bound(tokenizer: Any) -> int:
    """The longest token's length in characters: no text longer than `tokens × this` fits in
    `tokens` tokens, so a character count can refuse hopeless input before tokenizing it.
    (Byte-level vocabularies spell each byte as one character, so a token's string is never
    shorter than the text it stands for.)"""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return DEFAULT_CHARS_PER_TOKEN
    return max(1, max((len(token) for token in get_vocab()), default=DEFAULT_CHARS_PER_TOKEN))


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    default_max_tokens: int
    max_tokens_limit: int
    max_score_items: int
    query_reserve_tokens: int
    # Characters across one confidence query's text (all messages + answer, or one /score
    # item); set at start-up from the tokenizer (`chars_per_token_bound`).
    max_input_chars: int | None = None

    def input_chars_limit(self) -> int:
        return self.max_input_chars or self.max_model_len * DEFAULT_CHARS_PER_TOKEN


def method_for(requested: Method | None, adapter: LoadedAdapter) -> Method:
    """The method a request is read with: the one it names, else the best `adapter` offers:
    `calibrated_head` when the version carries a fitted head (its selection on the calibration
    and out-of-domain sets preferred it, see the README), else `adapter` (the paper's method,
    which every version has, so head-less adapters keep working unchanged)."""
    if requested is not None:
        return requested
    return Method.calibrated_head if adapter.manifest.head is not None else Method.adapter


@dataclass(frozen=True)
class ConfidenceReader:
    """How one request's confidence is read: which LoRA (if any) and which temperature."""

    method: Method
    lora: LoRA | None
    temperature: float
    info: AdapterInfo | None
    shadow: ConfidenceReader | None = None  # a candidate also read, never returned
    head: HeadParams | None = None  # method "calibrated_head": the version's fitted head


@dataclass(frozen=True)
class Scored:
    """What a confidence is read for: the question, the answer and, for a generated answer,
    its completion (whose sampled log-probs the calibrated head can read)."""

    question: list[cq.Message]
    answer: str
    completion: Completion | None


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt and the question its answers are scored against."""

    ids: list[int]
    question: list[cq.Message]
    param: str  # the request field it came from, for errors
    # The chat-rendered text `ids` encode; None for raw text prompts, whose answers are
    # scored in a query that does not extend them.
    rendered: str | None = None


@dataclass(frozen=True)
class Answer:
    completion: Completion
    confidence: float


@dataclass(frozen=True)
class Answers:
    prompt_tokens: int
    choices: list[Answer]
    shadow: list[float] | None = None  # a shadow candidate's confidences, never returned


@dataclass(frozen=True)
class ChoiceText:
    """Text one choice generated since its previous event."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None


@dataclass(frozen=True)
class ChoiceDone:
    """A choice's end: the whole answer and its confidence."""

    index: int
    completion: Completion
    confidence: float


class _AnswerStream:
    """One streamed request: a task reads the engine stream into a queue and starts each
    choice's confidence read as that choice ends; `events` drains the queue."""

    def __init__(
        self,
        service: ConfidenceService,
        prompt: Prompt,
        options: SamplingOptions,
        reader: ConfidenceReader,
        deltas: AsyncGenerator[StreamDelta, None],
        *,
        asked: int | None,
        base_answer: bool = True,
    ) -> None:
        self.service, self.prompt, self.options, self.reader = service, prompt, options, reader
        self.deltas = deltas
        self.asked = asked  # the client's `logprobs`: what it sees (`options` may add them for the head)
        self.base_answer = base_answer  # else its log-probs are the adapter's, not the head's feature
        self.queue: asyncio.Queue[ChoiceText | ChoiceDone | BaseException] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.queue.put_nowait(task.exception())  # type: ignore[arg-type]

    async def _generate(self) -> None:
        texts = [""] * self.options.n
        tokens = [0] * self.options.n
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(self.options.n)]
        token_ids: list[list[int]] = [[] for _ in range(self.options.n)]
        finished = 0
        async with aclosing(self.deltas) as deltas:
            async for delta in deltas:
                i = delta.index
                texts[i] += delta.text
                tokens[i] += delta.tokens
                logprobs[i].extend(delta.logprobs or ())
                token_ids[i].extend(delta.token_ids)
                shown = delta.logprobs if self.asked is not None else None
                if delta.text or shown:
                    self.queue.put_nowait(ChoiceText(i, delta.text, shown))
                if delta.finish_reason is not None:
                    finished += 1
                    lps = tuple(logprobs[i]) if self.options.logprobs is not None else None
                    done = Completion(texts[i], delta.finish_reason, tokens[i], lps, tuple(token_ids[i]))
                    self._spawn(self._score(i, done))
        if finished < self.options.n:  # else `run` would wait for a choice that never ends
            raise ServiceError(
                f"the engine ended the stream with {finished} of {self.options.n} choices done"
            )

    async def _score(self, index: int, completion: Completion) -> None:
        ids = await self.service.answer_query(self.prompt, completion)
        # Generated through the adapter, its log-probs are not the base model's: the head then
        # reads a base prefill.
        scored = Scored(self.prompt.question, completion.text, completion if self.base_answer else None)
        confidence = await self.service.read_answer(ids, self.reader, scored)
        shown = completion if self.asked is not None else replace(completion, logprobs=None)
        self.queue.put_nowait(ChoiceDone(index, shown, confidence))

    async def run(self) -> AsyncGenerator[ChoiceText | ChoiceDone, None]:
        try:
            self._spawn(self._generate())
            remaining = self.options.n
            while remaining:
                event = await self.queue.get()
                if isinstance(event, BaseException):
                    raise event
                remaining -= isinstance(event, ChoiceDone)
                yield event
        finally:
            await self.cancel()
            await self.deltas.aclose()  # if the engine stream never started

    async def cancel(self) -> None:
        """Cancel what still runs (closing vLLM's streams aborts their requests) and wait for it."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _generate_id() -> str:
    return f"gen-{uuid.uuid4().hex}"


def _generate_response(
    response_id: str, prompt_tokens: int, completion: Completion, confidence: float, reader: ConfidenceReader
) -> GenerateResponse:
    return GenerateResponse(
        id=response_id,
        text=completion.text,
        confidence=confidence,
        method=reader.method,
        adapter=reader.info,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=prompt_tokens + completion.completion_tokens,
        ),
        finish_reason=completion.finish_reason,
    )


async def _generate_events(
    events: AsyncGenerator[ChoiceText | ChoiceDone, None], prompt_tokens: int, reader: ConfidenceReader
) -> AsyncGenerator[GenerateDelta | GenerateResponse, None]:
    response_id = _generate_id()
    async with aclosing(events):
        async for event in events:
            if isinstance(event, ChoiceText):
                yield GenerateDelta(id=response_id, text=event.text)
            else:
                yield _generate_response(
                    response_id, prompt_tokens, event.completion, event.confidence, reader
                )


class ConfidenceService:
    def __init__(
        self,
        engine: Engine,
        registry: AdapterRegistry,
        labels: cq.LabelTokens,
        limits: Limits,
        *,
        tokenizer_threads: int = 1,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.labels = labels
        self.limits = limits
        # Shadow evaluation (service.decisions.shadow): which candidate shadows a request,
        # and where its confidences go. Unset: no shadow reads.
        self.shadow_policy: ShadowPolicy | None = None
        self.shadow_sink: Callable[[ShadowRead], None] | None = None
        # Few threads: the work is CPU-bound, and Hugging Face fast tokenizers are not safe to
        # call from many threads at once ("Already borrowed"); vLLM uses one as well.
        self._tokenize_pool = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tokenize")

    async def _off_loop(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, call)

    def check_input_chars(self, texts: Sequence[str], *, param: str) -> None:
        """Refuse, before any tokenizing, text that cannot fit the context however it tokenizes."""
        total, limit = sum(map(len, texts)), self.limits.input_chars_limit()
        if total > limit:
            context = self.limits.max_model_len
            raise PromptTooLongError(
                f"{param} has {total} characters; this server accepts at most {limit} per request "
                f"(its {context}-token context at most {limit // context} characters per token)",
                param=param,
            )

    def method_hint(self, method: Method | None, adapter: str | None) -> Method:
        """The method a request will most likely be read with, for what is needed before its
        reader exists (the request metrics' label): `reader` decides, under its lease. An
        adapter that does not resolve counts as `adapter` (the reader raises the error)."""
        if method is not None:
            return method
        try:
            return method_for(None, self.registry.resolve(adapter))
        except ServiceError:
            return Method.adapter

    @contextmanager
    def reader(
        self, method: Method | None, adapter: str | None, *, shadow: bool = False
    ) -> Iterator[ConfidenceReader]:
        """Resolve the adapter once, at the start of the request, and hold it to the end:
        an adapter switch meanwhile does not change this request's version. `method` None:
        the version's best (`method_for`), decided here, under the lease, so the method and
        the version always belong together. `shadow`: the caller records shadow reads
        (native /generate and /score), so one may be attached."""
        if method is Method.zero_shot:
            if adapter is not None:
                raise InvalidRequestError(
                    "method 'zero_shot' uses no adapter; drop 'adapter'", param="adapter"
                )
            yield ConfidenceReader(method, None, 1.0, None)
            return
        with self.registry.lease(adapter) as loaded:
            method = method_for(method, loaded)
            head = loaded.manifest.head if method is Method.calibrated_head else None
            if method is Method.calibrated_head and head is None:
                raise InvalidRequestError(
                    f"adapter {loaded.name}@{loaded.version} has no calibrated head; use method 'adapter'",
                    param="method",
                )
            with self._shadow(adapter, loaded, method, shadow) as candidate:
                info = AdapterInfo(name=loaded.name, version=loaded.version)
                yield ConfidenceReader(method, loaded.lora, loaded.temperature, info, candidate, head)

    @contextmanager
    def _shadow(
        self, requested: str | None, loaded: LoadedAdapter, method: Method, wanted: bool
    ) -> Iterator[ConfidenceReader | None]:
        """A lease on the shadow candidate for a request that gets the default adapter, when
        the policy samples it; None otherwise (a candidate unloaded meanwhile is skipped).
        The candidate reads with the request's method, so served and shadow confidences of
        one version comparison differ in the version only; a candidate without a head
        shadows a `calibrated_head` read with `adapter`, and its reads are recorded (and
        compared) under that method."""
        spec = self.shadow_policy.pick() if wanted and self.shadow_policy and requested is None else None
        if spec is None or spec == loaded.spec:
            yield None
            return
        with ExitStack() as stack:
            try:
                candidate = stack.enter_context(self.registry.lease(spec))
            except ServiceError:
                yield None
                return
            info = AdapterInfo(name=candidate.name, version=candidate.version)
            head = candidate.manifest.head if method is Method.calibrated_head else None
            shadow_method = Method.calibrated_head if head is not None else Method.adapter
            yield ConfidenceReader(shadow_method, candidate.lora, candidate.temperature, info, head=head)

    async def read_all(
        self, queries: list[list[int]], reader: ConfidenceReader, answers: Sequence[Scored]
    ) -> tuple[list[float], list[float] | None]:
        """Every query's confidence, and the shadow's in the same engine batch (None when
        there is no shadow or its read failed: a shadow never fails the request)."""
        if reader.shadow is None:
            main = [
                self.read_answer(ids, reader, scored) for ids, scored in zip(queries, answers, strict=True)
            ]
            return list(await asyncio.gather(*main)), None
        # Both heads read the same base-model likelihood of each answer: computed once.
        shared = reader.head is not None or reader.shadow.head is not None
        likelihoods = [asyncio.ensure_future(self.answer_likelihood(s)) if shared else None for s in answers]
        try:
            reads = [
                self.read_answer(ids, r, scored, likelihood=likelihood)
                for r in (reader, reader.shadow)
                for ids, scored, likelihood in zip(queries, answers, likelihoods, strict=True)
            ]
            results = await asyncio.gather(*reads, return_exceptions=True)
        finally:
            for task in likelihoods:
                if task is not None:
                    task.cancel()  # one nobody awaited (a read failed before), else a no-op
        for result in results[: len(queries)]:
            if isinstance(result, BaseException):
                raise result
        scores = [float(r) for r in results[: len(queries)]]  # type: ignore[arg-type]
        shadowed = results[len(queries) :]
        failures = [r for r in shadowed if isinstance(r, BaseException)]
        if failures:
            log.warning("shadow read by %s failed: %r", reader.shadow.info, failures[0])
            return scores, None
        return scores, [float(r) for r in shadowed]  # type: ignore[arg-type]

    def _emit_shadow(
        self, response_id: str, endpoint: str, reader: ConfidenceReader, scores: list[float] | None
    ) -> None:
        if reader.shadow is None or reader.shadow.info is None or self.shadow_sink is None:
            return
        self.shadow_sink(
            ShadowRead(
                response_id=response_id,
                endpoint=endpoint,
                adapter=reader.shadow.info.name,
                version=reader.shadow.info.version,
                method=reader.shadow.method.value,
                confidences=tuple(enumerate(scores)) if scores is not None else (),
                failed=scores is None,
            )
        )

    async def query(self, question: list[cq.Message], answer: str, *, param: str) -> list[int]:
        """Token ids of the confidence query (tokenized off the event loop), checked against
        the context length."""
        self.check_input_chars([*(m["content"] for m in question), answer], param=param)
        ids = await self._off_loop(lambda: cq.query_ids(self.engine.tokenizer, question, answer))
        if len(ids) >= self.limits.max_model_len:
            raise PromptTooLongError(
                f"question + answer + confidence query is {len(ids)} tokens; the model context is "
                f"{self.limits.max_model_len}",
                param=param,
            )
        return ids

    async def answer_query(self, prompt: Prompt, completion: Completion) -> list[int]:
        """The confidence query of a generated answer, built on the generation's own token
        ids where it extends them (`cq.spliced_query_ids`: the base model's reads then hit
        vLLM's prefix cache for prompt + answer), else tokenized from the text."""
        if prompt.rendered is not None and completion.token_ids:
            tokenizer, rendered = self.engine.tokenizer, prompt.rendered
            spliced = await self._off_loop(
                lambda: cq.spliced_query_ids(
                    tokenizer,
                    prompt.question,
                    completion.text,
                    prompt_text=rendered,
                    prompt_ids=prompt.ids,
                    answer_ids=completion.token_ids,
                )
            )
            if spliced is not None and len(spliced) < self.limits.max_model_len:
                return spliced
        return await self.query(prompt.question, completion.text, param=prompt.param)

    async def gap(self, query_ids: list[int], reader: ConfidenceReader) -> float:
        """logit(yes) - logit(no) of the confidence query (no temperature applied)."""
        lp_no, lp_yes = await self.engine.next_token_logprobs(
            query_ids, [self.labels.no_id, self.labels.yes_id], lora=reader.lora
        )
        return cq.label_logit_gap(lp_no, lp_yes)

    async def read(self, query_ids: list[int], reader: ConfidenceReader) -> float:
        return cq.sigmoid(await self.gap(query_ids, reader) / reader.temperature)

    async def read_answer(
        self,
        query_ids: list[int],
        reader: ConfidenceReader,
        scored: Scored,
        *,
        likelihood: Awaitable[estimator.AnswerLikelihood] | None = None,
    ) -> float:
        """The confidence of one answer by the reader's method. The head also needs the base
        model's likelihood of the answer (`answer_likelihood`, or `likelihood` when another
        read computes it already), awaited together with the query so vLLM batches both."""
        if reader.head is None:
            return await self.read(query_ids, reader)
        if likelihood is None and reader.lora is not None and self.engine.shares_base_kv(reader.lora):
            # The base prefill of question + answer leaves in the prefix cache what this
            # adapter's query starts with: one prefill and the query's own tokens, instead
            # of two full prefills batched together.
            answer_likelihood = await self.answer_likelihood(scored)
            gap = await self.gap(query_ids, reader)
        else:
            gap, answer_likelihood = await asyncio.gather(
                self.gap(query_ids, reader),
                likelihood if likelihood is not None else self.answer_likelihood(scored),
            )
        features = estimator.features(gap, answer_likelihood, scored.answer)
        return estimator.head_confidence(reader.head, features)

    async def answer_likelihood(self, scored: Scored) -> estimator.AnswerLikelihood:
        """The base model's likelihood of the answer: from the sampled tokens' log-probs when
        generation returned them (no extra pass), else one prefill of question + answer."""
        logprobs = self.sampled_logprobs(scored.completion) if scored.completion else None
        if logprobs is None:
            ids, start = estimator.likelihood_prompt(self.engine.tokenizer, scored.question, scored.answer)
            logprobs = await self.engine.prompt_logprobs(ids, start=start)
        return estimator.answer_likelihood(logprobs)

    def sampled_logprobs(self, completion: Completion) -> list[float] | None:
        """The sampled tokens' log-probabilities that belong to the answer text (an end-of-
        sequence token or a stop string's token is generated but not part of the text)."""
        if completion.logprobs is None:
            return None
        answer_tokens = len(self.engine.tokenizer.encode(completion.text, add_special_tokens=False))
        return [t.logprob for t in completion.logprobs][:answer_tokens]

    def sampling(
        self,
        *,
        max_tokens: int | None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        n: int = 1,
        logprobs: int | None = None,
        max_tokens_param: str = "max_tokens",
    ) -> SamplingOptions:
        """Sampling options with the server's default and limit on max_tokens applied."""
        max_tokens = max_tokens or self.limits.default_max_tokens
        if max_tokens > self.limits.max_tokens_limit:
            raise InvalidRequestError(
                f"{max_tokens_param} {max_tokens} exceeds this server's limit {self.limits.max_tokens_limit}",
                param=max_tokens_param,
            )
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=tuple(stop),
            seed=seed,
            n=n,
            logprobs=logprobs,
        )

    async def chat_prompt(self, chat: list[cq.Message], *, param: str) -> Prompt:
        """A chat ending in a user turn, rendered with the model's chat template (off the loop)."""
        self.check_input_chars([m["content"] for m in chat], param=param)
        tokenizer = self.engine.tokenizer
        rendered = await self._off_loop(lambda: cq.render(tokenizer, chat))
        ids = await self._off_loop(lambda: cq.encode_rendered(tokenizer, rendered))
        return Prompt(ids, chat, param, rendered)

    async def text_prompt(self, text: str, *, param: str) -> Prompt:
        """Raw text continued as is (no chat template), as OpenAI's completions API does; its
        answers are scored as answers to `text` asked as one user turn."""
        self.check_input_chars([text], param=param)
        ids = await self._off_loop(lambda: list(self.engine.tokenizer.encode(text, add_special_tokens=True)))
        return Prompt(ids, [{"role": "user", "content": text}], param)

    def check_fits(self, prompt: Prompt, options: SamplingOptions) -> None:
        budget = self.limits.max_model_len - options.max_tokens - self.limits.query_reserve_tokens
        if len(prompt.ids) > budget:
            raise PromptTooLongError(
                f"prompt is {len(prompt.ids)} tokens; with max_tokens={options.max_tokens} and "
                f"{self.limits.query_reserve_tokens} tokens kept for the confidence query, at most "
                f"{max(budget, 0)} fit the {self.limits.max_model_len}-token context",
                param=prompt.param,
            )

    async def answer(
        self,
        prompt: Prompt,
        options: SamplingOptions,
        reader: ConfidenceReader,
        *,
        answer_with_adapter: bool = False,
    ) -> Answers:
        """Generate `options.n` answers, then score them all at once. The answer comes from
        the base model; only the confidence query uses the adapter, unless the caller opted
        into `answer_with_adapter`: then the answer is generated through the adapter too, so
        the query under it finds prompt + answer in the prefix cache and only its own few
        tokens are prefilled (faster; the answer can differ from the base model's)."""
        self.check_fits(prompt, options)
        lora = self.answer_lora(reader, answer_with_adapter)
        asked = options.logprobs
        if lora is None:
            options = self._for_head(options, reader)
        result = await self.engine.generate(prompt.ids, options, lora=lora)
        queries = [await self.answer_query(prompt, c) for c in result.completions]
        # The head's likelihood features are the base model's: log-probs sampled through the
        # adapter are not, so then they come from a base prefill instead.
        scored = [
            Scored(prompt.question, c.text, c if lora is None else replace(c, logprobs=None))
            for c in result.completions
        ]
        scores, shadow = await self.read_all(queries, reader, scored)
        completions = [c if asked is not None else replace(c, logprobs=None) for c in result.completions]
        choices = [Answer(c, s) for c, s in zip(completions, scores, strict=True)]
        return Answers(result.prompt_tokens, choices, shadow)

    @staticmethod
    def answer_lora(reader: ConfidenceReader, answer_with_adapter: bool) -> LoRA | None:
        if not answer_with_adapter:
            return None
        if reader.lora is None:
            raise InvalidRequestError(
                "answer_with_adapter needs a method that reads through an adapter; "
                f"method '{reader.method.value}' uses none",
                param="answer_with_adapter",
            )
        return reader.lora

    def answer_stream(
        self,
        prompt: Prompt,
        options: SamplingOptions,
        reader: ConfidenceReader,
        *,
        answer_with_adapter: bool = False,
    ) -> AsyncGenerator[ChoiceText | ChoiceDone, None]:
        """Text as it is generated, then per choice a `ChoiceDone` with its confidence. Each
        choice's confidence read starts the moment that choice ends, while the others may
        still be generating. Closing the generator early cancels all of its engine work.

        Raises (here, before any engine work, so a route can still answer 4xx):
            PromptTooLongError, InvalidRequestError: the prompt or the options cannot be served.
        """
        self.check_fits(prompt, options)
        lora = self.answer_lora(reader, answer_with_adapter)
        asked = options.logprobs
        if lora is None:
            options = self._for_head(options, reader)
        deltas = self.engine.generate_stream(prompt.ids, options, lora=lora)
        stream = _AnswerStream(self, prompt, options, reader, deltas, asked=asked, base_answer=lora is None)
        return stream.run()

    @staticmethod
    def _for_head(options: SamplingOptions, reader: ConfidenceReader) -> SamplingOptions:
        """The head reads the sampled tokens' log-probs (no extra pass, and the same numbers
        streamed or not): asked of the engine even when the client did not ask for them."""
        if reader.head is None or options.logprobs is not None:
            return options
        return replace(options, logprobs=0)

    async def generate(self, request: GenerateRequest) -> GenerateResponse:
        with self.reader(request.method, request.adapter, shadow=True) as reader:  # fail fast
            return await self._generate(request, reader)

    async def generate_inputs(self, request: GenerateRequest) -> tuple[Prompt, SamplingOptions]:
        """The prompt and sampling options of a native /generate request."""
        param = "messages" if request.messages is not None else "prompt"
        options = self.sampling(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop or (),
            seed=request.seed,
        )
        return await self.chat_prompt(request.chat(), param=param), options

    async def _generate(self, request: GenerateRequest, reader: ConfidenceReader) -> GenerateResponse:
        prompt, options = await self.generate_inputs(request)
        answers = await self.answer(prompt, options, reader, answer_with_adapter=request.answer_with_adapter)
        choice = answers.choices[0]
        response_id = _generate_id()
        self._emit_shadow(response_id, "generate", reader, answers.shadow)
        return _generate_response(
            response_id, answers.prompt_tokens, choice.completion, choice.confidence, reader
        )

    def generate_stream(
        self,
        prompt: Prompt,
        options: SamplingOptions,
        reader: ConfidenceReader,
        *,
        answer_with_adapter: bool = False,
    ) -> AsyncGenerator[GenerateDelta | GenerateResponse, None]:
        """/generate's stream: the answer in pieces as generated, then the whole response.
        Raises like `answer_stream`, at the call."""
        events = self.answer_stream(prompt, options, reader, answer_with_adapter=answer_with_adapter)
        return _generate_events(events, len(prompt.ids), reader)

    def check_items(self, request: ScoreRequest) -> None:
        if len(request.items) > self.limits.max_score_items:
            raise InvalidRequestError(
                f"{len(request.items)} items exceed this server's limit of {self.limits.max_score_items}",
                param="items",
            )

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        self.check_items(request)
        with self.reader(request.method, request.adapter, shadow=True) as reader:
            return await self._score(request, reader)

    async def _score(self, request: ScoreRequest, reader: ConfidenceReader) -> ScoreResponse:
        # Tokenize and length-check every item before submitting any: a bad item fails
        # the request before any engine work starts.
        queries = [
            await self.query(
                cq.question_chat(messages=item.turns(), context=item.context),
                item.answer,
                param=f"items[{i}]",
            )
            for i, item in enumerate(request.items)
        ]
        scored = [
            Scored(cq.question_chat(messages=item.turns(), context=item.context), item.answer, None)
            for item in request.items
        ]
        scores, shadow = await self.read_all(queries, reader, scored)
        response_id = f"score-{uuid.uuid4().hex}"
        self._emit_shadow(response_id, "score", reader, shadow)
        return ScoreResponse(
            id=response_id,
            method=reader.method,
            adapter=reader.info,
            items=[ScoredItem(index=i, confidence=s) for i, s in enumerate(scores)],
        )

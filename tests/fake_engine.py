"""A deterministic stand-in for the vLLM engine, for fast unit tests only.

It lives under tests/ so no user configuration can ever select it. Its tokenizer splits
on whitespace (no chat template, so prompts use the plain rendering), its answers echo
the question, and its label log-probabilities are a fixed function of the prompt and
the LoRA id, so tests can predict every confidence.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from service.engine.base import (
    Completion,
    Engine,
    GenerationResult,
    LoRA,
    SamplingOptions,
    StreamDelta,
    TokenLogprob,
)
from service.errors import AdapterLoadError, EngineDeadError


class WordTokenizer:
    chat_template = None
    all_special_tokens = ("<s>",)

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<s>": 0}

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        ids = [self._id(p) for p in re.findall(r"\s*\S+", text)]
        return [0, *ids] if add_special_tokens else ids

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fake tokenizer has no chat template")


def fake_gap(prompt_ids: Sequence[int], lora: LoRA | None) -> float:
    """logit(yes) - logit(no) the fake engine reports: a hash of the prompt, shifted by
    +1 per LoRA id so an adapter visibly changes the confidence."""
    digest = hashlib.sha256(",".join(map(str, prompt_ids)).encode()).digest()
    base = (int.from_bytes(digest[:4], "big") / 2**32) * 4.0 - 2.0
    return base + (lora.int_id if lora else 0)


class FakeEngine(Engine):
    def __init__(self, *, max_model_len: int = 256, fail_start: bool = False) -> None:
        self._tokenizer = WordTokenizer()
        self._max_model_len = max_model_len
        self.fail_start = fail_start
        self.dead = False
        self.latency_s = 0.01  # how long each engine call takes; tests raise it to keep calls in flight
        self.cancelled = 0  # calls cancelled while in flight (what aborts a vLLM request)
        self.token_latency_s = 0.0  # pause between streamed tokens
        self.streams_aborted = 0  # streams closed before their last token (what aborts a vLLM request)
        self.streams_in_flight = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed = 0  # engine calls that returned (the engine's `progress`)
        self.calls: list[tuple[str, LoRA | None]] = []
        self.loras: dict[int, LoRA] = {}
        self.bad_adapter_versions: set[str] = set()  # versions whose engine load fails
        self.nan_read_versions: set[str] = set()  # versions whose label log-probs come back NaN
        self.prefix_cache_resets = 0

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("fake start failure")

    @property
    def tokenizer(self) -> WordTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def model_path(self) -> str:
        return "fake-model"

    async def _enter(self, kind: str, lora: LoRA | None) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")
        if lora is not None and not (lora.path / "adapter_config.json").is_file():
            # What vLLM 0.32 does when it must re-read an adapter whose files are gone.
            self.dead = True
            raise EngineDeadError(f"fake engine died re-reading {lora.path}")
        self.calls.append((kind, lora))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)  # let concurrent callers pile up, as in a real batch
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.completed += 1

    @property
    def progress(self) -> int:
        return self.completed

    def _answer(self, prompt_ids: Sequence[int], options: SamplingOptions) -> tuple[list[str], str]:
        """The answer's words (echoing the prompt's last words) and its finish reason; a
        stop string ends it before the stop word, as vLLM does."""
        words = [w for w, i in self._tokenizer.vocab.items() if i in set(prompt_ids[-3:])]
        tokens = (["Answer:", *words] * options.max_tokens)[: options.max_tokens]
        for k, token in enumerate(tokens):
            if any(stop in token for stop in options.stop):
                return tokens[:k], "stop"
        return tokens, "length" if len(tokens) == options.max_tokens else "stop"

    @staticmethod
    def _pieces(tokens: list[str]) -> list[str]:
        """The text each token adds: the answer is the tokens joined by spaces."""
        return [t if k == 0 else f" {t}" for k, t in enumerate(tokens)]

    @staticmethod
    def _logprobs(pieces: list[str], options: SamplingOptions) -> tuple[TokenLogprob, ...] | None:
        if options.logprobs is None:
            return None
        top = (("Answer:", -0.25), ("<s>", -2.0), ("x", -3.0), ("y", -4.0), ("z", -5.0))
        return tuple(TokenLogprob(p, -0.5, top[: options.logprobs]) for p in pieces)

    async def generate(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> GenerationResult:
        await self._enter("generate", lora)
        tokens, finish = self._answer(prompt_ids, options)
        logprobs = self._logprobs(self._pieces(tokens), options)
        comps = [Completion(" ".join(tokens), finish, len(tokens), logprobs) for _ in range(options.n)]
        return GenerationResult(prompt_tokens=len(prompt_ids), completions=comps)

    async def generate_stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> AsyncGenerator[StreamDelta, None]:
        await self._enter("generate_stream", lora)
        tokens, finish = self._answer(prompt_ids, options)
        pieces = self._pieces(tokens) or [""]
        self.streams_in_flight += 1
        done = False
        try:
            # Choices interleave token by token, as one vLLM request with n sequences does.
            for k, piece in enumerate(pieces):
                last = k == len(pieces) - 1
                for index in range(options.n):
                    yield StreamDelta(
                        index=index,
                        text=piece,
                        tokens=1 if tokens else 0,
                        logprobs=self._logprobs([piece] if tokens else [], options),
                        finish_reason=finish if last else None,
                    )
                if not last:
                    await asyncio.sleep(self.token_latency_s)
            done = True
        finally:
            self.streams_in_flight -= 1
            self.streams_aborted += not done

    async def next_token_logprobs(
        self, prompt_ids: Sequence[int], token_ids: Sequence[int], *, lora: LoRA | None = None
    ) -> list[float]:
        await self._enter("logprobs", lora)
        if lora is not None and lora.path.name in self.nan_read_versions:
            return [math.nan] * len(token_ids)  # what broken adapter weights (NaN/inf) give
        gap = fake_gap(prompt_ids, lora)
        # Two labels whose logits differ by `gap`, sharing the rest of a fixed vocabulary.
        lp_no = -math.log1p(math.exp(gap)) - 1.0
        return [lp_no, lp_no + gap][: len(token_ids)]

    async def prompt_logprobs(
        self, prompt_ids: Sequence[int], *, start: int, lora: LoRA | None = None
    ) -> list[float]:
        await self._enter("prompt_logprobs", lora)
        return [-1.0] * (len(prompt_ids) - max(start, 1))

    async def add_lora(self, lora: LoRA) -> None:
        if lora.path.name in self.bad_adapter_versions:
            raise AdapterLoadError(f"fake engine refuses {lora.name}")
        self.loras[lora.int_id] = lora

    async def remove_lora(self, lora: LoRA) -> None:
        self.loras.pop(lora.int_id, None)

    async def reset_prefix_cache(self) -> bool:
        self.prefix_cache_resets += 1
        return self.in_flight == 0 and self.streams_in_flight == 0

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def shutdown(self) -> None:
        pass

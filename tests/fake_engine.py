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
from collections.abc import Sequence
from typing import Any

from service.engine.base import Completion, Engine, GenerationResult, LoRA, SamplingOptions
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
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[tuple[str, LoRA | None]] = []
        self.loras: dict[int, LoRA] = {}
        self.bad_adapter_versions: set[str] = set()  # versions whose engine load fails

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

    async def generate(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> GenerationResult:
        await self._enter("generate", lora)
        words = [w for w, i in self._tokenizer.vocab.items() if i in set(prompt_ids[-3:])]
        tokens = (["Answer:", *words] * options.max_tokens)[: options.max_tokens]
        finish = "length" if len(tokens) == options.max_tokens else "stop"
        # A fixed log-probability per generated token, so tests can predict the head's input.
        logprobs = [-0.5] * len(tokens) if options.logprobs else None
        comps = [Completion(" ".join(tokens), finish, len(tokens), logprobs) for _ in range(options.n)]
        return GenerationResult(prompt_tokens=len(prompt_ids), completions=comps)

    async def next_token_logprobs(
        self, prompt_ids: Sequence[int], token_ids: Sequence[int], *, lora: LoRA | None = None
    ) -> list[float]:
        await self._enter("logprobs", lora)
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

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("fake engine is dead")

    def shutdown(self) -> None:
        pass

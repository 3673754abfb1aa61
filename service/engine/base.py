"""The engine interface: what the serving core and the training job need from a model.

Two implementations: `VLLMEngine` (the real one, CPU or GPU) and `FakeEngine`
(deterministic, unit tests only). Prompts cross this boundary as token ids, because
the caller already tokenized them to enforce length limits and render templates.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LoRA:
    """An adapter as the engine sees it: compared by name, addressed by a stable int id."""

    name: str
    int_id: int
    path: Path


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    # Alternatives reported per generated token; None = no log-probabilities at all,
    # 0 = only the sampled token's.
    logprobs: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, log-probability and the top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    # The sampled token ids (may end in an end-of-sequence or stop token the text leaves
    # out): the confidence query is built on them so that it extends the generation's own
    # token sequence and a read under the same weights finds it in the prefix cache.
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class StreamDelta:
    """What one choice (`index` of n) generated since its previous delta; `finish_reason`
    is set on its last one."""

    index: int
    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None
    token_ids: tuple[int, ...] = ()


@dataclass
class PrefixCacheStats:
    """Prompt tokens the engine was asked to prefill, and how many it found cached."""

    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True)
class GenerationResult:
    prompt_tokens: int
    completions: list[Completion] = field(default_factory=list)


class Engine(abc.ABC):
    """Async model engine. Every method may be awaited concurrently: implementations
    must not serialize calls, so that concurrent requests are batched together."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; returns when requests can be served."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (chat template, encode, decode)."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int: ...

    @property
    @abc.abstractmethod
    def model_path(self) -> str: ...

    @abc.abstractmethod
    async def generate(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> GenerationResult:
        """Sample continuations of the prompt."""

    @abc.abstractmethod
    def generate_stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> AsyncGenerator[StreamDelta, None]:
        """Sample continuations, yielding text as it is generated (choices interleaved).
        Invalid options may raise here, at the call; the engine request starts on the first
        iteration, and closing the iterator before its end aborts it."""

    @abc.abstractmethod
    async def next_token_logprobs(
        self, prompt_ids: Sequence[int], token_ids: Sequence[int], *, lora: LoRA | None = None
    ) -> list[float]:
        """Full-vocabulary log-probabilities of exactly `token_ids` at the next position
        (never a top-k read, so a label outside the top-k still gets its true value)."""

    @abc.abstractmethod
    async def prompt_logprobs(
        self, prompt_ids: Sequence[int], *, start: int, lora: LoRA | None = None
    ) -> list[float]:
        """Log-probability of each prompt token from position `start` on, given its prefix."""

    @abc.abstractmethod
    async def add_lora(self, lora: LoRA) -> None:
        """Load an adapter ahead of its first request.

        Raises:
            AdapterLoadError: the engine cannot serve this adapter.
        """

    @abc.abstractmethod
    async def remove_lora(self, lora: LoRA) -> None:
        """Drop an adapter no request uses any more (frees its slot and host memory)."""

    def shares_base_kv(self, lora: LoRA) -> bool:
        """Whether a read through this adapter reuses the base model's cached prefix (an
        adapter that cannot change the KV cache, `service.engine.kv_sharing`); a caller then
        runs the base model's read of the same prefix first. No engine does unless it says so."""
        del lora
        return False

    @abc.abstractmethod
    async def reset_prefix_cache(self) -> bool:
        """Forget every cached prompt prefix, so no later request reuses KV computed so far.
        Returns False (and forgets nothing) while requests still hold cache blocks."""

    @property
    def progress(self) -> int | None:
        """A count that grows whenever the engine hands back output for any request, so
        a watcher can tell a busy engine (a long queue, still stepping) from a wedged one.
        None: this engine cannot say (the watchdog then judges by the canary alone)."""
        return None

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise `EngineDeadError` if the engine can no longer serve."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...

